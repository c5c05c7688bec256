"""Planning and running an ablation grid: run directories per (variant, seed), reuse and
resume of existing ones, the grid's bookkeeping (``grid.json``) and :func:`run_grid`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_cli.ablate.executors import EXECUTORS, run_local, run_ray, usable_cores
from cml_cli.ablate.registry import Variant, registry, select_variants
from cml_cli.config import (
    PLACEMENT_KEYS,
    SEED_MAX,
    RunConfig,
    apply_overrides,
    compose,
    config_changes,
    dataset_preset_name,
    load_toml,
)
from cml_cli.data.dataset import N_NEGATIVES
from cml_cli.data.store import ARRAYS, check_name, check_writable_dir, read_manifest, resolve_dataset_dir, write_json_atomic
from cml_cli.errors import InputError, Interrupted
from cml_cli.layout import GRID_FILE, grid_header, read_grid, run_dir_name, run_log_name, variant_entry
from cml_cli.tracking import Tracking
from cml_cli.train.rundir import RunDir

MAX_JOBS = 256


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (the command line's ``--seeds``), checked."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds: expected comma-separated integers, got '{text}'") from None
    return check_seeds(seeds)


def check_seeds(seeds: list[int]) -> list[int]:
    if not seeds:
        raise InputError("--seeds: need at least one seed")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: repeated seed in {seeds}")
    if any(not 0 <= s <= SEED_MAX for s in seeds):
        raise InputError(f"--seeds: seeds must be in [0, {SEED_MAX}], got {seeds}")
    return list(seeds)


def check_grid_dir(grid_dir: Path) -> None:
    """``cml ablate`` writes only into its own kind of directory: a missing or empty one, or one
    holding a ``grid.json``; never through a symbolic link. Anything else is an
    :class:`InputError`, and nothing there is touched."""
    grid_dir = Path(grid_dir)
    if grid_dir.is_symlink():
        raise InputError(f"{grid_dir}: is a symbolic link; cml ablate never writes through one, so nothing was "
                         "changed (use another --name)")
    if not grid_dir.exists():
        return
    if not grid_dir.is_dir():
        raise InputError(f"{grid_dir}: exists and is not a directory; nothing was changed (use another --name)")
    if any(grid_dir.iterdir()) and not (grid_dir / GRID_FILE).is_file():
        raise InputError(f"{grid_dir}: exists and is not an ablation directory (no {GRID_FILE}); cml ablate writes "
                         "only into its own directories, so nothing was changed (use another --name)")


# --------------------------------------------------------------------------- planning


@dataclass
class Unit:
    """One run directory to reuse, create, resume or extend (``state``)."""

    dir: str
    state: str  # done | new | resume | extend
    config: dict[str, Any]
    variants: list[str] = field(default_factory=list)
    seed: int = 0

    def label(self) -> str:
        return f"{' = '.join(self.variants)} s{self.seed}"


def _config_key(cfg: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in PLACEMENT_KEYS}, sort_keys=True)


def _existing_runs(grid_dir: Path) -> dict[str, dict[str, Any]]:
    """``dir name -> config dict`` of every run directory in the grid."""
    out = {}
    if grid_dir.is_dir():
        for d in sorted(grid_dir.iterdir()):
            cfg = RunDir(d).read_config_dict() if d.is_dir() and not d.is_symlink() else None
            if cfg is not None:
                out[d.name] = cfg
    return out


def build_config(preset: str, overrides: dict[str, Any], variant: Variant, seed: int,
                 configs: list[dict[str, Any]] = ()) -> RunConfig:
    """The preset and the model's settings, then ``configs`` (``--config`` files, the ones for
    every variant before the variant's own), then ``--set`` overrides (every run), then the
    variant's overrides, then the seed."""
    try:
        cfg = compose(preset, [*configs, overrides, variant.overrides])
        cfg.seed = seed
        return cfg.validate()
    except InputError as e:
        raise InputError(f"variant '{variant.name}': {e}") from None


def plan(grid_dir: Path, variants: list[Variant], seeds: list[int], preset: str, overrides: dict[str, Any],
         behaviors: list[str], checksum: str,
         configs: dict[str | None, list[dict[str, Any]]] | None = None) -> tuple[dict[tuple[str, int], str], list[Unit]]:
    """Map every (variant, seed) to a run directory and decide what each directory needs.
    ``configs`` maps a variant name (``None``: every variant) to its ``--config`` tables.
    Raises ``InputError`` when a directory holds a run of another configuration or dataset."""
    configs = configs or {}
    existing = _existing_runs(grid_dir)
    by_key: dict[str, str] = {}
    for name, cfg in existing.items():
        by_key.setdefault(_config_key(cfg), name)
    units: dict[str, Unit] = {}
    mapping: dict[tuple[str, int], str] = {}
    conflicts: list[str] = []
    for variant in variants:
        unknown = sorted(set(variant.overrides.get("behaviors") or []) - set(behaviors))
        if unknown:
            raise InputError(f"variant '{variant.name}': unknown behavior(s) {unknown}; dataset has {behaviors}")
        tables = [*configs.get(None, []), *configs.get(variant.name, [])]
        for seed in seeds:
            cfg = build_config(preset, overrides, variant, seed, tables).to_dict()
            key = _config_key(cfg)
            natural = run_dir_name(variant.name, seed)
            name = by_key.get(key)
            if name is None:
                name = natural
                if name in units:  # another variant's run of another config took the name
                    conflicts.append(f"{variant.name} s{seed}: run directory name {name} is taken")
                    continue
                by_key[key] = name
            if name not in units:
                units[name] = _unit(grid_dir / name, name, cfg, existing.get(name), checksum, conflicts)
            units[name].variants.append(variant.name)
            units[name].seed = seed
            mapping[(variant.name, seed)] = name
    if conflicts:
        raise InputError(f"{grid_dir}: " + "; ".join(conflicts) + " (use another --name, or delete those run "
                         "directories to start them over)")
    return mapping, list(units.values())


def _unit(path: Path, name: str, cfg: dict[str, Any], stored: dict[str, Any] | None, checksum: str,
          conflicts: list[str]) -> Unit:
    if path.is_symlink():
        conflicts.append(f"{path} is a symbolic link (a run directory is never written through one)")
        return Unit(name, "done", cfg)
    if stored is None:
        return Unit(name, "new", cfg)
    run = RunDir(path)
    try:
        manifest = run.read_manifest()
    except InputError:
        manifest = None
    if manifest is not None and manifest.get("dataset_checksum") != checksum:
        conflicts.append(f"{path} was trained on another version of the dataset")
        return Unit(name, "done", cfg)
    diff = config_changes(stored, cfg)
    if not diff:
        if manifest is None:
            return Unit(name, "new", cfg)
        return Unit(name, "done" if run.read_final() is not None else "resume", cfg)
    if [d.split(":")[0] for d in diff] == ["epochs"] and cfg["epochs"] > stored["epochs"] and manifest is not None:
        return Unit(name, "extend", cfg)
    conflicts.append(f"{path} holds a run of another configuration ({', '.join(diff)})")
    return Unit(name, "done", cfg)


Event = Callable[[str, Unit, dict[str, Any]], None]


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class DatasetInfo:
    """What a grid needs to know of its processed dataset."""

    dir: Path
    name: str
    behaviors: list[str]
    preset: str
    checksum: str
    n_candidates: int

    @classmethod
    def read(cls, dataset: str | Path, data_dir: Path | None) -> DatasetInfo:
        ds_dir = resolve_dataset_dir(dataset, data_dir).resolve()
        manifest = read_manifest(ds_dir)
        return cls(ds_dir, manifest["name"], list(manifest["behaviors"]), dataset_preset_name(manifest),
                   manifest["files"][ARRAYS], N_NEGATIVES + 1)


class GridBook:
    """``grid.json``: the grid's dataset, settings, variants with their runs, and failures.

    It holds the union over invocations; the variants recorded under other settings (``--set``)
    or another version of the dataset are dropped, since their runs are not comparable."""

    def __init__(self, grid_dir: Path):
        self.path = grid_dir / GRID_FILE
        self.grid: dict[str, Any] = read_grid(self.path) or {}

    def start(self, info: DatasetInfo, overrides: dict[str, Any], variants: list[Variant], seeds: list[int],
              mapping: dict[tuple[str, int], str], command: str | None) -> None:
        grid = self.grid
        recorded_overrides = {k: str(v) for k, v in overrides.items()}
        if grid.get("dataset_checksum") not in (None, info.checksum) or \
                grid.get("overrides", recorded_overrides) != recorded_overrides:
            grid["variants"] = {}
        grid.update(grid_header(info.name, checksum=info.checksum, preset=info.preset, n_candidates=info.n_candidates,
                                updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=command,
                                overrides=recorded_overrides))
        grid.setdefault("failed", {})
        recorded = grid.setdefault("variants", {})
        for v in variants:
            entry = recorded.get(v.name, {})
            runs = dict(entry.get("runs", {})) if entry.get("overrides") == v.overrides else {}
            runs.update({str(s): mapping[(v.name, s)] for s in seeds})
            recorded[v.name] = variant_entry(v.kind, v.description, v.overrides,
                                             dict(sorted(runs.items(), key=lambda kv: int(kv[0]))))
        self.write()

    def outcome(self, run: str, error: str | None) -> None:
        """Record a run's end (``error`` None: it succeeded) and write the file."""
        if error is None:
            self.grid["failed"].pop(run, None)
        else:
            self.grid["failed"][run] = error
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.grid)


# --------------------------------------------------------------------------- the grid


@dataclass
class Execution:
    """How the runs of a grid run: ``jobs`` side by side on the ``local`` executor (processes)
    or ``ray`` (at ``ray_address``, default a local cluster), each tracked with ``track``
    (``--track``; MLflow: one experiment named after the grid, a run per (variant, seed))."""

    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    track: Tracking | None = None

    def check(self) -> Execution:
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor: '{self.executor}' is not one of {', '.join(EXECUTORS)}")
        if not 1 <= self.jobs <= MAX_JOBS:
            raise InputError(f"--jobs: must be in [1, {MAX_JOBS}], got {self.jobs}")
        if self.ray_address and self.executor != "ray":
            raise InputError("--ray-address: only with --executor ray")
        return self

    def threads(self) -> int:
        """Torch threads per run: the cores over ``jobs``, at most ``OMP_NUM_THREADS`` when it is
        set (one thread is fastest for tiny data, and on a busy machine)."""
        cap = os.environ.get("OMP_NUM_THREADS", "")
        cores = min(usable_cores(), int(cap)) if cap.isdigit() and int(cap) > 0 else usable_cores()
        return max(1, cores // self.jobs) if self.executor == "local" or not self.ray_address else 1


def read_configs(files: list[str | Path], known: list[str] | None = None) -> dict[str | None, list[dict[str, Any]]]:
    """``--config`` values: ``FILE`` (every variant) or ``VARIANT=FILE`` -> tables by variant."""
    out: dict[str | None, list[dict[str, Any]]] = {}
    for spec in files:
        text = str(spec)
        variant, _, path = text.partition("=") if "=" in text and not Path(text).is_file() else (None, "", text)
        if variant is not None and known is not None and variant not in known:
            raise InputError(f"--config {text}: unknown variant '{variant}' (known: {', '.join(known)})")
        out.setdefault(variant, []).append(load_toml(Path(path)))
    return out


def _execute(grid_dir: Path, units: list[Unit], specs: list[dict[str, Any]], execution: Execution, book: GridBook,
             on_event: Event | None) -> list[dict[str, Any]]:
    """Run ``specs`` (the units not done), record each outcome in ``grid.json`` and report it;
    returns the failures. Ctrl-C raises :class:`Interrupted` saying what was kept."""
    by_dir = {u.dir: u for u in units}
    failed: list[dict[str, Any]] = []
    count = {"n": 0}

    def notify(spec: dict, outcome: dict) -> None:
        unit = by_dir[spec["dir"]]
        event = outcome.get("event")
        if event is None:
            count["n"] += 1
            event = "done" if outcome["ok"] else "failed"
            book.outcome(unit.dir, None if outcome["ok"] else outcome["error"])
            if not outcome["ok"]:
                failed.append({"run": str(grid_dir / unit.dir), "log": spec["log"], "error": outcome["error"],
                               "variants": unit.variants, "seed": unit.seed})
        if on_event is not None:
            on_event(event, unit, {**outcome, "index": count["n"], "total": len(specs), "log": spec["log"],
                                   "run": str(grid_dir / unit.dir)})

    for u in units:
        if u.state == "done":
            book.grid["failed"].pop(u.dir, None)
            if on_event is not None:
                on_event("reused", u, {"run": str(grid_dir / u.dir), "total": len(specs)})
    try:
        if specs and execution.executor == "ray":
            run_ray(specs, execution.jobs, execution.ray_address, notify)
        elif specs:
            run_local(specs, execution.jobs, notify)
    except KeyboardInterrupt:
        raise Interrupted(f"ablation {grid_dir} stopped; its finished runs are kept and each interrupted run keeps "
                          "its last complete checkpoint: run the same command again to resume") from None
    return failed


@dataclass(frozen=True)
class GridOptions:
    """What a grid runs (``cml ablate``'s options): the ``variants`` (names or groups; None:
    every variant that applies), the ``seeds``, the ``overrides`` of every run (``--set``), a
    ``variants_file`` of custom variants and the ``configs`` (``--config``: ``FILE`` for every
    variant or ``VARIANT=FILE``)."""

    variants: list[str] | None = None
    seeds: tuple[int, ...] | list[int] = (0,)
    overrides: dict[str, Any] = field(default_factory=dict)
    variants_file: Path | None = None
    configs: tuple[str | Path, ...] | list[str | Path] = ()


def run_grid(
    dataset: str | Path,
    options: GridOptions = GridOptions(),
    *,
    name: str | None = None,
    runs_dir: Path = Path("runs"),
    data_dir: Path | None = None,
    execution: Execution | None = None,
    on_event: Event | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every (variant, seed) of a grid. Returns ``{"grid_dir", "variants",
    "seeds", "failed": [{"run", "log", "error", "variants", "seed"}], "executed", "reused",
    "seconds"}``; the tables are :mod:`cml_cli.report`'s (``grid_tables``). Failing runs do
    not raise: the others complete and the failures are listed (the CLI exits 1)."""
    started = time.perf_counter()
    execution = (execution or Execution()).check()
    seeds = check_seeds(list(options.seeds))
    overrides = _check_overrides(options.overrides)
    info = DatasetInfo.read(dataset, data_dir)
    reg = registry(info.behaviors, options.variants_file)
    chosen = select_variants(reg, options.variants)
    if not chosen:
        raise InputError("--variants: nothing to run")
    tables = read_configs(list(options.configs), list(reg))
    name = check_name(name, "--name") if name is not None else f"ablate-{info.name}"
    check_grid_dir(Path(runs_dir) / name)
    grid_dir = (Path(runs_dir) / name).resolve()
    check_writable_dir(grid_dir, "ablation directory")
    track = execution.track.named(experiment=name).check() if execution.track else None
    mapping, units = plan(grid_dir, chosen, seeds, info.preset, overrides, info.behaviors, info.checksum, tables)
    grid_dir.mkdir(parents=True, exist_ok=True)
    book = GridBook(grid_dir)
    book.start(info, overrides, chosen, seeds, mapping, command)
    todo = [u for u in units if u.state != "done"]
    specs = [{"dataset": str(info.dir), "data_dir": str(info.dir.parent), "grid_dir": str(grid_dir),
              "dir": u.dir, "state": u.state, "config": u.config, "log": str(grid_dir / run_log_name(u.dir)),
              "threads": execution.threads(), "track": track.named(run_name=u.dir).to_dict() if track else None}
             for u in todo]
    failed = _execute(grid_dir, units, specs, execution, book, on_event)
    book.write()
    return {"grid_dir": str(grid_dir), "variants": [v.name for v in chosen], "seeds": seeds, "failed": failed,
            "executed": len(specs), "reused": len(units) - len(todo), "seconds": time.perf_counter() - started}


def _check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` options of every run, checked before anything runs (the seed is ``--seeds``')."""
    overrides = dict(overrides)
    if "seed" in {k.replace("-", "_") for k in overrides}:
        raise InputError("--set seed=...: use --seeds")
    apply_overrides(RunConfig(), overrides)  # unknown keys -> InputError before anything runs
    return overrides
