"""``cml evaluate``: metrics of a finished or interrupted run's checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cml_cli.config import check_cutoffs
from cml_cli.data.store import check_writable_dir, write_json_atomic
from cml_cli.errors import InputError, did_you_mean
from cml_cli.evaluate import evaluate_full, evaluate_sampled
from cml_cli.train.checkpoint import load_checkpoint
from cml_cli.train.factory import make_trainer
from cml_cli.train.loop import check_identity, load_run_dataset, load_trainer_state, resolve_device
from cml_cli.train.rundir import RunDir

CHECKPOINTS = ("best", "last")
SPLITS = ("test", "valid")
PROTOCOLS = ("sampled", "full")


def evaluate_run(run_path: Path, *, checkpoint: str = "best", split: str = "test", protocol: str = "sampled",
                 ks: list[int] | None = None, data_dir: Path | None = None, device: str | None = None,
                 write: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (best | last) of a run on ``split`` with ``protocol``
    (sampled 1+99 | full ranking) and write ``eval-<split>-<protocol>-<checkpoint>.json``.

    The dataset is the run's own (see :meth:`RunDir.dataset_dir`; its checksum must match), the
    checkpoint must be the run's own (its identity: model, configuration, dataset), cut-offs
    may not exceed the item count, and with ``write`` the run directory must be writable: each
    is checked before any computing. Sampled metrics are ``result[split]``, full-ranking ones
    ``result[split]["full"]``; the keys are named after ``cml evaluate``'s options (``ranking``
    is ``protocol``).
    ``result["checkpoint_used"]`` names the file read: without ``best.ckpt`` (a run that has
    not validated yet) ``best`` falls back to ``last.ckpt``, and says so on stderr."""
    for option, value, allowed in (("--ranking", protocol, PROTOCOLS), ("--checkpoint", checkpoint, CHECKPOINTS),
                                   ("--split", split, SPLITS)):
        if value not in allowed:
            raise InputError(f"{option}: '{value}' is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}")
    if ks is not None and (not ks or any(k <= 0 for k in ks)):
        raise InputError(f"--ks: need positive cut-offs, got {ks}")
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: no such run directory")
    cfg = run.read_config()
    dev = resolve_device(device or cfg.device)
    if write:
        check_writable_dir(run.path, "run directory (evaluate writes its results there)")
    ds = load_run_dataset(run.dataset_dir(data_dir), cfg)
    ks = check_cutoffs(ks or cfg.ks, ds.n_items, "--ks")
    if split == "valid" and len(ds.valid) == 0:
        raise InputError(f"dataset '{ds.name}' has no validation split (preprocessed with --no-valid)")
    path = run.best if checkpoint == "best" else run.last
    if checkpoint == "best" and not path.is_file() and run.last.is_file():
        path = run.last
        sys.stderr.write(f"note: {run.best} does not exist; evaluating {path} instead\n")
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint (has the run trained an epoch?)")
    state = load_checkpoint(path)
    check_identity(path, state, run.identity(cfg))
    trainer = make_trainer(ds, cfg, dev)
    load_trainer_state(trainer, path, state)
    scorer = trainer.scorer()
    if protocol == "sampled":
        metrics = evaluate_sampled(scorer, getattr(ds, split), ks, cfg.eval_batch, dev)
    else:
        metrics = {"full": evaluate_full(scorer, ds, split, ks, device=dev)}
    result = {"run_dir": str(run.path), "dataset": ds.name, "model": cfg.model, "checkpoint": checkpoint,
              "checkpoint_used": str(path), "split": split, "ranking": protocol, split: metrics}
    if write:
        write_json_atomic(run.path / f"eval-{split}-{protocol}-{checkpoint}.json", result)
    return result
