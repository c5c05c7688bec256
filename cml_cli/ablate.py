"""``cml ablate``: a registry of variants (named config changes) and a resumable grid runner.

Every (variant, seed) is an ordinary run directory ``<runs-dir>/<name>/<variant>-s<seed>/``
(``/`` in a variant name becomes ``-``: ``w/o-clf`` -> ``w-o-clf-s0``) with its log beside it
(``<variant>-s<seed>.log``). Finished runs (``metrics.json`` present, same configuration) are
reused, interrupted ones resumed, so running the same command again only does what is missing.
Variants whose resolved configuration is identical (``first-order`` is ``cml`` when the preset
already uses first-order meta-gradients) share their runs.

Executors: ``local`` runs ``jobs`` runs side by side (in this process when ``jobs == 1``,
otherwise one ``python -m cml_cli.ablate`` subprocess per run with ``cores // jobs`` torch
threads each); ``ray`` sends each run to a Ray cluster (optional extra ``[ray]``).

``<runs-dir>/<name>/grid.json`` records the variants and runs of the grid (the union over
invocations); ``table.csv``, ``table.md`` and ``table.json`` hold the comparison table
(see :mod:`cml_cli.report`). This module imports torch only inside the runs themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_cli.config import PRESETS, RunConfig, apply_overrides, read_toml
from cml_cli.errors import InputError

BASELINES = ("popularity", "itemknn-merged", "bpr-mf", "lightgcn-target", "lightgcn-merged")
REFERENCE = "cml"
# Trained baselines use plain Adam at one learning rate of their own rather than the CML
# preset's small cyclic one, which leaves them under-trained within the epoch budget.
BASELINE_SETTINGS = {b: {"lr": 5e-3} for b in ("bpr-mf", "lightgcn-target", "lightgcn-merged")}
EXECUTORS = ("local", "ray")
# Config keys that may differ between a stored run and the request without making it another run.
_IGNORED_KEYS = ("device",)


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides; ``kind`` is cml | ablation | baseline | custom."""

    name: str
    overrides: dict[str, Any]
    kind: str = "custom"
    description: str = ""


_CORE = (
    Variant(REFERENCE, {}, "cml", "full CML"),
    Variant("w/o-clf", {"contrastive": False}, "ablation", "no contrastive loss"),
    Variant("w/o-mce", {"meta": False}, "ablation", "no meta weighting: all weights 1, no meta steps"),
    Variant("first-order", {"meta_grad": "first-order"}, "ablation", "first-order meta-gradient"),
    Variant("second-order", {"meta_grad": "second-order"}, "ablation", "second-order meta-gradient"),
    Variant("adj-none", {"adj": "none"}, "ablation", "unnormalised adjacency"),
    Variant("adj-symmetric", {"adj": "symmetric"}, "ablation", "symmetrically normalised adjacency"),
    Variant("no-hold-out", {"hold_out": False}, "ablation",
            "batch positives stay in the propagated graph (the paper's training)"),
)
_BASELINE_TEXT = {
    "popularity": "most-interacted items first (all behaviors)",
    "itemknn-merged": "cosine item-item co-occurrence over all behaviors",
    "bpr-mf": "BPR matrix factorisation on the target behavior",
    "lightgcn-target": "LightGCN on the target behavior",
    "lightgcn-merged": "LightGCN on all behaviors merged into one graph",
}


def builtin_variants(behaviors: list[str] | None = None) -> dict[str, Variant]:
    """The registered variants for a dataset whose behaviors are ``behaviors`` (target last):
    the CML ablations, one ``w/o-<behavior>`` per auxiliary behavior, ``target-only`` (when
    there are auxiliary behaviors) and the baselines, in table order."""
    out = {v.name: v for v in _CORE}
    auxiliary = list(behaviors[:-1]) if behaviors else []
    for b in auxiliary:
        out[f"w/o-{b}"] = Variant(f"w/o-{b}", {"behaviors": [a for a in auxiliary if a != b]}, "ablation",
                                  f"without the {b} behavior")
    if auxiliary:
        out["target-only"] = Variant("target-only", {"behaviors": []}, "ablation",
                                     f"{behaviors[-1]} only, no auxiliary behavior")
    for b in BASELINES:
        out[b] = Variant(b, {"model": b, **BASELINE_SETTINGS.get(b, {})}, "baseline", _BASELINE_TEXT[b])
    return out


def load_variants_file(path: Path) -> dict[str, Variant]:
    """Variants from a TOML file: tables ``[variants.NAME]`` of config overrides (``--set``
    keys), with an optional ``description`` string. Quote names with ``/``:
    ``[variants."w/o-dropout"]``."""
    path = Path(path)
    data = read_toml(path, "variants file")
    table = data.get("variants")
    if not isinstance(table, dict) or not table:
        raise InputError(f"--variants-file {path}: expected tables [variants.NAME] of overrides")
    out = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise InputError(f"--variants-file {path}: variants.{name} must be a table of overrides")
        spec = dict(spec)
        description = str(spec.pop("description", ""))
        kind = "baseline" if spec.get("model", REFERENCE) != REFERENCE else "custom"
        if "seed" in spec:
            raise InputError(f"--variants-file {path}: variants.{name}: 'seed' is set by --seeds")
        try:
            apply_overrides(RunConfig(), spec)
        except InputError as e:
            raise InputError(f"--variants-file {path}: variants.{name}: {e}") from None
        out[name] = Variant(name, spec, kind, description or "from " + path.name)
    return out


def registry(behaviors: list[str] | None = None, variants_file: Path | None = None) -> dict[str, Variant]:
    """Built-in variants for ``behaviors`` plus (replacing same-named ones) a variants file's."""
    out = builtin_variants(behaviors)
    if variants_file is not None:
        out.update(load_variants_file(variants_file))
    return out


def baselines_available() -> bool:
    return importlib.util.find_spec("cml_cli.model.baselines") is not None


def select_variants(reg: dict[str, Variant], names: list[str] | None) -> tuple[list[Variant], list[str]]:
    """The variants to run, in registry order for the default; returns (variants, skipped names).
    ``names`` may use the groups ``all``, ``ablations`` and ``baselines``."""
    skipped: list[str] = []
    if not names:
        chosen = list(reg.values())
        if not baselines_available():
            skipped = [v.name for v in chosen if v.kind == "baseline" and v.overrides.get("model") in BASELINES]
            chosen = [v for v in chosen if v.name not in skipped]
        return chosen, skipped
    out: list[Variant] = []
    for name in names:
        if name == "all":
            group = list(reg.values())
        elif name in ("ablations", "baselines"):
            group = [v for v in reg.values() if v.kind == name[:-1]]
        elif name in reg:
            group = [reg[name]]
        else:
            raise InputError(f"--variants: unknown variant '{name}' (known: {', '.join(reg)}; "
                             "add your own with --variants-file)")
        out += [v for v in group if v not in out]
    return out, skipped


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


# --------------------------------------------------------------------------- running one


class LogProgress:
    """Training progress as one line per epoch in a log file."""

    def __init__(self, stream):
        self.stream = stream
        self.total = 0

    def start(self, epochs: int, done: int) -> None:
        self.total = epochs
        self.stream.write(f"training epochs {done + 1}..{epochs}\n")
        self.stream.flush()

    def start_epoch(self, epoch: int, batches: int) -> None: ...

    def advance(self, loss: float) -> None: ...

    def end_epoch(self, row: dict) -> None:
        valid = row.get("valid") or {}
        extra = "  ".join(f"valid {k} {valid[k]:.4f}" for k in ("hr@10", "ndcg@10") if k in valid)
        self.stream.write(f"epoch {row['epoch']}/{self.total}  loss {row.get('loss', 0.0):.4f}  {extra}  "
                          f"{row.get('seconds', 0.0):.1f} s\n")
        self.stream.flush()

    def stop(self) -> None: ...


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Create, resume or extend one run as ``spec`` says; never raises for a failing run.
    Returns ``{"ok", "error", "seconds"}``; the run's progress and any traceback go to its log."""
    started = time.perf_counter()
    log_path = Path(spec["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stderr(log):
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {spec['state']} {spec['dir']} "
                  f"(pid {os.getpid()}, {spec['threads']} torch threads)\n")
        log.flush()
        threads = None
        try:
            import torch

            from cml_cli.train.loop import resume, train

            threads = torch.get_num_threads()
            torch.set_num_threads(int(spec["threads"]))
            progress = LogProgress(log)
            run = Path(spec["grid_dir"]) / spec["dir"]
            data_dir = Path(spec["data_dir"])
            if spec["state"] == "new":
                cfg = RunConfig.from_dict(spec["config"]).validate()
                result = train(spec["dataset"], cfg, data_dir=data_dir, runs_dir=Path(spec["grid_dir"]),
                               name=spec["dir"], force=True, progress=progress)
            else:
                epochs = spec["config"]["epochs"] if spec["state"] == "extend" else None
                result = resume(run, data_dir=data_dir, progress=progress, epochs=epochs)
            seconds = time.perf_counter() - started
            test = result.get("test", {})
            log.write(f"finished in {seconds:.1f} s: test " +
                      " ".join(f"{k} {v:.4f}" for k, v in test.items()) + "\n")
            return {"ok": True, "error": None, "seconds": seconds}
        except Exception as e:
            traceback.print_exc(file=log)
            message = str(e).splitlines()[0] if str(e) else ""
            error = f"{type(e).__name__}: {message}"
            log.write(f"FAILED: {error}\n")
            return {"ok": False, "error": error, "seconds": time.perf_counter() - started}
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)


def _worker_main(argv: list[str]) -> int:
    """``python -m cml_cli.ablate SPEC_JSON``: one run in its own process (exit 1 if it failed)."""
    spec = json.loads(argv[0])
    outcome = run_one(spec)
    return 0 if outcome["ok"] else 1


# --------------------------------------------------------------------------- executors

Event = Callable[[str, Unit, dict[str, Any]], None]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("FAILED: "):
            return ln[len("FAILED: "):]
    return lines[-1] if lines else "exited without output"


def _run_local(specs: list[dict], jobs: int, notify: Callable[[dict, dict], None]) -> None:
    if jobs == 1:
        for spec in specs:
            notify(spec, {"event": "start"})
            notify(spec, run_one(spec))
        return
    procs: dict[str, subprocess.Popen] = {}

    def one(spec: dict) -> dict:
        started = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
               "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = Path(spec["log"])
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            proc = subprocess.Popen([sys.executable, "-m", "cml_cli.ablate", json.dumps(spec)], stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            procs[spec["dir"]] = proc
            rc = proc.wait()
        seconds = time.perf_counter() - started
        if rc == 0:
            return {"ok": True, "error": None, "seconds": seconds}
        return {"ok": False, "error": _last_line(log) if rc == 1 else f"worker exited with status {rc}",
                "seconds": seconds}

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {}
        for spec in specs:
            futures[pool.submit(one, spec)] = spec
        for spec in specs:
            notify(spec, {"event": "queued"})
        for fut in as_completed(futures):
            notify(futures[fut], fut.result())
    except BaseException:
        for fut in futures:
            fut.cancel()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_task(spec: dict) -> dict:
    return run_one(spec)


def _run_ray(specs: list[dict], jobs: int, address: str | None, notify: Callable[[dict, dict], None]) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'cml-cli[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                                   "configure_logging": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=jobs, **options)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending = {}
        for spec in specs:
            pending[remote.remote(spec)] = spec
            notify(spec, {"event": "queued"})
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as e:  # a worker that died, a task that could not run
                outcome = {"ok": False, "error": f"ray: {type(e).__name__}: {str(e).splitlines()[0]}",
                           "seconds": 0.0}
                with open(spec["log"], "a") as f:
                    f.write(f"FAILED: {outcome['error']}\n")
            notify(spec, outcome)
    finally:
        if started_here:
            ray.shutdown()


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


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
