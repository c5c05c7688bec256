"""Timing two revisions of ``cml`` side by side: the helpers every benchmark script shares.

A *side* is a checkout of the code: ``new`` is this working tree, ``base`` a revision added
with ``git worktree add`` into a temporary directory that is removed at the end (also after an
error, Ctrl-C or SIGTERM). Every measurement is a fresh ``python -m cml_cli train`` subprocess
run from that checkout with ``PYTHONPATH`` pointing at it, so each side imports its own
``cml_cli`` (the virtual environment is shared); the run's manifest records the revision that
actually ran, and the benchmark checks it. The sides are timed alternately (base, new, base,
new, ...) so that a machine whose speed drifts slows both alike.

Epoch time is what the runner records in ``metrics.jsonl`` (``seconds``: training plus the
validation pass of one epoch); a run's figure is the median over its epochs after the first
(the first warms up allocations and caches), and a side's figure the median over all its runs'
epochs after the first. The speed-up of ``new`` is ``base / new``.

Both sides run with the same OpenMP waiting (``OMP_WAIT_POLICY``, passive unless the
environment sets it; the base revision did not set it itself): on a loaded machine spinning
OpenMP threads alone make an epoch many times slower (``bench_threads.py``), which would
otherwise count as a speed-up of the code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BASE_REVISION = "90be1d7"  # issue 18's base: the code before the speed work
RESULTS = ROOT / "experiments" / "results" / "benchmarks.json"
_LIVE: set[subprocess.Popen] = set()  # measurement processes not yet waited for
THREAD_VARS = ("CML_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


class BenchError(Exception):
    """A benchmark that cannot go on: one line on stderr, exit ``code`` (2 bad input, 1 a
    failure while running)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Side:
    """One checkout of the code: its label, root directory and git revision."""

    label: str
    root: Path
    revision: str


@dataclass(frozen=True)
class Job:
    """One measurement: ``epochs`` epochs of ``dataset`` with ``--set`` ``overrides``."""

    dataset: str
    epochs: int
    overrides: tuple[str, ...] = ()
    device: str = "cpu"


# --------------------------------------------------------------------------- checkouts


def git(*args: str, cwd: Path = ROOT) -> str:
    """Run ``git args`` in ``cwd``; its stdout, stripped (BenchError on failure)."""
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
    return out.stdout.strip()


def working_tree() -> Side:
    """This checkout, ``+dirty`` when tracked files differ from HEAD (``unknown`` outside git,
    as the run manifests say then)."""
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return Side("new", ROOT, git("rev-parse", "HEAD") + ("+dirty" if dirty else ""))
    except (BenchError, OSError):
        return Side("new", ROOT, "unknown")


@contextlib.contextmanager
def checkout(rev: str, repo: Path = ROOT) -> Iterator[Side]:
    """``rev`` checked out (detached) in a temporary worktree of ``repo``, removed on exit."""
    try:
        full = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)
    except BenchError:
        raise BenchError(f"--base: '{rev}' is not a commit of {repo}", 2) from None
    parent = Path(tempfile.mkdtemp(prefix="cml-bench-base-"))
    path = parent / "tree"
    try:
        git("worktree", "add", "--detach", "--quiet", str(path), full, cwd=repo)
        yield Side("base", path, full)
    finally:
        remove_checkout(path, repo)
        shutil.rmtree(parent, ignore_errors=True)


def remove_checkout(path: Path, repo: Path = ROOT) -> None:
    """Remove the worktree at ``path`` and git's record of it (both made by :func:`checkout`)."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)
    if path.exists() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


@contextlib.contextmanager
def sides(labels: list[str], base: str) -> Iterator[list[Side]]:
    """The sides named in ``labels`` (``base`` and/or ``new``), in that order."""
    unknown = [s for s in labels if s not in ("base", "new")]
    if unknown or not labels:
        raise BenchError(f"--sides: expected base, new or base,new, got '{','.join(labels)}'", 2)
    with contextlib.ExitStack() as stack:
        found = {"new": working_tree()}
        if "base" in labels:
            found["base"] = stack.enter_context(checkout(base))
        stack.callback(stop_children)  # runs first on the way out
        yield [found[s] for s in labels]


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the benchmark through ``SystemExit``, so cleanup runs."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


# --------------------------------------------------------------------------- measuring


def cml(side: Side, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m cml_cli ARGS`` importing ``side``'s code (run from its root), with ``env``
    added to this process's environment."""
    full = {**os.environ, **(env or {}), "PYTHONPATH": str(side.root), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "cml_cli", *args], cwd=side.root, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _LIVE.add(proc)
    return proc


def stop_children() -> None:
    """Terminate the measurement processes still running (before their checkout goes)."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _LIVE.discard(proc)


def finish(proc: subprocess.Popen) -> tuple[str, str, int, float]:
    """Wait for ``proc``: its stdout, stderr, exit status and peak RSS in MiB (its own)."""
    out: list[str] = []
    errs: list[str] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read())) for s, b in
               ((proc.stdout, out), (proc.stderr, errs))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    _LIVE.discard(proc)
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return "".join(out), "".join(errs), proc.returncode, usage.ru_maxrss / 1024


def preprocess(side: Side, data_dir: Path, name: str, *args: str) -> None:
    """Make processed dataset ``name`` in ``data_dir`` with ``side``'s code, unless it exists,
    in the first version of the processed format (:func:`as_version_1`), which every revision
    reads: both sides of a comparison then read the same files."""
    if not (data_dir / name / "manifest.json").is_file():
        print(f"preprocessing {name} ...", file=sys.stderr, flush=True)
        _, errs, rc, _ = finish(cml(side, "preprocess", *args, "--name", name, "--data-dir", str(data_dir), "--json"))
        if rc != 0:
            raise BenchError(f"preprocess {name}: {(errs.strip().splitlines() or ['failed'])[-1]}")
    as_version_1(data_dir / name)


def as_version_1(path: Path) -> None:
    """Rewrite the processed dataset in ``path`` in schema version 1 (behaviors' arrays keyed by
    name, not position), which the base revisions before schema 2 read and the current code
    still reads. A version-1 dataset is left as it is."""
    import hashlib

    import numpy as np

    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("schema_version") == 1:
        return
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for i, b in enumerate(manifest["behaviors"]):
        for field in ("user", "item", "time"):
            if f"train.{i}.{field}" in arrays:
                arrays[f"{b}.{field}"] = arrays.pop(f"train.{i}.{field}")
    with open(path / "arrays.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    digest = hashlib.sha256((path / "arrays.npz").read_bytes()).hexdigest()
    manifest.update(schema_version=1, files={"arrays.npz": digest}, sizes={"arrays.npz": (path / "arrays.npz").stat().st_size})
    manifest.pop("manifest_sha256", None)
    body = json.dumps(manifest, sort_keys=True).encode()
    manifest["manifest_sha256"] = hashlib.sha256(body).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@dataclass
class Running:
    """A training process started by :func:`start`."""

    side: Side
    job: Job
    run: Path
    proc: subprocess.Popen
    started: float


def start(side: Side, job: Job, data_dir: Path, runs_dir: Path, tag: str = "",
          env: dict[str, str] | None = None) -> Running:
    """Start training ``job`` with ``side``'s code in a fresh process (run name suffix ``tag``)."""
    name = f"{side.label}-{job.dataset}{tag}"
    sets = [f"epochs={job.epochs}", "patience=0", f"device={job.device}", *job.overrides]
    args = ["train", "--dataset", job.dataset, "--data-dir", str(data_dir), "--runs-dir", str(runs_dir),
            "--name", name, "--force", "--json", *[a for s in sets for a in ("--set", s)]]
    return Running(side, job, runs_dir / name, cml(side, *args, env=env), time.perf_counter())


def collect(running: Running) -> dict:
    """Wait for a started run; its epoch times, validation times, peak RSS and revision."""
    side, job, run = running.side, running.job, running.run
    out, errs, rc, rss = finish(running.proc)
    wall = time.perf_counter() - running.started
    if rc != 0:
        raise BenchError(f"{side.label} ({side.revision[:12]}) {job.dataset} {' '.join(job.overrides)}: "
                         f"{(errs.strip().splitlines() or [f'exit {rc}'])[-1]}")
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    manifest = json.loads((run / "manifest.json").read_text())
    ran = manifest.get("git_revision", "unknown")
    if not side.revision.startswith(ran.removesuffix("+dirty")):
        raise BenchError(f"{side.label}: the run recorded revision {ran}, expected {side.revision}")
    seconds = [r["seconds"] for r in log]
    valid = [r["seconds"] - r["train_seconds"] for r in log if "train_seconds" in r]
    shutil.rmtree(run, ignore_errors=True)
    return {
        "side": side.label, "revision": ran, "dataset": job.dataset, "overrides": list(job.overrides),
        "epochs": len(seconds), "seconds_per_epoch": [round(s, 3) for s in seconds],
        "median_seconds_per_epoch": round(median(after_first(seconds)), 4),
        "median_valid_seconds": round(median(after_first(valid)), 4) if valid else None,
        "wall_seconds": round(wall, 1), "peak_rss_mib": round(rss, 1),
        "test_hr@10": json.loads(out)["test"].get("hr@10"), "machine": manifest.get("machine"),
    }


def measure(side: Side, job: Job, data_dir: Path, runs_dir: Path) -> dict:
    """Train ``job`` with ``side``'s code in a fresh process and wait for it; every side
    with the same OpenMP waiting."""
    waiting = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return collect(start(side, job, data_dir, runs_dir, env=waiting))


def alternate(pair: list[Side], job: Job, rounds: int, data_dir: Path, runs_dir: Path,
              show: Callable[[dict], None] = lambda row: None) -> dict[str, list[dict]]:
    """Measure ``job`` ``rounds`` times on every side, alternating sides within each round."""
    rows: dict[str, list[dict]] = {s.label: [] for s in pair}
    for _ in range(rounds):
        for side in pair:
            row = measure(side, job, data_dir, runs_dir)
            rows[side.label].append(row)
            show(row)
    return rows


# --------------------------------------------------------------------------- summarising


def after_first(values: list[float]) -> list[float]:
    """Epoch times without the first (warm-up) one; the only one when there is one."""
    return list(values[1:]) or list(values[:1])


def median(values: list[float]) -> float:
    """The median (mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def side_seconds(rows: list[dict]) -> float:
    """A side's epoch time: the median over all its runs' epochs after each run's first."""
    return median([s for r in rows for s in after_first(r["seconds_per_epoch"])])


def compare(rows: dict[str, list[dict]]) -> dict:
    """Seconds per epoch of each side and, with both sides, the speed-up ``base / new``
    overall and per round (its spread shows how steady the machine was)."""
    out: dict = {f"{label}_seconds_per_epoch": round(side_seconds(r), 4) for label, r in rows.items()}
    if "base" in rows and "new" in rows:
        out["speedup"] = round(side_seconds(rows["base"]) / side_seconds(rows["new"]), 3)
        out["speedup_per_round"] = [round(b["median_seconds_per_epoch"] / n["median_seconds_per_epoch"], 3)
                                    for b, n in zip(rows["base"], rows["new"])]
    return out


def goals(summary: dict, min_speedup: float | None = None, max_seconds: float | None = None) -> dict:
    """Which targets ``summary`` meets: ``speedup >= min_speedup``, ``new <= max_seconds``."""
    met: dict = {}
    if min_speedup is not None and "speedup" in summary:
        met[f"speedup >= {min_speedup}"] = summary["speedup"] >= min_speedup
    if max_seconds is not None and "new_seconds_per_epoch" in summary:
        met[f"new <= {max_seconds} s/epoch"] = summary["new_seconds_per_epoch"] <= max_seconds
    return met


def machine_state() -> dict:
    """Load averages and the thread settings of the environment, to say how busy it was."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(),
            "thread_env": {v: os.environ[v] for v in THREAD_VARS if v in os.environ}}


def record(cases: dict[str, dict], path: Path = RESULTS) -> None:
    """Merge ``cases`` into ``path`` (``{"cases": {name: entry}}``), replacing only those names;
    written through a temporary file and a rename."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    merged = {"cases": {**(old.get("cases") or {}), **cases}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(merged, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def entry(pair: list[Side], command: list[str], state_before: dict, summary: dict, rows: dict) -> dict:
    """One case as recorded: revisions, command (no path of this machine), machine, date,
    load, summary and runs."""
    from cml_cli.train.rundir import command_line

    machine = next((r["machine"] for side_rows in rows.values() for r in side_rows if r.get("machine")), None)
    return {
        "revisions": {s.label: s.revision for s in pair},
        "command": command_line(command, ROOT), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine, "state_before": state_before, "state_after": machine_state(),
        "summary": summary, "runs": rows,
    }


def show_row(row: dict) -> None:
    """One measurement as a line on stderr."""
    print(f"  {row['side']:<4} {row['revision'][:10]}  {row['dataset']:<16} {' '.join(row['overrides']):<28} "
          f"{row['median_seconds_per_epoch']:8.3f} s/epoch  (valid {row['median_valid_seconds']} s, "
          f"peak {row['peak_rss_mib']:.0f} MiB, {row['epochs']} epochs)", file=sys.stderr, flush=True)


def main_guard(run: Callable[[], None]) -> None:
    """Run ``run``; a BenchError becomes one line on stderr and exit 2, Ctrl-C exit 130."""
    exit_on_signals()
    try:
        run()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
