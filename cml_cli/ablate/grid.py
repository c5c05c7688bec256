"""Planning and running an ablation grid: run directories per (variant, seed), reuse and
resume of existing ones, :func:`run_grid` and the tables it writes."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_cli.ablate.executors import EXECUTORS, _cores, _run_local, _run_ray
from cml_cli.ablate.registry import REFERENCE, Variant, registry, select_variants
from cml_cli.config import PRESETS, RunConfig, apply_overrides
from cml_cli.errors import InputError

# Config keys that may differ between a stored run and the request without making it another run.
_IGNORED_KEYS = ("device",)


def dir_name(variant: str, seed: int) -> str:
    """Run directory name of (variant, seed): ``w/o-clf``, 0 -> ``w-o-clf-s0``."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", variant).strip("-.") or "variant"
    return f"{safe}-s{seed}"


def parse_seeds(text: str | list[int]) -> list[int]:
    if isinstance(text, list):
        seeds = text
    else:
        try:
            seeds = [int(s) for s in str(text).split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds: expected comma-separated integers, got '{text}'") from None
    if not seeds:
        raise InputError("--seeds: need at least one seed")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: repeated seed in {seeds}")
    if any(s < 0 for s in seeds):
        raise InputError(f"--seeds: seeds must be >= 0, got {seeds}")
    return list(seeds)


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
    return json.dumps({k: v for k, v in cfg.items() if k not in _IGNORED_KEYS}, sort_keys=True)


def _read_run_config(path: Path) -> dict[str, Any] | None:
    from cml_cli.config import load_toml

    try:
        return apply_overrides(RunConfig(), load_toml(path / "config.toml")).to_dict()
    except InputError:
        return None


def _existing_runs(grid_dir: Path) -> dict[str, dict[str, Any]]:
    """``dir name -> config dict`` of every run directory in the grid."""
    out = {}
    if grid_dir.is_dir():
        for d in sorted(grid_dir.iterdir()):
            if d.is_dir() and (d / "config.toml").is_file():
                cfg = _read_run_config(d)
                if cfg is not None:
                    out[d.name] = cfg
    return out


def _finished(run: Path) -> bool:
    try:
        return isinstance(json.loads((run / "metrics.json").read_text()), dict)
    except (OSError, json.JSONDecodeError):
        return False


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if k not in _IGNORED_KEYS and old.get(k) != new.get(k)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def build_config(preset: str, overrides: dict[str, Any], variant: Variant, seed: int) -> RunConfig:
    """Preset, then ``--set`` overrides (every run), then the variant's, then the seed."""
    cfg = apply_overrides(RunConfig(), PRESETS[preset])
    cfg = apply_overrides(cfg, overrides)
    try:
        cfg = apply_overrides(cfg, variant.overrides)
        cfg.seed = seed
        return cfg.validate()
    except InputError as e:
        raise InputError(f"variant '{variant.name}': {e}") from None


def plan(grid_dir: Path, variants: list[Variant], seeds: list[int], preset: str, overrides: dict[str, Any],
         behaviors: list[str], checksum: str) -> tuple[dict[tuple[str, int], str], list[Unit]]:
    """Map every (variant, seed) to a run directory and decide what each directory needs.
    Raises ``InputError`` when a directory holds a run of another configuration or dataset."""
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
        for seed in seeds:
            cfg = build_config(preset, overrides, variant, seed).to_dict()
            key = _config_key(cfg)
            natural = dir_name(variant.name, seed)
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
    if stored is None:
        return Unit(name, "new", cfg)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = None
    if manifest is not None and manifest.get("dataset_checksum") != checksum:
        conflicts.append(f"{path} was trained on another version of the dataset")
        return Unit(name, "done", cfg)
    diff = _diff(stored, cfg)
    if not diff:
        if manifest is None:
            return Unit(name, "new", cfg)
        return Unit(name, "done" if _finished(path) else "resume", cfg)
    if [d.split(":")[0] for d in diff] == ["epochs"] and cfg["epochs"] > stored["epochs"] and manifest is not None:
        return Unit(name, "extend", cfg)
    conflicts.append(f"{path} holds a run of another configuration ({', '.join(diff)})")
    return Unit(name, "done", cfg)


Event = Callable[[str, Unit, dict[str, Any]], None]


# --------------------------------------------------------------------------- the grid


def _dataset_info(dataset: str | Path, data_dir: Path | None) -> dict[str, Any]:
    from cml_cli.data.preprocess import dataset_preset
    from cml_cli.data.store import read_manifest, resolve_dataset_dir

    ds_dir = resolve_dataset_dir(dataset, data_dir).resolve()
    manifest = read_manifest(ds_dir)
    family = dataset_preset(manifest["name"])
    preset = manifest.get("preset") or (family.train_preset if family else "default")
    if preset not in PRESETS:
        preset = "default"
    n_candidates = None
    try:
        import numpy as np

        with np.load(ds_dir / "arrays.npz", allow_pickle=False) as z:
            n_candidates = int(z["test.neg"].shape[1]) + 1
    except (OSError, KeyError, ValueError, IndexError):
        pass
    return {"dir": ds_dir, "name": manifest["name"], "behaviors": list(manifest["behaviors"]), "preset": preset,
            "checksum": manifest["files"]["arrays.npz"], "n_candidates": n_candidates}


def _read_grid(path: Path) -> dict[str, Any]:
    try:
        grid = json.loads(path.read_text())
        return grid if isinstance(grid, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def run_grid(
    dataset: str | Path,
    variants: list[str] | None = None,
    seeds: list[int] | str = (0,),
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
    executor: str = "local",
    name: str | None = None,
    runs_dir: Path = Path("runs"),
    data_dir: Path | None = None,
    *,
    variants_file: Path | None = None,
    ray_address: str | None = None,
    on_event: Event | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every (variant, seed) of a grid and write its tables.

    Returns ``{"grid_dir", "table" (the content of table.json), "failed": [{"run", "log",
    "error", "variants", "seed"}], "executed", "reused", "skipped", "seconds"}``. Failing runs
    do not raise: the others complete and the failures are listed (the CLI exits 1)."""
    from cml_cli.report import summarize_grid, write_tables

    started = time.perf_counter()
    if executor not in EXECUTORS:
        raise InputError(f"--executor: '{executor}' is not one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise InputError(f"--jobs: must be at least 1, got {jobs}")
    if ray_address and executor != "ray":
        raise InputError("--ray-address: only with --executor ray")
    seeds = parse_seeds(list(seeds) if not isinstance(seeds, str) else seeds)
    overrides = dict(overrides or {})
    if "seed" in {k.replace("-", "_") for k in overrides}:
        raise InputError("--set seed=...: use --seeds")
    apply_overrides(RunConfig(), overrides)  # unknown keys -> InputError before anything runs
    info = _dataset_info(dataset, data_dir)
    reg = registry(info["behaviors"], variants_file)
    chosen, skipped = select_variants(reg, variants)
    if not chosen:
        raise InputError("--variants: nothing to run")
    name = name or f"ablate-{info['name']}"
    if "/" in name or name in ("", ".", ".."):
        raise InputError(f"--name: '{name}' is not a directory name")
    grid_dir = (Path(runs_dir) / name).resolve()
    from cml_cli.data.store import check_writable_dir

    check_writable_dir(grid_dir, "ablation directory")
    mapping, units = plan(grid_dir, chosen, seeds, info["preset"], overrides, info["behaviors"], info["checksum"])
    grid_dir.mkdir(parents=True, exist_ok=True)

    grid_path = grid_dir / "grid.json"
    grid = _read_grid(grid_path)
    recorded_overrides = {k: str(v) for k, v in overrides.items()}
    if grid.get("dataset_checksum") not in (None, info["checksum"]) or \
            grid.get("overrides", recorded_overrides) != recorded_overrides:
        grid["variants"] = {}  # runs of other settings are not comparable with these
    grid.update({"dataset": info["name"], "dataset_checksum": info["checksum"], "preset": info["preset"],
                 "n_candidates": info["n_candidates"], "reference": REFERENCE, "updated": time.strftime(
                     "%Y-%m-%dT%H:%M:%S%z"), "last_command": command, "overrides": recorded_overrides})
    grid.setdefault("failed", {})
    recorded = grid.setdefault("variants", {})
    for v in chosen:
        entry = recorded.get(v.name, {})
        runs = {s: d for s, d in entry.get("runs", {}).items()} if entry.get("overrides") == v.overrides else {}
        runs.update({str(s): mapping[(v.name, s)] for s in seeds})
        recorded[v.name] = {"kind": v.kind, "description": v.description, "overrides": v.overrides,
                            "runs": dict(sorted(runs.items(), key=lambda kv: int(kv[0])))}
    _write_json(grid_path, grid)

    todo = [u for u in units if u.state != "done"]
    reused = [u for u in units if u.state == "done"]
    threads = max(1, _cores() // jobs) if executor == "local" or not ray_address else 1
    specs = [{"dataset": str(info["dir"]), "data_dir": str(info["dir"].parent), "grid_dir": str(grid_dir),
              "dir": u.dir, "state": u.state, "config": u.config, "log": str(grid_dir / f"{u.dir}.log"),
              "threads": threads} for u in todo]
    by_dir = {u.dir: u for u in units}
    failed: list[dict[str, Any]] = []
    count = {"n": 0}

    def notify(spec: dict, outcome: dict) -> None:
        unit = by_dir[spec["dir"]]
        event = outcome.get("event")
        if event is None:
            count["n"] += 1
            event = "done" if outcome["ok"] else "failed"
            if outcome["ok"]:
                grid["failed"].pop(unit.dir, None)
            else:
                grid["failed"][unit.dir] = outcome["error"]
                failed.append({"run": str(grid_dir / unit.dir), "log": spec["log"], "error": outcome["error"],
                               "variants": unit.variants, "seed": unit.seed})
            _write_json(grid_path, grid)
        if on_event is not None:
            on_event(event, unit, {**outcome, "index": count["n"], "total": len(specs), "log": spec["log"],
                                   "run": str(grid_dir / unit.dir)})

    if on_event is not None:
        for u in reused:
            on_event("reused", u, {"run": str(grid_dir / u.dir), "total": len(specs)})
    for u in reused:
        grid["failed"].pop(u.dir, None)
    if specs:
        if executor == "ray":
            _run_ray(specs, jobs, ray_address, notify)
        else:
            _run_local(specs, jobs, notify)
    _write_json(grid_path, grid)

    table = summarize_grid(grid_dir, variants=[v.name for v in chosen], seeds=seeds)
    write_tables(table, grid_dir)
    return {"grid_dir": str(grid_dir), "table": table, "failed": failed, "executed": len(specs),
            "reused": len(reused), "skipped": skipped, "seconds": time.perf_counter() - started}

