"""``--track tensorboard|mlflow``: what a run, a grid and a study log, read back with each
tool's own reader, in temporary directories (MLflow's default ``./mlruns`` store under the
test's working directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_cli import tracking
from cml_cli.ablate import GridOptions, run_grid
from cml_cli.cli import app
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.errors import InputError
from cml_cli.tracking import TensorBoardTracker, Tracking, tracked
from cml_cli.train.progress import NullProgress

SMALL = ["--set", "dim=8", "--set", "layers=1", "--set", "ks=10"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=data)
    return data


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory (MLflow's default store goes there); the MLflow variables of
    the environment do not leak in, nor the file-store opt-in out."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path


def _cml(*args: str) -> dict:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _mlflow_runs(workdir: Path, experiment: str):
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri((workdir / "mlruns").as_uri())
    return mlflow, mlflow.search_runs(experiment_names=[experiment])


def test_train_track_mlflow_logs_epochs_final_metrics_params_and_files(data_dir, workdir):
    pytest.importorskip("mlflow")
    result = _cml("train", "--dataset", "synthetic", "--data-dir", data_dir, "--set", "epochs=2", *SMALL, "--name",
                  "quick", "--track", "mlflow", "--quiet")
    mlflow, runs = _mlflow_runs(workdir, "cml")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "quick"
    assert run["metrics.final/test/hr_at_10"] == pytest.approx(result["test"]["hr@10"])
    assert run["metrics.final/test/full/hr_at_10"] == pytest.approx(result["test"]["full"]["hr@10"])
    assert run["params.epochs"] == "2" and run["params.dim"] == "8"
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run["run_id"], "valid/ndcg_at_10")
    rows = [json.loads(line) for line in (workdir / "runs" / "quick" / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in history] == [r["epoch"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["valid"]["ndcg@10"] for r in rows])
    assert [m.step for m in client.get_metric_history(run["run_id"], "train/loss")] == [1, 2]
    assert sorted(a.path for a in client.list_artifacts(run["run_id"])) == ["config.toml", "metrics.json"]


def test_resumed_run_continues_its_mlflow_run(data_dir, workdir):
    pytest.importorskip("mlflow")
    _cml("train", "--dataset", "synthetic", "--data-dir", data_dir, "--set", "epochs=1", *SMALL, "--name", "r",
         "--track", "mlflow", "--quiet")
    _cml("train", "--resume", "runs/r", "--epochs", "2", "--track", "mlflow", "--quiet")
    mlflow, runs = _mlflow_runs(workdir, "cml")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    history = mlflow.tracking.MlflowClient().get_metric_history(runs.iloc[0]["run_id"], "valid/ndcg_at_10")
    assert sorted(m.step for m in history) == [1, 2]


def test_train_track_tensorboard_writes_event_files_in_the_run_directory(data_dir, workdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _cml("train", "--dataset", "synthetic", "--data-dir", data_dir, "--set", "epochs=2", *SMALL, "--name",
                  "tb", "--track", "tensorboard", "--quiet")
    run = workdir / "runs" / "tb"
    assert list(run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run))
    events.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = events.Scalars("valid/ndcg_at_10")
    assert [e.step for e in valid] == [r["epoch"] for r in rows]
    assert [e.value for e in valid] == pytest.approx([r["valid"]["ndcg@10"] for r in rows])
    [final] = events.Scalars("final/test/hr_at_10")
    assert (final.step, final.value) == (result["best_epoch"], pytest.approx(result["test"]["hr@10"]))


def test_grid_is_one_experiment_with_a_run_per_variant_and_seed(data_dir, workdir):
    pytest.importorskip("mlflow")
    args = ["ablate", "--dataset", "synthetic", "--data-dir", data_dir, "--variants", "popularity,itemknn-merged",
            "--seeds", "0,1", "--set", "epochs=1", "--set", "dim=8", "--set", "ks=10", "--name", "g"]
    _cml(*args, "--track", "mlflow")
    _, runs = _mlflow_runs(workdir, "g")
    assert sorted(runs["tags.mlflow.runName"]) == ["itemknn-merged-s0", "itemknn-merged-s1", "popularity-s0", "popularity-s1"]
    assert set(runs["status"]) == {"FINISHED"} and runs["metrics.final/test/hr_at_10"].notna().all()
    again = run_grid("synthetic", GridOptions(["popularity", "itemknn-merged"], [0, 1], {"epochs": "1", "dim": "8", "ks": "10"}),
                     name="g",
                     runs_dir=Path("runs"), data_dir=data_dir)
    assert (again["executed"], again["reused"]) == (0, 4)  # tracking is no hyperparameter: every run reused


def test_study_is_one_experiment_with_a_run_per_trial(data_dir, workdir):
    pytest.importorskip("mlflow")
    pytest.importorskip("optuna")
    _cml("tune", "--dataset", "synthetic", "--data-dir", data_dir, "--model", "itemknn-merged", "--trials", "2",
         "--set", "ks=10", "--name", "study", "--track", "mlflow")
    _, runs = _mlflow_runs(workdir, "study")
    assert sorted(runs["tags.mlflow.runName"]) == ["best", "default", "trial-0", "trial-1"]
    by_name = runs.set_index("tags.mlflow.runName")
    for name in ("trial-0", "default"):  # a trial, and the default configuration it is compared with, never see test
        assert by_name.loc[name].filter(like="metrics.final/test/").isna().all()
    assert by_name.loc["best"]["metrics.final/test/hr_at_10"] >= 0


@pytest.mark.parametrize("backend, label", [("mlflow", "MLflow"), ("tensorboard", "TensorBoard")])
def test_missing_extra_is_one_line_exit_2_before_any_work(data_dir, workdir, monkeypatch, backend, label):
    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--data-dir", str(data_dir), "--track",
                                      backend, "--quiet"])
    assert isinstance(result.exception, InputError) and result.exception.exit_code == 2  # main(): one line, exit 2
    assert str(result.exception) == f"--track {backend} needs {label}: pip install 'cml-cli[{backend}]'"
    assert not (workdir / "runs").exists() and not (workdir / "mlruns").exists()


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="--track: 'wandb' is not one of tensorboard, mlflow"):
        Tracking("wandb").check()


def test_run_failing_before_its_first_epoch_leaves_no_tracking_file(tmp_path):
    def fit(progress):
        progress.start(2, 0)
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError):
        tracked(TensorBoardTracker(), tmp_path, {"lr": 0.1}, [], NullProgress(), fit)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_tracker_costs_a_warning_not_the_run(tmp_path, capsys):
    class Broken(TensorBoardTracker):
        def epoch(self, row):
            raise OSError("disk full")

    def fit(progress):
        for epoch in (1, 2):
            progress.end_epoch({"epoch": epoch, "loss": 0.5, "seconds": 1.0})
        return {"best_epoch": 2, "test": {"hr@10": 0.5}}

    assert tracked(Broken(), tmp_path, {}, [], NullProgress(), fit)["best_epoch"] == 2
    assert capsys.readouterr().err.count("warning: tracking stopped (OSError: disk full)") == 1


def test_metric_names():
    row = {"epoch": 3, "loss": 1.0, "seconds": 2.0, "valid": {"hr@10": 0.5}, "note": "x"}
    assert dict(tracking.epoch_metrics(row)) == {"train/loss": 1.0, "time/seconds": 2.0, "valid/hr_at_10": 0.5}
    result = {"best_epoch": 2, "seed": 0, "test": {"hr@10": 0.4, "full": {"coverage@10": 0.1}}, "run_dir": "r"}
    assert dict(tracking.final_metrics(result)) == {"final/best_epoch": 2.0, "final/test/hr_at_10": 0.4,
                                                    "final/test/full/coverage_at_10": 0.1}
