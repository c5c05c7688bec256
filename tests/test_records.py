"""Recorded commands (run manifests, grid and study records, results pages) name no absolute
path of the machine that ran them: paths are written relative to the working directory or,
on results pages, to the repository."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from cml_cli.config import resolve_config
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.train.loop import train
from cml_cli.train.rundir import command_line

REPO = Path(__file__).resolve().parents[1]


def test_command_line_writes_absolute_paths_relative():
    argv = ["cml", "ablate", "--data-dir", "/srv/x/data", "--config", "cml=/srv/x/best.toml", "--out=/srv/y",
            "--set", "lr=1e-3", "--variants", "w/o-clf", "--storage", "postgresql://u:p@db/cml", "two words"]
    assert command_line(argv, Path("/srv/x")) == ("cml ablate --data-dir data --config cml=best.toml --out=../y "
                                                  "--set lr=1e-3 --variants w/o-clf --storage "
                                                  "postgresql://db/cml 'two words'")  # URLs: no credentials


def test_run_manifest_records_the_command_without_machine_paths(tmp_path, monkeypatch):
    data = tmp_path / "data"
    preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "cml"), "train", "--data-dir", str(data)])
    cfg = resolve_config("default", None, {"model": "popularity", "ks": "10"})
    result = train("synthetic", cfg, data_dir=data, runs_dir=Path("runs"), name="r")
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
    assert manifest["command"] == "cml train --data-dir data"
    assert Path(manifest["dataset_dir"]).is_absolute()  # kept for --resume and evaluate


def test_study_pages_record_paths_relative_to_the_repository(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_study", REPO / "experiments" / "run_study.py")
    run_study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_study)
    monkeypatch.chdir(tmp_path)
    command = run_study.study_command(["tuned", "--jobs", "2", "--runs-dir", str(REPO / "runs" / "studies"),
                                       "--data-dir=data", "--results-dir", str(REPO / "experiments" / "results")])
    assert command.startswith("python experiments/run_study.py tuned --jobs 2 --runs-dir runs/studies --data-dir ")
    assert command.endswith(" --results-dir experiments/results")
    data = command.split("--data-dir ")[1].split()[0]
    assert not data.startswith("/") and (REPO / data).resolve() == (tmp_path / "data").resolve()
