"""``cml evaluate``: metrics of a finished or interrupted run's checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cml_cli.data.store import resolve_dataset_dir, write_json_atomic
from cml_cli.errors import InputError
from cml_cli.evaluate import evaluate_full, evaluate_sampled
from cml_cli.train.checkpoint import load_checkpoint
from cml_cli.train.loop import _load, make_trainer, resolve_device
from cml_cli.train.rundir import RunDir


def evaluate_run(run_path: Path, *, checkpoint: str = "best", split: str = "test", protocol: str = "sampled",
                 ks: list[int] | None = None, data_dir: Path | None = None, device: str | None = None,
                 write: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (best | last) of a run on ``split`` with ``protocol``
    (sampled 1+99 | full ranking); writes ``eval-<split>-<protocol>-<checkpoint>.json``."""
    if checkpoint not in ("best", "last"):
        raise InputError(f"--checkpoint: '{checkpoint}' is not one of best, last")
    if split not in ("test", "valid"):
        raise InputError(f"--split: '{split}' is not one of test, valid")
    if protocol not in ("sampled", "full"):
        raise InputError(f"--protocol: '{protocol}' is not one of sampled, full")
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: no such run directory")
    cfg = run.read_config()
    ks = ks or cfg.ks
    manifest = run.read_manifest()
    ds = _load(resolve_dataset_dir(manifest["dataset"], data_dir), cfg)
    if split == "valid" and len(ds.valid) == 0:
        raise InputError(f"dataset '{ds.name}' has no validation split (preprocessed with --no-valid)")
    dev = resolve_device(device or cfg.device)
    trainer = make_trainer(ds, cfg, dev)
    path = run.best if checkpoint == "best" else run.last
    if checkpoint == "best" and not path.is_file():
        path = run.last
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint (has the run trained an epoch?)")
    state = load_checkpoint(path)
    trainer.load_model_state(state["trainer"])
    scorer = trainer.scorer()
    if protocol == "sampled":
        metrics = evaluate_sampled(scorer, getattr(ds, split), ks, cfg.eval_batch, dev)
    else:
        metrics = evaluate_full(scorer, ds, split, ks, device=dev)
    result = {"run_dir": str(run.path), "dataset": ds.name, "model": cfg.model, "checkpoint": checkpoint,
              "split": split, "protocol": protocol, split: metrics}
    if write:
        write_json_atomic(run.path / f"eval-{split}-{protocol}-{checkpoint}.json", result)
    return result
