"""Ctrl-C and killed parents (issue 16, rows 1 and 8).

Row 1: SIGINT to each long-running command through the installed entry point, as soon as the
command is under way: exit 130, one line that says what stopped and how to go on, the last
complete checkpoint kept, nothing half-written, never a traceback (Optuna's included).
Row 8: the workers of ``cml ablate --jobs 2`` die with a parent killed with ``kill -9``, and an
immediate rerun resumes their runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import all_checkpoints_complete, no_temporaries, resume_argv, start_installed

#: A CML run on the tiny dataset long enough to be interrupted (it never gets that far).
LONG = ["--set", "epochs=200", "--set", "batch=256", "--set", "eval_batch=512"]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    """Is ``pid`` a running process (a zombie is not)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def interrupt(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300,
              sig: int = signal.SIGINT) -> tuple[int, str]:
    """Wait until ``ready()``, send ``sig``, return the exit code and stderr."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None or not ready():
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the command was not under way in time (exit {proc.returncode}): {err[-2000:]}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def stopped_line(err: str) -> str:
    """The one ``interrupted:`` line, last on stderr; no traceback."""
    assert "Traceback" not in err and "Trial" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("interrupted:")] == lines[-1:], err
    return " ".join(lines[-1].split())


def test_ctrl_c_during_train_keeps_the_last_checkpoint(children, data_dir, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "r"
    proc = start_installed("train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "r",
                           *LONG, "--device", "cpu", "-q")
    code, err = interrupt(proc, lambda: (run / "checkpoints" / "last.ckpt").is_file())
    assert code == 130, err
    line = stopped_line(err)
    assert f"training of {run} stopped" in line and f"cml train --resume {run}" in line, line
    assert "last.ckpt" in all_checkpoints_complete(run) and no_temporaries(run)
    assert not (run / "metrics.json").exists()
    resumed = children.run(resume_argv(data_dir, run, "--epochs", "2"))  # and it continues from there
    assert resumed.exitcode == 0, resumed.stderr
    assert resumed.json()["epochs_run"] >= 1


def test_sigterm_stops_train_as_ctrl_c_does(data_dir, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "r"
    proc = start_installed("train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "r",
                           *LONG, "--device", "cpu", "-q")
    code, err = interrupt(proc, lambda: (run / "checkpoints" / "last.ckpt").is_file(), sig=signal.SIGTERM)
    assert code == 130, err
    assert f"cml train --resume {run}" in stopped_line(err)
    assert "last.ckpt" in all_checkpoints_complete(run) and no_temporaries(run)


def test_ctrl_c_during_preprocess_changes_nothing(tmp_path):
    from cml_cli.data.preprocess import ReadOptions, preprocess

    data = tmp_path / "data"
    preprocess("synthetic", None, ReadOptions(size="tiny"), name="s", data_dir=data)
    before = {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    proc = start_installed("preprocess", "--dataset", "synthetic", "--size", "medium", "--name", "s",
                           "--data-dir", data)
    code, err = interrupt(proc, lambda: _cpu_seconds(proc.pid) > 1.0)  # imported, generating the data
    assert code == 130, err
    line = stopped_line(err)
    assert f"preprocess of {data / 's'} stopped" in line and "run the same command again" in line, line
    after = {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    assert after == before and sorted(os.listdir(data)) == ["s"]  # the old dataset as it was, no temporary


def test_ctrl_c_during_ablate(data_dir, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "g" / "cml-s0"
    proc = start_installed("ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "g",
                           "--variants", "cml", "--seeds", "0", *LONG, "--set", "device=cpu")
    code, err = interrupt(proc, lambda: (run / "checkpoints" / "last.ckpt").is_file())
    assert code == 130, err
    line = stopped_line(err)
    assert f"ablation {runs.resolve() / 'g'} stopped" in line and "run the same command again" in line, line
    assert "last.ckpt" in all_checkpoints_complete(run) and no_temporaries(run)
    assert json.loads((runs / "g" / "grid.json").read_text())["variants"]["cml"]["runs"] == {"0": "cml-s0"}


def test_ctrl_c_during_tune(data_dir, tmp_path):
    optuna = pytest.importorskip("optuna")
    runs = tmp_path / "runs"
    trial = runs / "t" / "trial-0"
    proc = start_installed("tune", "--dataset", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--model",
                           "bpr-mf", "--trials", "3", "--name", "t", "--set", "epochs=200", "--no-prune")
    code, err = interrupt(proc, lambda: (trial / "checkpoints" / "last.ckpt").is_file())
    assert code == 130, err
    line = stopped_line(err)
    assert f"tune {runs.resolve() / 't'} stopped" in line and "run the same command again" in line, line
    journal = runs / "t" / "study.journal"
    assert all(json.loads(ln) for ln in journal.read_text().splitlines())  # every record whole
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="cml-tune", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(journal))))
    assert [t.state.name for t in study.trials] == ["FAIL"]  # the interrupted trial, marked so
    assert "last.ckpt" in all_checkpoints_complete(trial)


# ------------------------------------------------------------------ row 8: workers die with their parent


def test_lifeline_kills_a_worker_whose_parent_was_killed(tmp_path):
    """The mechanism both ``cml ablate --jobs`` and ``cml tune --jobs`` use, on its own."""
    pid_file = tmp_path / "worker.pid"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from cml_cli.lifeline import child_env
        worker = "from cml_cli.lifeline import die_with_parent; import os, time; die_with_parent(); " \\
                 "open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid())); " \\
                 "os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); time.sleep(120)"
        subprocess.Popen([sys.executable, "-c", worker], env=child_env(dict(os.environ)))
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    worker = int(pid_file.read_text())
    assert _alive(worker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker outlived its parent"


def test_ablate_workers_die_with_their_parent_and_a_rerun_resumes(children, data_dir, tmp_path):
    runs = tmp_path / "runs"
    argv = ["ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "g", "--variants",
            "cml,w/o-clf", "--seeds", "0", "--jobs", "2", "--set", "epochs=4", "--set", "batch=16",
            "--set", "device=cpu"]  # 57 batches per epoch: orphaned workers would train on for seconds
    grid = runs / "g"
    parent = children.start(argv)
    deadline = time.monotonic() + 240
    lasts = [grid / d / "checkpoints" / "last.ckpt" for d in ("cml-s0", "w-o-clf-s0")]
    while not all(p.is_file() for p in lasts) and parent.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(p.is_file() for p in lasts), "the runs did not get under way"
    workers = [int((grid / d / ".lock").read_text()) for d in ("cml-s0", "w-o-clf-s0")]
    parent.kill()
    parent.join()
    deadline = time.monotonic() + 3  # the kernel kills them at once; the getppid watch within a second
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers outlived their killed parent"
    rerun = children.run(argv)  # at once: nothing holds the runs any more
    assert rerun.exitcode == 0, rerun.stderr
    for d in ("cml-s0", "w-o-clf-s0"):
        assert json.loads((grid / d / "metrics.json").read_text())["epochs_run"] == 4
        assert f" resume {d} " in (grid / f"{d}.log").read_text()  # continued, not started over
