"""The benchmark helpers (ratios, the temporary base checkout, recording), the synthetic
generator's size parameter and the thread budget. Nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cml_cli import threads
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.data.readers import synthetic
from cml_cli.errors import InputError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402
import bench_threads  # noqa: E402
import bench_train  # noqa: E402
import sidebyside as sbs  # noqa: E402


def _row(side: str, seconds: list[float]) -> dict:
    return {"side": side, "seconds_per_epoch": seconds, "median_seconds_per_epoch": sbs.median(sbs.after_first(seconds))}


# --------------------------------------------------------------------------- ratios


def test_median_and_first_epoch_dropped():
    assert sbs.median([3.0, 1.0, 2.0]) == 2.0
    assert sbs.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert sbs.after_first([9.0, 1.0, 2.0]) == [1.0, 2.0]
    assert sbs.after_first([9.0]) == [9.0]  # one epoch: it is all there is
    with pytest.raises(ValueError):
        sbs.median([])


def test_speedup_is_base_over_new_pooled_and_per_round():
    rows = {"base": [_row("base", [50.0, 10.0, 12.0]), _row("base", [40.0, 11.0, 9.0])],
            "new": [_row("new", [20.0, 2.0, 2.0]), _row("new", [20.0, 2.5, 2.5])]}
    out = sbs.compare(rows)
    assert out["base_seconds_per_epoch"] == pytest.approx(10.5)  # median of 10, 12, 11, 9: warm-ups dropped
    assert out["new_seconds_per_epoch"] == pytest.approx(2.25)
    assert out["speedup"] == pytest.approx(10.5 / 2.25, abs=1e-3)
    assert out["speedup_per_round"] == [pytest.approx(11 / 2), pytest.approx(10 / 2.5)]
    assert sbs.goals(out, min_speedup=5.0, max_seconds=2.0) == {"speedup >= 5.0": False, "new <= 2.0 s/epoch": False}
    assert sbs.goals(out, min_speedup=4.5) == {"speedup >= 4.5": True}
    alone = sbs.compare({"new": rows["new"]})
    assert "speedup" not in alone and sbs.goals(alone, min_speedup=5.0) == {}


def test_growth_per_doubling():
    points = [{"size": "1M", "interactions": 1_000_000, "seconds_per_epoch": 2.0},
              {"size": "2M", "interactions": 2_000_000, "seconds_per_epoch": 9.0},
              {"size": "4M", "interactions": 4_000_000, "seconds_per_epoch": 19.0}]
    out = bench_scale.growth(points, 2.2)
    assert [g["time_ratio"] for g in out] == [4.5, pytest.approx(2.111, abs=1e-3)]
    assert [g["data_ratio"] for g in out] == [2.0, 2.0]
    assert [g["meets_target"] for g in out] == [False, True]
    assert bench_scale.dataset_name("9.2M") == "synthetic-9.2m"


def test_record_merges_cases_atomically(tmp_path):
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"command": "old format", "results": []}))
    sbs.record({"a": {"x": 1}}, path)
    sbs.record({"b": {"x": 2}}, path)
    sbs.record({"a": {"x": 3}}, path)
    assert json.loads(path.read_text()) == {"cases": {"a": {"x": 3}, "b": {"x": 2}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.json"]


def test_recorded_entry_names_no_machine_path():
    pair = [sbs.Side("base", Path("/tmp/cml-bench-base-x/tree"), "a" * 40), sbs.Side("new", sbs.ROOT, "b" * 40)]
    out = sbs.entry(pair, ["python", "benchmarks/bench_train.py", "--data-dir", str(sbs.ROOT / "data")], {}, {"s": 1}, {})
    assert out["command"] == "python benchmarks/bench_train.py --data-dir data"
    assert out["revisions"] == {"base": "a" * 40, "new": "b" * 40} and out["summary"] == {"s": 1}
    assert set(out["state_after"]) == {"loadavg", "cores", "thread_env"}


def test_bad_options_are_one_line_errors():
    with pytest.raises(sbs.BenchError, match="unknown case") as e:
        bench_train.parse(["--cases", "retailrocket,nope"])
    assert e.value.code == 2
    assert bench_train.parse(["--cases", "tmall, graphs"]).cases == ["tmall", "graphs"]
    assert bench_threads.parse_setting("new:CML_THREADS=1+OMP_WAIT_POLICY=ACTIVE") == (
        "new", {"CML_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    for bad in ("old", "new:CML_THREADS"):
        with pytest.raises(sbs.BenchError):
            bench_threads.parse_setting(bad)
    with pytest.raises(sbs.BenchError, match="--sides"), sbs.sides(["new", "other"], "HEAD"):
        pass


# --------------------------------------------------------------------------- the base checkout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with two commits of ``f.txt`` ("one", then "two")."""
    root = tmp_path / "repo"
    root.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for text in ("one", "two"):
        (root / "f.txt").write_text(text)
        subprocess.run(["git", "add", "f.txt"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-q", "-m", text], cwd=root, check=True, env=env)
    return root


def _worktrees(repo: Path) -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=repo, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


def test_checkout_is_the_revision_and_is_removed(repo):
    with sbs.checkout("HEAD~1", repo) as side:
        assert (side.root / "f.txt").read_text() == "one"
        assert side.label == "base" and len(side.revision) == 40
        (side.root / "__pycache__").mkdir()  # what a run leaves behind goes too
        assert len(_worktrees(repo)) == 2
    assert not side.root.exists() and not side.root.parent.exists()
    assert len(_worktrees(repo)) == 1


def test_checkout_is_removed_after_an_error_or_ctrl_c(repo):
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc), sbs.checkout("HEAD", repo) as side:
            raise exc()
        assert not side.root.parent.exists() and len(_worktrees(repo)) == 1


def test_checkout_is_removed_when_the_benchmark_is_terminated(repo):
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import sidebyside as s; s.exit_on_signals()\n"
            "with s.checkout('HEAD', __import__('pathlib').Path(sys.argv[2])) as side:\n"
            "    print(side.root, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(BENCH), str(repo)], stdout=subprocess.PIPE, text=True)
    root = Path(proc.stdout.readline().strip())
    assert (root / "f.txt").is_file()
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + 15
    assert not root.parent.exists() and len(_worktrees(repo)) == 1


def test_unknown_base_revision_is_bad_input(repo):
    with pytest.raises(sbs.BenchError, match="--base") as e, sbs.checkout("no-such-rev", repo):
        pass
    assert e.value.code == 2


# --------------------------------------------------------------------------- synthetic sizes


def test_synthetic_size_counts():
    assert synthetic.shape("tmall") == synthetic.SIZES["tmall"]
    users, items, views = synthetic.shape("2M")
    assert users == round(2e6 / synthetic.PER_USER) and views == synthetic.SIZES["tmall"][2]
    assert synthetic.shape("2000k") == synthetic.shape("2_000_000") == synthetic.shape("2m") == (users, items, views)
    assert synthetic.shape("8M")[1] == pytest.approx(2 * items, rel=0.01)  # items grow as sqrt(users)
    for bad in ("big", "", "1.5x", "5k", "100M", "nan"):
        with pytest.raises(InputError, match="--size"):
            synthetic.shape(bad)


def test_synthetic_size_gives_about_the_requested_count(tmp_path):
    _, ds = preprocess("synthetic", None, ReadOptions(size="30k"), data_dir=tmp_path)
    total = sum(len(ds.train[b]) for b in ds.behaviors)
    assert 0.85 * 30_000 <= total <= 1.15 * 30_000
    assert ds.behaviors == synthetic.BEHAVIORS
    counts = [len(ds.train[b]) for b in ds.behaviors]  # view >> cart, fav >> buy
    assert counts[0] > 5 * max(counts[1:])


# --------------------------------------------------------------------------- threads


def test_thread_budget(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.budget() == threads.cores()
    monkeypatch.setenv(threads.ENV, "6")
    assert threads.budget() == 6 and threads.per_worker(4) == 1 and threads.per_worker(2) == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(threads.ENV, bad)
        with pytest.raises(InputError, match="CML_THREADS"):
            threads.budget()


def test_worker_environment_limits_every_pool():
    env = threads.environment(2, {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "8"})
    assert {k: env[k] for k in ("CML_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")} == {
        "CML_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["PATH"] == "/bin"
    mine = threads.environment(None, {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"})
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}  # the user's choice stays


def test_a_worker_process_uses_its_share():
    code = "import torch; print(torch.get_num_threads())"
    env = threads.environment(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
