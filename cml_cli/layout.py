"""The on-disk layout of grids and studies: one definition, shared by ablate, report and tune.

A grid (``cml ablate``) is a directory ``<runs-dir>/<name>/`` holding

* one run directory per (variant, seed), named by :func:`run_dir_name` (``w/o-clf``, 0 ->
  ``w-o-clf-s0``) and parsed back by :func:`parse_run_dir_name`, with its log
  :func:`run_log_name` beside it;
* :data:`GRID_FILE`, the grid's bookkeeping (the union over invocations)::

      {"dataset", "dataset_checksum", "preset", "n_candidates", "reference", "updated",
       "last_command", "overrides": {key: value},
       "failed": {run directory: error},
       "variants": {name: {"kind", "description", "overrides", "runs": {seed: run directory}}}}

  written by :class:`cml_cli.ablate.grid.GridBook` through :func:`grid_header` and
  :func:`variant_entry`, read by :func:`read_grid` (checked) and
  :func:`cml_cli.report.load_grid`;
* the comparison tables :data:`TABLE_FILES` (``table.csv``, ``table.md``, ``table.json``).

The reference variant every other is compared with is :data:`REFERENCE`.

A study (``cml tune``) is a directory holding :data:`TUNE_FILE` (its marker), the Optuna
journal :data:`JOURNAL`, a run directory per trial (:func:`trial_dir_name`), the model's
default configuration's run :data:`DEFAULT_RUN`, the best parameters :data:`BEST_CONFIG` and
their run :data:`BEST_RUN`, and a log per worker process (:func:`worker_log_name`).

This module imports no torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cml_cli.data.store import check_name, read_json_object
from cml_cli.errors import InputError

GRID_FILE = "grid.json"
TABLE_FILES = {"csv": "table.csv", "md": "table.md", "json": "table.json"}
REFERENCE = "cml"
GRID_TABLES = ("variants", "failed", "overrides")

TUNE_FILE = "tune.json"
JOURNAL = "study.journal"
BEST_CONFIG = "best.toml"
DEFAULT_RUN = "default"
BEST_RUN = "best"

_RUN_NAME = re.compile(r"^(.*)-s(\d+)$")


def run_dir_name(variant: str, seed: int) -> str:
    """Run directory name of (variant, seed): ``w/o-clf``, 0 -> ``w-o-clf-s0`` (one path
    component whatever the variant's name)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", variant).strip("-.") or "variant"
    return f"{safe}-s{seed}"


def parse_run_dir_name(name: str) -> tuple[str, str] | None:
    """``"w-o-clf-s0"`` -> ``("w-o-clf", "0")``: the (variant, seed) a name was made from, as
    far as :func:`run_dir_name` keeps it; None for a name it cannot have made."""
    m = _RUN_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def run_log_name(run: str) -> str:
    """The log of a grid's run directory ``run``, beside it."""
    return f"{run}.log"


def trial_dir_name(number: int) -> str:
    """The run directory of a study's trial ``number``."""
    return f"trial-{number}"


def worker_log_name(worker: int) -> str:
    """The log of a study's worker process ``worker``."""
    return f"worker-{worker}.log"


def variant_entry(kind: str, description: str, overrides: dict[str, Any], runs: dict[str, str]) -> dict[str, Any]:
    """A variant's entry in :data:`GRID_FILE`; ``runs`` maps a seed (as text) to its run directory."""
    return {"kind": kind, "description": description, "overrides": overrides, "runs": runs}


def grid_header(dataset: str | None, *, checksum: str | None = None, preset: str | None = None,
                n_candidates: int | None = None, updated: str | None = None, command: str | None = None,
                overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The top-level fields of :data:`GRID_FILE` other than ``variants`` and ``failed``."""
    return {"dataset": dataset, "dataset_checksum": checksum, "preset": preset, "n_candidates": n_candidates,
            "reference": REFERENCE, "updated": updated, "last_command": command, "overrides": overrides or {}}


def read_grid(path: Path) -> dict | None:
    """A grid's :data:`GRID_FILE`, checked (None when there is none): a JSON object whose
    ``variants``, ``failed`` and ``overrides`` are tables, each variant's ``runs`` a table from
    seed (an integer) to a run directory name (one path component). A damaged one is an
    :class:`InputError` naming the file and the field."""
    path = Path(path)
    if not path.exists():
        return None
    grid = read_json_object(path)

    def bad(field: str, why: str) -> InputError:
        return InputError(f"{path}: {field}: {why} (damaged; move it away and rerun `cml ablate`, which rebuilds "
                          "it and reuses the runs)")

    if grid is None:
        raise bad("the file", "not a readable JSON object")
    for key in GRID_TABLES:
        if not isinstance(grid.get(key, {}), dict):
            raise bad(key, "expected a table")
    for name, entry in grid.get("variants", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("runs", {}), dict) or \
                not isinstance(entry.get("overrides", {}), dict):
            raise bad(f"variants.{name}", "expected a table with tables runs and overrides")
        for seed, run in entry.get("runs", {}).items():
            if not (re.fullmatch(r"[0-9]{1,10}", seed) and int(seed) <= 2**32 - 1):
                raise bad(f"variants.{name}.runs", f"seed {seed!r} is not an integer")
            if not isinstance(run, str):
                raise bad(f"variants.{name}.runs.{seed}", "expected a run directory name")
            check_name(run, f"{path}: variants.{name}.runs.{seed}")
    for run, error in grid.get("failed", {}).items():
        check_name(run, f"{path}: failed")
        if not isinstance(error, str):
            raise bad(f"failed.{run}", "expected the error's text")
    return grid
