"""``cml tune``: the search-space parser, a study that continues where it stopped (also after
``kill -9``), the best.toml round trip, and bad input. Tiny data, item-kNN (one epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="Optuna is not installed (optional extra: pip install 'cml-cli[tune]')")

from cml_cli.config import load_toml, resolve_config  # noqa: E402
from cml_cli.errors import InputError  # noqa: E402
from cml_cli.tune import TuneOptions, default_space_file, load_space, parse_space, run_tune  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from cml_cli.data.preprocess import preprocess

    path = tmp_path_factory.mktemp("tune") / "data"
    preprocess("synthetic", data_dir=path)
    return path


def _cml(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("cml")
    env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


# --------------------------------------------------------------------------- the space


def test_space_parser_reads_every_kind():
    params = parse_space({"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                          "layers": {"type": "int", "low": 1, "high": 4},
                          "dim": {"type": "categorical", "choices": [16, 64]},
                          "knn_shrink": {"type": "float", "low": 0, "high": 10, "step": 0.5}}, "s.toml")
    by = {p.name: p for p in params}
    assert by["lr"].log and by["lr"].low == 1e-4 and by["layers"].type == "int"
    assert by["dim"].choices == (16, 64) and by["knn_shrink"].step == 0.5


@pytest.mark.parametrize("space, message", [
    ({}, "empty search space"),
    ({"bogus": {"type": "float", "low": 0, "high": 1}}, "not a RunConfig key"),
    ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "low < high"),
    ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log = true needs low > 0"),
    ({"lr": {"type": "gaussian", "low": 0, "high": 1}}, "type must be one of"),
    ({"lr": {"type": "float", "low": "a", "high": 1}}, "finite numbers"),
    ({"layers": {"type": "int", "low": 1.5, "high": 3}}, "must be integers"),
    ({"dim": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"dim": {"type": "categorical", "choices": ["x"]}}, "expected an integer"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "mean": 3}}, "unknown field"),
    ({"seed": {"type": "int", "low": 0, "high": 9}}, "cannot be searched"),
    ({"lr": 0.1}, "must be a table"),
])
def test_space_parser_refuses_bad_spaces(space, message):
    with pytest.raises(InputError, match=message):
        parse_space(space, "s.toml")


def test_space_and_set_may_not_both_fix_a_key():
    with pytest.raises(InputError, match="also fixed with --set"):
        parse_space({"lr": {"type": "float", "low": 0.1, "high": 1}}, "s.toml", {"lr": "0.5"})


def test_every_model_has_a_valid_default_space():
    from cml_cli import registry

    for model in registry.names():
        if model == "popularity":  # nothing to tune
            continue
        path, params = load_space(None, model)
        assert path == default_space_file(model) and params
        assert (REPO / "experiments" / "search" / f"{model}.toml").read_text() == path.read_text()


# --------------------------------------------------------------------------- studies


def test_study_continues_and_best_toml_round_trips(data_dir, tmp_path):
    runs = tmp_path / "runs"
    first = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=3), name="t", runs_dir=runs, data_dir=data_dir)
    assert first["trials"] == 3
    for n in range(3):
        trial = runs / "t" / f"trial-{n}"
        final = json.loads((trial / "metrics.json").read_text())
        assert final["test"] == {} and "not evaluated" in final["test_selection"]  # no test metric for a trial
    again = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=3), name="t", runs_dir=runs, data_dir=data_dir)
    assert again["trials"] == 6 and again["best_value"] >= first["best_value"]
    same = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=None, until=6), name="t", runs_dir=runs, data_dir=data_dir)
    assert same["trials"] == 6 and same["best_params"] == again["best_params"]  # --until: nothing more to run
    best = load_toml(Path(again["best_config"]))
    assert best["model"] == "itemknn-merged" and set(again["best_params"]) <= set(best)
    cfg = resolve_config("default", Path(again["best_config"]))
    assert cfg.model == "itemknn-merged" and cfg.knn_k == again["best_params"]["knn_k"]
    assert again["test"]["hr@10"] > 0 and "full" in again["test"]
    assert again["default_value"] == first["default_value"] and "best_below_default" in again  # reused


def test_killed_study_loses_at_most_the_running_trial(data_dir, tmp_path):
    """kill -9 during a trial; the next invocation marks it failed and continues."""
    argv = ["tune", "--dataset", "synthetic", "--data-dir", data_dir, "--model", "bpr-mf", "--trials", "2",
            "--name", "k", "--set", "epochs=100", "--set", "patience=0", "--no-prune", "--json"]  # trials outlast the kill
    script = Path(sys.executable).with_name("cml")
    proc = subprocess.Popen([str(script), *map(str, argv)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    second = tmp_path / "runs" / "k" / "trial-1" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not second.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.is_file(), "the second trial never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _cml(*argv, "--trials", "1", cwd=tmp_path)  # later options win: one more trial
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["trials"] == 2 and result["failed"] == 1  # trial 0 kept, trial 1 lost, trial 2 new


def test_parallel_jobs_run_exactly_the_trials_asked(data_dir, tmp_path):
    proc = _cml("tune", "--dataset", "synthetic", "--data-dir", data_dir, "--model", "itemknn-merged", "--trials",
                "3", "--jobs", "2", "--name", "p", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["trials"] == 3
    assert len(list((tmp_path / "runs" / "p").glob("trial-*"))) == 3
    params = {tuple(line for line in (run / "config.toml").read_text().splitlines() if line.startswith("knn_"))
              for run in (tmp_path / "runs" / "p").glob("trial-*")}
    assert len(params) == 3, "parallel workers drew the same parameters"


def test_result_says_when_the_best_trial_is_below_the_default_configuration(data_dir, tmp_path):
    """One neighbour per item is all this space allows: worse than item-kNN's default (every
    neighbour). The result says so (a JSON key and a line), and progress reaches stderr with --json."""
    space = tmp_path / "one.toml"
    space.write_text('[knn_k]\ntype = "categorical"\nchoices = [1]\n')
    proc = _cml("tune", "--dataset", "synthetic", "--data-dir", data_dir, "--model", "itemknn-merged", "--trials", "1",
                "--space", space, "--name", "below", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["best_below_default"] is True and result["default_value"] > result["best_value"]
    assert result["default_run"] == "runs/below/default" and result["best_run"] == "runs/below/best"  # relative
    default = json.loads((tmp_path / "runs" / "below" / "default" / "metrics.json").read_text())
    assert default["test"] == {} and default["valid"]["ndcg@10"] == pytest.approx(result["default_value"])
    assert "trial 0 complete" in proc.stderr and "default configuration: valid NDCG@10" in proc.stderr
    assert "scores below the model's default configuration" in proc.stderr
    assert "below the model's default configuration" in (tmp_path / "runs" / "below" / "best.toml").read_text()


def test_trial_draws_depend_on_the_trial_number_only():
    """Two workers, or a second invocation, must not repeat the first trials' random draws."""
    import optuna

    from cml_cli.tune.sampler import TrialSeededTPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def draws(storage, n, asks_at_once=1):
        out = []
        for _ in range(n // asks_at_once):
            studies = [optuna.load_study(study_name="s", storage=storage, sampler=TrialSeededTPESampler(7))
                       for _ in range(asks_at_once)]  # one per "worker", each with a fresh sampler
            trials = [study.ask() for study in studies]
            for study, trial in zip(studies, trials):
                x = trial.suggest_float("x", 0.0, 1.0)
                study.tell(trial, x)
                out.append(x)
        return out

    def fresh():
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(study_name="s", storage=storage)
        return storage

    one_by_one, two_at_once = draws(fresh(), 6), draws(fresh(), 6, asks_at_once=2)
    assert len(set(one_by_one)) == 6 and len(set(two_at_once)) == 6
    assert one_by_one == two_at_once


@pytest.mark.parametrize("extra, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "cml", "--set", "bogus=1"], "unknown option 'bogus'"),
    (["--model", "cml", "--storage", "sqlite:////nonexistent/dir/s.db"], "cannot open the study storage"),
    (["--model", "cml", "--storage", "nosuchdb://host/x"], "--storage"),
    (["--model", "cml", "--space", "EMPTY"], "empty search space"),
    (["--model", "cml", "--space", "BAD"], "not a RunConfig key"),
    (["--model", "cml", "--trials", "0"], "--trials"),
])
def test_bad_input_exits_2_with_one_line(data_dir, tmp_path, extra, message):
    (tmp_path / "empty.toml").write_text("")
    (tmp_path / "bad.toml").write_text('[not_a_key]\ntype = "int"\nlow = 1\nhigh = 2\n')
    extra = [{"EMPTY": tmp_path / "empty.toml", "BAD": tmp_path / "bad.toml"}.get(x, x) for x in extra]
    proc = _cml("tune", "--dataset", "synthetic", "--data-dir", data_dir, *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_an_error_raised_while_handling_ctrl_c_stops_the_study():
    """Ctrl-C inside Optuna's journal lock surfaced as FileNotFoundError (its cleanup removing a
    file it never made): the study must stop, not record a failed trial and go on."""
    from cml_cli.tune.study import _caused_by_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise FileNotFoundError(2, "No such file or directory", "study.journal.lock.rename")  # noqa: B904
    except FileNotFoundError as e:
        assert _caused_by_interrupt(e)
    assert not _caused_by_interrupt(ValueError("a plain failure"))
