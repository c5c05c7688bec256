"""The epoch loop: training, per-epoch validation, early stopping, checkpoints, resume."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.store import load_dataset, read_manifest, resolve_dataset_dir, write_json_atomic
from cml_cli.errors import InputError, RunError
from cml_cli.evaluate import evaluate_sampled
from cml_cli.train.checkpoint import load_checkpoint, save_checkpoint
from cml_cli.train.meta import CMLTrainer, NonFiniteLoss
from cml_cli.train.progress import NullProgress, Progress
from cml_cli.train.rundir import RunDir

SELECT = "ndcg@10"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def make_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
    """CML's trainer or a baseline's. Every trainer has ``device``, ``trainable`` (False for
    models fitted in the constructor, which then run a single epoch), ``batches(rng)`` (one
    epoch's row batches), ``train_batch(rows, rng) -> {"loss": ...}``, ``end_epoch()``,
    ``scorer()`` (``score(users, items)`` and ``score_all(users)``), ``state_dict()`` /
    ``load_state_dict()`` for resume, and ``model_state()`` / ``load_model_state()``, where
    ``model_state()``'s keys are a subset of ``state_dict()``'s."""
    if cfg.model == "cml":
        return CMLTrainer(ds, cfg, device)
    from cml_cli.model.baselines import make_baseline

    return make_baseline(ds, cfg, device)


def default_run_name(dataset: str, cfg: RunConfig) -> str:
    return f"{dataset}-{cfg.model}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _eval_ks(cfg: RunConfig) -> list[int]:
    return sorted(set(cfg.ks) | {10})


def _seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train(
    dataset: str | Path,
    cfg: RunConfig,
    *,
    data_dir: Path | None = None,
    runs_dir: Path = Path("runs"),
    name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a fresh run of ``cfg`` on a processed dataset; returns the final metrics."""
    cfg.validate()
    ds_dir = resolve_dataset_dir(dataset, data_dir)
    ds_manifest = read_manifest(ds_dir)
    run = RunDir(Path(runs_dir) / (name or default_run_name(ds_manifest["name"], cfg)))
    if run.path.exists() and any(run.path.iterdir()):
        if not force:
            raise InputError(f"{run.path}: run directory exists (use --resume {run.path} to continue, "
                             "--force to start over, or another --name)")
    run.create()
    run.lock()
    try:
        if force:
            for child in run.path.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        device = resolve_device(cfg.device)
        ds = _load(ds_dir, cfg)
        run.write_config(cfg)
        run.write_manifest(ds_manifest["name"], ds_manifest["files"]["arrays.npz"], cfg, str(device))
        rng = _seed_everything(cfg.seed)
        trainer = make_trainer(ds, cfg, device)
        state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}
        return _fit(run, ds, cfg, trainer, rng, state, progress or NullProgress())
    finally:
        run.unlock()


def resume(run_path: Path, *, data_dir: Path | None = None, progress: Progress | None = None,
           epochs: int | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its last complete checkpoint (``previous`` if the
    last one is corrupt); the result equals an uninterrupted run's."""
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: no such run directory")
    cfg = run.read_config()
    if epochs is not None:
        cfg.epochs = epochs
        run.write_config(cfg)
    manifest = run.read_manifest()
    run.lock()
    try:
        ds_dir = resolve_dataset_dir(manifest["dataset"], data_dir)
        ds_manifest = read_manifest(ds_dir)
        if ds_manifest["files"]["arrays.npz"] != manifest["dataset_checksum"]:
            raise InputError(f"{ds_dir}: dataset changed since the run started (checksum differs)")
        device = resolve_device(cfg.device)
        ds = _load(ds_dir, cfg)
        rng = _seed_everything(cfg.seed)
        trainer = make_trainer(ds, cfg, device)
        ckpt = _last_good_checkpoint(run)
        if ckpt is None:
            state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}
        else:
            trainer.load_state_dict(ckpt["trainer"])
            rng.bit_generator.state = ckpt["numpy_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            state = ckpt["loop"]
        run.write_log(state["history"])
        return _fit(run, ds, cfg, trainer, rng, state, progress or NullProgress())
    finally:
        run.unlock()


def _load(ds_dir: Path, cfg: RunConfig) -> MultiBehaviorDataset:
    ds = load_dataset(ds_dir)
    if cfg.behaviors is not None:
        ds = ds.with_behaviors(cfg.behaviors)
    return ds


def _last_good_checkpoint(run: RunDir) -> dict | None:
    for path in (run.last, run.previous):
        if path.is_file():
            try:
                return load_checkpoint(path)
            except InputError:
                continue
    return None


def _fit(run: RunDir, ds: MultiBehaviorDataset, cfg: RunConfig, trainer, rng: np.random.Generator,
         state: dict, progress: Progress) -> dict[str, Any]:
    ks = _eval_ks(cfg)
    if not getattr(trainer, "trainable", True):
        cfg.epochs = 1
    has_valid = len(ds.valid) > 0
    select_on = "test" if cfg.protocol == "paper" else ("valid" if has_valid else None)
    progress.start(cfg.epochs, state["epoch"])
    stop = state["epoch"] >= cfg.epochs or (select_on is not None and cfg.patience and state["bad"] > cfg.patience)
    while not stop:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        batches = trainer.batches(rng)
        progress.start_epoch(epoch, len(batches))
        totals: dict[str, float] = {}
        for b, rows in enumerate(batches, start=1):
            try:
                parts = trainer.train_batch(rows, rng)
            except NonFiniteLoss as e:
                raise RunError(f"epoch {epoch}, batch {b}: {e}; stopped, last good checkpoint kept in "
                               f"{run.checkpoints}") from None
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
                save_checkpoint(run.best, {"epoch": epoch, "trainer": trainer.model_state()})
            else:
                state["bad"] += 1
        else:
            state["best_epoch"] = epoch
        state["epoch"] = epoch
        state["history"].append(row)
        if run.last.is_file():
            run.last.replace(run.previous)
        save_checkpoint(run.last, {"trainer": trainer.state_dict(), "numpy_rng": rng.bit_generator.state,
                                   "torch_rng": torch.get_rng_state(), "loop": state})
        run.append_log(row)
        progress.end_epoch(row)
        stop = epoch >= cfg.epochs or (select_on is not None and cfg.patience > 0 and state["bad"] > cfg.patience)
    progress.stop()
    return _finish(run, ds, cfg, trainer, state, ks, has_valid)


def _finish(run: RunDir, ds: MultiBehaviorDataset, cfg: RunConfig, trainer, state: dict, ks: list[int],
            has_valid: bool) -> dict[str, Any]:
    if run.best.is_file():
        trainer.load_model_state(load_checkpoint(run.best)["trainer"])
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
    if cfg.protocol == "paper":
        best = history[state["best_epoch"] - 1]
        result["test"] = best["test"]
        result["test_selection"] = "best epoch on the test split (paper protocol; optimistic)"
    else:
        result["test"] = evaluate_sampled(scorer, ds.test, ks, cfg.eval_batch, trainer.device)
        result["test_selection"] = "epoch selected on validation, test evaluated once" if has_valid else \
            "last epoch (no validation split), test evaluated once"
    result["valid"] = evaluate_sampled(scorer, ds.valid, ks, cfg.eval_batch, trainer.device) if has_valid else {}
    write_json_atomic(run.final, result)
    return result
