"""Kill -9 at many points of a training, then ``cml train --resume``: the run ends with exactly
the metrics (final and per epoch) of an uninterrupted run with the same seed, and no
checkpoint under its final name is ever half-written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    all_checkpoints_complete,
    no_temporaries,
    read_log,
    resume_argv,
    strip_timing,
    train_argv,
)

# One run, killed again and again, each time at a different point; resumed after each kill.
CHAIN = [
    {"target": "best", "epoch": 1, "phase": "partial"},  # half of best.ckpt in its temporary file
    {"target": "last", "epoch": 1, "phase": "before_rename"},  # last.ckpt complete, fsynced, not renamed
    {"target": "last", "epoch": 2, "phase": "before"},  # last.ckpt rotated to previous.ckpt, no new one
    {"target": "last", "epoch": 2, "phase": "partial"},  # half-written temporary, previous.ckpt only
    {"target": "log", "epoch": 2, "phase": "partial"},  # half a line appended to metrics.jsonl
    "random",  # SIGKILL from outside at a random moment of epoch 3
    {"target": "last", "epoch": 3, "phase": "after"},  # checkpoint written, metrics.jsonl not yet
    {"target": "final"},  # metrics.json in its temporary file, not renamed
]


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _last_epoch(run: Path) -> int:
    from cml_cli.train.checkpoint import load_checkpoint

    for name in ("last.ckpt", "previous.ckpt"):
        path = run / "checkpoints" / name
        if path.is_file():
            return load_checkpoint(path)["loop"]["epoch"]
    return 0


def _kill_at_random(children, argv, run: Path, rng: random.Random, span: float) -> tuple[int, float]:
    """Start ``argv`` and SIGKILL it a random time (up to ``span`` s) after it took the run's lock."""
    p = children.start(argv)
    deadline = time.monotonic() + 120
    while p.is_alive() and time.monotonic() < deadline:
        try:
            if (run / ".lock").read_text().strip() == str(p.pid):
                break
        except OSError:
            pass
        time.sleep(0.005)
    delay = rng.uniform(0.0, span)
    time.sleep(delay)
    p.kill()
    p.join()
    return p.exitcode, delay


def test_kill_chain_then_resume_equals_uninterrupted(children, data_dir, reference, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "chain"
    rng = random.Random(20240605)
    span = 1.5 * reference["epoch_seconds"]
    for k, point in enumerate(CHAIN):
        argv = train_argv(data_dir, runs, "chain") if k == 0 else resume_argv(data_dir, run)
        if point == "random":
            code, delay = _kill_at_random(children, argv, run, rng, span)
            assert code in (-signal.SIGKILL, 0), delay
        else:
            if point.get("epoch") is not None and _last_epoch(run) >= point["epoch"]:
                continue  # a random kill landed later than this point
            child = children.run(argv, {"kill": point})
            assert child.exitcode == -signal.SIGKILL, f"kill point {point} was never reached: {child.stderr}"
        # No checkpoint under its final name is ever half-written.
        all_checkpoints_complete(run)
        assert not (run / "metrics.json").exists() or code == 0
    child = children.run(resume_argv(data_dir, run))
    assert child.exitcode == 0, child.stderr
    assert strip_timing(child.json()) == reference["result"]
    assert read_log(run) == reference["log"]
    assert strip_timing(json.loads((run / "metrics.json").read_text())) == reference["result"]
    assert no_temporaries(run), sorted(p.name for p in run.rglob("*.tmp"))
    assert sorted(all_checkpoints_complete(run)) == ["best.ckpt", "last.ckpt", "previous.ckpt"]


def test_resume_of_a_finished_run_changes_nothing(children, data_dir, reference):
    """Resuming a complete run recomputes nothing and returns the same metrics."""
    run = reference["run"]
    log_before = (run / "metrics.jsonl").read_text()
    child = children.run(resume_argv(data_dir, run))
    assert child.exitcode == 0, child.stderr
    assert strip_timing(child.json()) == reference["result"]
    assert (run / "metrics.jsonl").read_text() == log_before


def test_kill_real_cml_process_at_random_time_then_cli_resume(data_dir, reference, tmp_path):
    """The real ``cml`` executable, SIGKILLed from outside at a random moment, resumed by
    ``cml train --resume`` in a new process."""
    runs = tmp_path / "runs"
    run = runs / "cli"
    env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as in the reference run
    cmd = [sys.executable, "-m", "cml_cli"]
    argv = [str(a) for a in train_argv(data_dir, runs, "cli")]
    rng = random.Random()
    p = subprocess.Popen([*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while p.poll() is None and _lines(run / "metrics.jsonl") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    delay = rng.uniform(0.0, 1.5 * reference["epoch_seconds"])  # 3 of 4 epochs are left
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL and not (run / "metrics.json").exists(), "finished before the kill"
    all_checkpoints_complete(run)
    done = subprocess.run([*cmd, *map(str, resume_argv(data_dir, run))], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, (delay, done.stderr)
    assert strip_timing(json.loads(done.stdout)) == reference["result"], f"killed after {delay:.2f}s"
    assert read_log(run) == reference["log"]
    assert no_temporaries(run)

