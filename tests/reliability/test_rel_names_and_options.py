"""Nothing lost, nothing outside (issue 12): run and dataset names, the scope of ``--force``,
stale temporaries, conflicting and empty options, and what ``evaluate`` says about the
checkpoint and dataset it used. Every CLI row runs the installed ``cml`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SETTINGS, installed, train_argv


def clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1, proc.stderr
    flat = " ".join(proc.stderr.split())
    for needle in needles:
        assert needle in flat, (needle, proc.stderr)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def runs(tmp_path) -> Path:
    """A runs directory holding someone's file and a finished-looking foreign folder."""
    root = tmp_path / "R"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "notes.txt").write_text("mine")
    (root / "other.txt").write_text("also mine")
    return root


# ------------------------------------------------------------------ rows 1-3: names and --force


@pytest.mark.parametrize("name", [".", "..", "../escaped", "a/b", "/abs", ""])
def test_run_names_are_one_path_component(data_dir, runs, name):
    before = tree(runs.parent)
    clean_error(installed(*train_argv(data_dir, runs, name, "--force")), "--name", "not a valid name")
    assert tree(runs.parent) == before  # nothing deleted, nothing written outside R (or inside)


def test_force_replaces_only_run_directories(data_dir, runs):
    clean_error(installed(*train_argv(data_dir, runs, "keep", "--force")), "not a run directory",
                "nothing was changed")
    assert (runs / "keep" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", [".", "..", "/tmp/abs-name", "x/y"])
def test_dataset_names_are_one_path_component(tmp_path, name):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("x")
    before = tree(tmp_path)
    clean_error(installed("preprocess", "--dataset", "synthetic", "--name", name, "--data-dir", data),
                "--name", "not a valid name")
    assert tree(tmp_path) == before and sorted(os.listdir(data)) == ["mine.txt"]  # no .old, no .tmp


# ------------------------------------------------------------------ row 5: evaluate checks the dataset


def test_evaluate_refuses_a_dataset_preprocessed_again(tmp_path, children):
    data = tmp_path / "data"
    assert installed("preprocess", "--dataset", "synthetic", "--data-dir", data).returncode == 0
    run = tmp_path / "runs" / "r"
    child = children.run(train_argv(data, tmp_path / "runs", "r"))
    assert child.exitcode == 0, child.stderr
    assert installed("evaluate", run, "--json").returncode == 0
    assert installed("preprocess", "--dataset", "synthetic", "--data-dir", data, "--seed", "1").returncode == 0
    clean_error(installed("evaluate", run), "dataset changed since the run was trained")


# ------------------------------------------------------------------ row 6: stale temporaries


def test_killed_preprocess_leaves_a_temporary_the_next_one_removes(tmp_path, children):
    data = tmp_path / "data"
    child = children.run(["preprocess", "--dataset", "synthetic", "--name", "kk", "--data-dir", data],
                         {"kill_preprocess": True})
    assert child.exitcode == -9
    stale = [p for p in data.iterdir() if p.name.startswith(".kk.")]
    assert len(stale) == 1 and stale[0].name.endswith(".tmp") and (stale[0] / "arrays.npz").is_file()
    live = data / f".kk.{os.getpid()}.abc123.tmp"  # a preprocess still running (this process)
    live.mkdir()
    listed = installed("datasets", "--data-dir", data, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"datasets": []}
    assert not stale[0].exists() and live.is_dir()
    shutil.rmtree(live)
    child = children.run(["preprocess", "--dataset", "synthetic", "--name", "kk", "--data-dir", data],
                         {"kill_preprocess": True})
    assert child.exitcode == -9
    assert installed("preprocess", "--dataset", "synthetic", "--name", "kk", "--data-dir", data).returncode == 0
    assert sorted(os.listdir(data)) == ["kk"]


# ------------------------------------------------------------------ row 7: non-finite floats


@pytest.mark.parametrize("setting", ["lr=nan", "beta=nan", "reg=inf", "max_lr=-inf", "meta_lr=NaN", "clip=nan"])
def test_non_finite_floats_are_refused(data_dir, tmp_path, setting):
    clean_error(installed(*train_argv(data_dir, tmp_path / "runs", "nf", "--set", setting)),
                setting.split("=")[0], "must be a finite number")
    assert not (tmp_path / "runs" / "nf").exists()


# ------------------------------------------------------------------ rows 8, 12: bad and conflicting options


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run (through the installed entry point)."""
    root = tmp_path_factory.mktemp("finished")
    assert installed("preprocess", "--dataset", "synthetic", "--data-dir", root / "data").returncode == 0
    proc = installed("train", "-d", "synthetic", "--data-dir", root / "data", "--runs-dir", root / "runs",
                     "--name", "done", *SETTINGS[:-2], "--set", "epochs=1", "-q")
    assert proc.returncode == 0, proc.stderr
    return root / "runs" / "done"


@pytest.mark.parametrize("ks", ["0", "-1", ",", "1,x", "10,0"])
def test_bad_cutoffs_are_refused(finished, ks):
    clean_error(installed("evaluate", finished, "--ks", ks), "--ks")


@pytest.mark.parametrize("extra", [["--dataset", "other"], ["--force"], ["--set", "lr=1"], ["--seed", "3"],
                                   ["--preset", "tmall"], ["--name", "x"]])
def test_resume_refuses_options_it_would_ignore(finished, extra):
    before = tree(finished)
    clean_error(installed("train", "--resume", finished, *extra), "--resume: cannot be combined with", extra[0])
    assert tree(finished) == before


@pytest.mark.parametrize("value", [",,,", " , ", ""])
def test_empty_behavior_lists_are_refused(tmp_path, value):
    clean_error(installed("preprocess", "--dataset", "synthetic", "--behaviors", value, "--data-dir", tmp_path / "d"),
                "--behaviors", "names nothing")


# ------------------------------------------------------------------ rows 9-11: crashes, foreign dirs, busy runs


def test_crash_before_the_first_epoch_leaves_nothing(data_dir, tmp_path, children):
    """A run that fails in its first epoch is removed, so the same command can run again."""
    runs = tmp_path / "runs"
    child = children.run(train_argv(data_dir, runs, "c"), {"nan": {"epoch": 1, "batch": 1}})
    assert child.exitcode == 1 and "nothing was kept" in " ".join(child.stderr.split())
    assert not (runs / "c").exists()
    again = children.run(train_argv(data_dir, runs, "c"))
    assert again.exitcode == 0, again.stderr


def test_resume_of_a_foreign_directory_writes_nothing(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"\xff\xd8")
    clean_error(installed("train", "--resume", foreign), "not a run directory")
    assert sorted(os.listdir(foreign)) == ["a.jpg"]  # no .lock left behind
    clean_error(installed("train", "--resume", tmp_path / "missing"), "no such run directory")


def test_plain_train_on_a_busy_run_names_the_pid(data_dir, tmp_path, children):
    runs = tmp_path / "runs"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = children.start(train_argv(data_dir, runs, "busy"),
                           {"pause": {"epoch": 1, "ready": str(ready), "go": str(go)}})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists()
        clean_error(installed(*train_argv(data_dir, runs, "busy")), "another cml process",
                    f"pid {ready.read_text()}")
    finally:
        go.write_text("go")
    assert children.wait(first).exitcode == 0


# ------------------------------------------------------------------ row 13: which checkpoint


def test_evaluate_says_which_checkpoint_it_used(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "checkpoints" / "best.ckpt").unlink()
    proc = installed("evaluate", copy, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["checkpoint"] == "best" and result["checkpoint_used"].endswith("last.ckpt")
    assert "best.ckpt does not exist; evaluating" in proc.stderr and "last.ckpt" in proc.stderr
    proc = installed("evaluate", finished, "--json")
    assert json.loads(proc.stdout)["checkpoint_used"].endswith("best.ckpt")


def test_force_replaces_a_finished_run(data_dir, finished, tmp_path):
    """--force on a run directory that no process uses: the old run is replaced."""
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs / "done")
    (runs / "done" / "metrics.json").unlink()
    proc = installed("train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "done",
                     *SETTINGS[:-2], "--set", "epochs=1", "-q", "--force", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs_run"] == 1 and (runs / "done" / "metrics.json").is_file()
