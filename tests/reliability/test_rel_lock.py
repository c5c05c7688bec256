"""Two ``cml train`` processes on one run directory: the second refuses with a clear message
and changes nothing (``--force`` and ``--resume --epochs`` included); the first finishes with
exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from conftest import assert_clean_error, read_log, resume_argv, strip_timing, train_argv


def snapshot(run: Path) -> dict[str, tuple[int, str]]:
    """Every file of the run with its mtime and content hash."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_second_process_refuses_and_changes_nothing(children, cml, data_dir, reference, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "busy"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = children.start(train_argv(data_dir, runs, "busy"),
                           {"pause": {"epoch": 2, "ready": str(ready), "go": str(go)}})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), "the first run did not reach epoch 2"
        pid = ready.read_text()
        before = snapshot(run)

        # In another process: --force while it trains.
        forced = children.run(train_argv(data_dir, runs, "busy", "--force"))
        assert forced.exitcode == 2, forced.stderr
        assert "another cml process" in forced.stderr and f"pid {pid}" in forced.stderr
        assert "Traceback" not in forced.stderr and forced.stdout == ""

        # In this process (a separate open file description, so flock conflicts as well).
        # Without --force too: the error names the process using the run (issue 12, row 11).
        assert_clean_error(cml(*train_argv(data_dir, runs, "busy")), 2, "another cml process", f"pid {pid}")
        assert_clean_error(cml(*train_argv(data_dir, runs, "busy", "--force")), 2, "another cml process",
                           "nothing was changed")
        assert_clean_error(cml(*resume_argv(data_dir, run)), 2, "another cml process")
        assert_clean_error(cml(*resume_argv(data_dir, run, "--epochs", "9")), 2, "another cml process")
        assert snapshot(run) == before
        assert first.is_alive()
    finally:
        go.write_text("go")
    done = children.wait(first)
    assert done.exitcode == 0, done.stderr
    assert strip_timing(done.json()) == reference["result"]
    assert read_log(run) == reference["log"]
    assert 'epochs = 4' in (run / "config.toml").read_text()


def test_two_fresh_runs_started_together_one_wins(children, data_dir, reference, tmp_path):
    """Started at the same moment on a new directory: exactly one trains, the other refuses."""
    runs = tmp_path / "runs"
    ready, go = tmp_path / "ready", tmp_path / "go"
    pause = {"pause": {"epoch": 1, "ready": str(ready), "go": str(go)}}
    a = children.start(train_argv(data_dir, runs, "race"), pause)
    b = children.start(train_argv(data_dir, runs, "race"), pause)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and (a.is_alive() or b.is_alive()):
            time.sleep(0.01)
    finally:
        go.write_text("go")
    ra, rb = children.wait(a), children.wait(b)
    codes = sorted([ra.exitcode, rb.exitcode])
    assert codes == [0, 2], (ra.stderr, rb.stderr)
    loser = ra if ra.exitcode == 2 else rb
    winner = rb if loser is ra else ra
    assert "another cml process" in loser.stderr or "run directory exists" in loser.stderr
    assert strip_timing(winner.json()) == reference["result"]
    assert read_log(runs / "race") == reference["log"]
