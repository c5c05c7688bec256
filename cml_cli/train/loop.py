"""The epoch loop: training, per-epoch validation, early stopping, checkpoints, resume."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cml_cli.collapse import check_run, warning_line
from cml_cli.config import RunConfig, check_cutoffs
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.store import (
    ARRAYS,
    load_dataset,
    read_manifest,
    resolve_dataset_dir,
    write_json_atomic,
)
from cml_cli.errors import InputError, Interrupted, NonFiniteLoss, RunError
from cml_cli.evaluate import evaluate_full, evaluate_sampled
from cml_cli.tracking import Tracker, tracked
from cml_cli.train.checkpoint import load_checkpoint, save_checkpoint
from cml_cli.train.factory import make_trainer
from cml_cli.train.progress import NullProgress, Progress
from cml_cli.train.rundir import RunDir, check_run_target, describe_identity
from cml_cli.train.trainer import Trainer

SELECT = "ndcg@10"


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` as a device; anything else, or CUDA where
    there is none, is an :class:`InputError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise InputError(f"--device: '{name}' is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def default_run_name(dataset: str, cfg: RunConfig) -> str:
    return f"{dataset}-{cfg.model}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _eval_ks(cfg: RunConfig) -> list[int]:
    return sorted(set(cfg.ks) | {10})


def _seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class Watch:
    """Who watches a run and what it shows them: ``progress`` (the epochs on stderr),
    ``tracker`` (``--track``: fed the run's config, every epoch's row and the final metrics,
    :mod:`cml_cli.tracking`), and ``evaluate_test`` (False for tuning trials: no test metric
    is ever computed, the result holds the validation metrics of the selected epoch only)."""

    progress: Progress | None = None
    tracker: Tracker | None = None
    evaluate_test: bool = True


def train(
    dataset: str | Path,
    cfg: RunConfig,
    *,
    data_dir: Path | None = None,
    runs_dir: Path = Path("runs"),
    name: str | None = None,
    force: bool = False,
    watch: Watch = Watch(),
) -> dict[str, Any]:
    """Train a fresh run of ``cfg`` on a processed dataset; returns the final metrics
    (``watch``: progress, tracking and whether the test split is evaluated, see :class:`Watch`).

    The run directory is locked before anything in it is written or deleted (``--force``
    included), so a second process on the same directory fails without touching it. An
    existing directory is replaced only with ``force`` and only if it is a run directory
    (it has a run manifest). A run that fails before its first epoch is complete leaves
    nothing behind: the files it wrote are removed (and the directory, if it made it)."""
    cfg.validate()
    check_run_target(Path(runs_dir), name, force)
    ds_dir = resolve_dataset_dir(dataset, data_dir)
    ds_manifest = read_manifest(ds_dir)
    check_cutoffs(cfg.ks, ds_manifest["n_items"])
    run = RunDir(Path(runs_dir) / (name or default_run_name(ds_manifest["name"], cfg)))
    run.check_replaceable(force)
    device = resolve_device(cfg.device)
    ds = load_run_dataset(ds_dir, cfg)  # verified (checksums) before the run directory is touched
    created = not run.path.exists()
    run.create()
    run.lock()
    try:
        run.check_replaceable(force)  # again under the lock: another process may have started it
        run.clear()
        try:
            # The manifest first: it is what makes the directory a run directory.
            run.write_manifest(ds_manifest["name"], ds_dir, ds_manifest["files"][ARRAYS], cfg, str(device))
            run.write_config(cfg)
            rng = _seed_everything(cfg.seed)
            trainer = make_trainer(ds, cfg, device)
            return tracked(watch.tracker, run.path, cfg.to_dict(), [run.config, run.final],
                           watch.progress or NullProgress(),
                           lambda p: _fit(run, ds, cfg, trainer, rng, _fresh_state(), p, watch.evaluate_test))
        except BaseException as e:
            kept = run.last.is_file() or run.previous.is_file()
            if not kept:
                run.discard(remove_dir=created)
            if isinstance(e, KeyboardInterrupt):
                raise _interrupted(run, kept, "run the same command again") from None
            raise
    finally:
        run.unlock()


def _interrupted(run: RunDir, kept: bool, otherwise: str) -> Interrupted:
    """What Ctrl-C during the run in ``run`` leaves, and how to go on."""
    if kept:
        return Interrupted(f"training of {run.path} stopped; its last complete checkpoint is kept: continue with "
                           f"`cml train --resume {run.path}`")
    return Interrupted(f"training of {run.path} stopped before its first epoch completed, so nothing was kept: "
                       f"{otherwise}")


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}


def resume(run_path: Path, *, data_dir: Path | None = None, progress: Progress | None = None,
           epochs: int | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its last complete checkpoint (``previous`` if the
    last one is corrupt or missing); the result equals an uninterrupted run's."""
    run = RunDir(run_path)
    # Everything that can be checked is checked before the lock: nothing (not even a .lock) is
    # written into a directory that is not a run's, or whose run cannot continue.
    run.check_is_run()
    _resumed_config(run, epochs)
    run.dataset_dir(data_dir)
    run.lock()
    try:
        cfg = _resumed_config(run, epochs)
        ds_dir = run.dataset_dir(data_dir)
        device = resolve_device(cfg.device)
        ds = load_run_dataset(ds_dir, cfg)
        rng = _seed_everything(cfg.seed)
        trainer = make_trainer(ds, cfg, device)
        run.remove_temporaries()
        ckpt = _last_good_checkpoint(run, run.identity(cfg))
        if epochs is not None:
            run.write_config(cfg)
        if ckpt is None:
            state = _fresh_state()
        else:
            load_trainer_state(trainer, run.checkpoints, ckpt, full=True)
            rng.bit_generator.state = ckpt["numpy_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            if ckpt.get("cuda_rng") is not None and trainer.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["cuda_rng"], trainer.device)
            state = ckpt["loop"]
        run.write_log(state["history"])
        return tracked(tracker, run.path, cfg.to_dict(), [run.config, run.final], progress or NullProgress(),
                       lambda p: _fit(run, ds, cfg, trainer, rng, state, p))
    except KeyboardInterrupt:
        kept = run.last.is_file() or run.previous.is_file()
        raise _interrupted(run, kept, f"continue with `cml train --resume {run.path}`") from None
    finally:
        run.unlock()


def _resumed_config(run: RunDir, epochs: int | None) -> RunConfig:
    """The run's configuration, with ``epochs`` when given (``--resume --epochs``), validated."""
    cfg = run.read_config()
    if epochs is not None:
        cfg.epochs = epochs
        cfg.validate()
    return cfg


def check_identity(path: Path, state: dict, expected: dict[str, str]) -> None:
    """A checkpoint must carry the identity of the run it is loaded into (checkpoints written
    before identities were recorded carry none and are only checked by loading them)."""
    found = state.get("identity")
    if found is not None and found != expected:
        raise InputError(f"{path}: belongs to another run ({describe_identity(found)}), not to this one "
                         f"({describe_identity(expected)}); nothing was changed")


def load_trainer_state(trainer: Trainer, path: Path, state: dict, full: bool = False) -> None:
    """Load a checkpoint's trainer state (``full``: with the optimizers, to continue training);
    one that does not fit the model is an :class:`InputError` naming the file."""
    try:
        (trainer.load_state_dict if full else trainer.load_model_state)(state["trainer"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        why = " ".join(str(e).split())[:200]
        raise InputError(f"{path}: does not fit this run's model ({type(e).__name__}: {why})") from None


def load_run_dataset(ds_dir: Path, cfg: RunConfig) -> MultiBehaviorDataset:
    """The processed dataset in ``ds_dir`` with the behaviors ``cfg`` keeps."""
    ds = load_dataset(ds_dir)
    if cfg.behaviors is not None:
        ds = ds.with_behaviors(cfg.behaviors)
    return ds


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def _read_training_checkpoint(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    loop = ckpt.get("loop") if isinstance(ckpt, dict) else None
    if not (isinstance(loop, dict) and all(k in ckpt for k in ("trainer", "numpy_rng", "torch_rng"))
            and all(k in loop for k in ("epoch", "best", "best_epoch", "bad", "history"))
            and len(loop["history"]) == loop["epoch"]):
        raise InputError(f"{path}: corrupt checkpoint (incomplete training state)")
    return ckpt


def _best_epoch_on_disk(run: RunDir, identity: dict[str, str]) -> tuple[int | None, str | None]:
    """The epoch stored in ``best.ckpt`` (None if absent) or why it cannot be read; a
    ``best.ckpt`` of another run is an :class:`InputError`."""
    if not run.best.is_file():
        return None, None
    try:
        best = load_checkpoint(run.best)
        epoch = int(best["epoch"])
    except (InputError, KeyError, TypeError, ValueError) as e:
        return None, str(e) if isinstance(e, InputError) else f"{run.best}: corrupt checkpoint (no epoch)"
    check_identity(run.best, best, identity)
    return epoch, None


def _last_good_checkpoint(run: RunDir, identity: dict[str, str]) -> dict | None:
    """The newest checkpoint to continue from: ``last.ckpt``, else ``previous.ckpt``.

    A checkpoint is usable when it is intact and the best model it refers to is on disk
    (``best.ckpt`` of its best epoch, or of a later epoch that replaying will write again).
    A corrupt ``last.ckpt`` is moved aside (``last.ckpt.corrupt``) so that the next rotation
    cannot push it over the good ``previous.ckpt``. ``None``: start from epoch 0 (there are
    no checkpoints). Raises :class:`InputError` naming the files when none is usable, and at
    once for a checkpoint of another run (``identity``: :func:`check_identity`)."""
    best_epoch, best_problem = _best_epoch_on_disk(run, identity)
    problems: list[str] = []
    for path in (run.last, run.previous):
        if not path.is_file():
            continue
        try:
            ckpt = _read_training_checkpoint(path)
        except InputError as e:
            problems.append(str(e))
            continue
        check_identity(path, ckpt, identity)
        loop = ckpt["loop"]
        needs_best = loop["best_epoch"] > 0 and math.isfinite(loop["best"])
        if needs_best and best_epoch != loop["best_epoch"] and not (best_epoch or 0) > loop["epoch"]:
            problems.append(best_problem or f"{run.best}: holds epoch {best_epoch}, but {path.name} (epoch "
                            f"{loop['epoch']}) needs the best model of epoch {loop['best_epoch']}")
            continue
        if problems:
            _warn("; ".join(problems) + f"; resuming from {path} (epoch {loop['epoch']}) instead")
        if path == run.previous and run.last.is_file():
            os.replace(run.last, run.last.with_name(run.last.name + ".corrupt"))
        return ckpt
    if problems:
        raise InputError("; ".join(problems) + f"; no usable checkpoint left in {run.checkpoints} (move that "
                         "folder away and resume again to restart the run from epoch 1)")
    return None


def _fit(run: RunDir, ds: MultiBehaviorDataset, cfg: RunConfig, trainer: Trainer, rng: np.random.Generator,
         state: dict, progress: Progress, evaluate_test: bool = True) -> dict[str, Any]:
    ks = _eval_ks(cfg)
    identity = run.identity(cfg)
    epochs = cfg.epochs if trainer.trainable else 1
    has_valid = len(ds.valid) > 0
    select_on = "test" if cfg.protocol == "paper" else ("valid" if has_valid else None)
    progress.start(epochs, state["epoch"])
    stop = state["epoch"] >= epochs or (select_on is not None and cfg.patience and state["bad"] > cfg.patience)
    while not stop:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        batches = trainer.batches(rng)
        progress.start_epoch(epoch, len(batches))
        totals: dict[str, float] = {}
        for b, rows in enumerate(batches, start=1):
            try:
                parts = trainer.train_batch(rows, rng)
                if not all(math.isfinite(v) for v in parts.values()):
                    bad = {k: v for k, v in parts.items() if not math.isfinite(v)}
                    raise NonFiniteLoss(f"loss is not finite ({', '.join(f'{k} {v}' for k, v in bad.items())})")
            except NonFiniteLoss as e:
                raise RunError(f"epoch {epoch}, batch {b}: {e}; training stopped. {_kept(run, state)}") from None
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            progress.advance(parts.get("loss", 0.0))
        trainer.end_epoch()
        row: dict[str, Any] = {"epoch": epoch, **{k: v / max(len(batches), 1) for k, v in totals.items()},
                               "train_seconds": time.perf_counter() - started}
        scorer = trainer.scorer()
        if has_valid:
            row["valid"] = evaluate_sampled(scorer, ds.valid, ks, cfg.eval_batch, trainer.device)
        if cfg.protocol == "paper":
            row["test"] = evaluate_sampled(scorer, ds.test, ks, cfg.eval_batch, trainer.device)
        row["seconds"] = time.perf_counter() - started
        if select_on is not None:
            score = row[select_on][SELECT]
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch, bad=0)
                save_checkpoint(run.best, {"epoch": epoch, "trainer": trainer.model_state(), "identity": identity})
            else:
                state["bad"] += 1
        else:
            state["best_epoch"] = epoch
        state["epoch"] = epoch
        state["history"].append(row)
        if run.last.is_file():
            run.last.replace(run.previous)
        cuda_rng = torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None
        save_checkpoint(run.last, {"trainer": trainer.state_dict(), "numpy_rng": rng.bit_generator.state,
                                   "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng, "loop": state,
                                   "identity": identity})
        run.append_log(row)
        progress.end_epoch(row)
        stop = epoch >= epochs or (select_on is not None and cfg.patience > 0 and state["bad"] > cfg.patience)
    progress.stop()
    return _finish(run, ds, cfg, trainer, state, ks, has_valid, evaluate_test)


def _kept(run: RunDir, state: dict) -> str:
    if state["epoch"] == 0:
        return "No epoch completed, so nothing was kept (the loss diverged in the first epoch: try a smaller lr)."
    return (f"The last good checkpoint is kept: {run.last} (epoch {state['epoch']}); metrics so far in "
            f"{run.log}.")


def _finish(run: RunDir, ds: MultiBehaviorDataset, cfg: RunConfig, trainer: Trainer, state: dict, ks: list[int],
            has_valid: bool, evaluate_test: bool = True) -> dict[str, Any]:
    if run.best.is_file():
        best = load_checkpoint(run.best)
        check_identity(run.best, best, run.identity(cfg))
        if best.get("epoch") != state["best_epoch"]:
            raise RunError(f"{run.best}: holds epoch {best.get('epoch')}, but the best epoch is "
                           f"{state['best_epoch']}")
        load_trainer_state(trainer, run.best, best)
    scorer = trainer.scorer()
    history = state["history"]
    result: dict[str, Any] = {
        "run_dir": str(run.path),
        "dataset": ds.name,
        "model": cfg.model,
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else 0.0,
    }
    if not evaluate_test:
        result["test"] = {}
        result["test_selection"] = "not evaluated (a tuning trial: selection sees validation only)"
    elif cfg.protocol == "paper":
        best = history[state["best_epoch"] - 1]
        result["test"] = dict(best["test"])
        result["test_selection"] = "best epoch on the test split (paper protocol; optimistic)"
    else:
        result["test"] = evaluate_sampled(scorer, ds.test, ks, cfg.eval_batch, trainer.device)
        result["test_selection"] = "epoch selected on validation, test evaluated once" if has_valid else \
            "last epoch (no validation split), test evaluated once"
    if evaluate_test:
        result["test"]["full"] = evaluate_full(scorer, ds, "test", ks, device=trainer.device)
    result["valid"] = evaluate_sampled(scorer, ds.valid, ks, cfg.eval_batch, trainer.device) if has_valid else {}
    result.update(check_run(ds, cfg.model, result, trainer.device))
    write_json_atomic(run.final, result)
    if warning_line(result):
        _warn(warning_line(result))
    return result
