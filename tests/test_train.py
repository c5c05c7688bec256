"""The epoch loop end to end: determinism, resume, and CML against popularity."""

from __future__ import annotations

import json

import pytest

from cml_cli.config import RunConfig
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.train.loop import resume, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=path)
    return path


def _cfg(**overrides) -> RunConfig:
    # batch 512: two batches per epoch on tiny (~900 target pairs), so RNG state carries across batches
    values = dict(device="cpu", batch=512, epochs=2)
    values.update(overrides)
    return RunConfig(**values).validate()


def _history(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row.pop("seconds", None)
        row.pop("train_seconds", None)
    return rows


def _final(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_same_seed_same_metrics(data_dir, tmp_path):
    a = train("synthetic", _cfg(), data_dir=data_dir, runs_dir=tmp_path, name="a")
    b = train("synthetic", _cfg(), data_dir=data_dir, runs_dir=tmp_path, name="b")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert _history(tmp_path / "a") == _history(tmp_path / "b")  # losses and per-epoch metrics too
    train("synthetic", _cfg(seed=1), data_dir=data_dir, runs_dir=tmp_path, name="c")
    assert _history(tmp_path / "c") != _history(tmp_path / "a")


@pytest.mark.parametrize("model", ["cml", "bpr-mf"])
def test_resume_equals_uninterrupted_run(data_dir, tmp_path, model):
    extra = {} if model == "cml" else dict(model="bpr-mf", lr=1e-2, batch=256, dim=8)
    whole = train("synthetic", _cfg(epochs=4, **extra), data_dir=data_dir, runs_dir=tmp_path, name="whole")
    train("synthetic", _cfg(epochs=2, **extra), data_dir=data_dir, runs_dir=tmp_path, name="parts")
    resumed = resume(tmp_path / "parts", data_dir=data_dir, epochs=4)
    assert resumed["epochs_run"] == whole["epochs_run"] == 4
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
    assert _final(tmp_path / "parts")["test"] == _final(tmp_path / "whole")["test"]
    assert _final(tmp_path / "parts")["valid"] == _final(tmp_path / "whole")["valid"]
    assert _history(tmp_path / "parts") == _history(tmp_path / "whole")


def test_short_cml_training_beats_popularity(data_dir, tmp_path):
    """Three epochs of CML (default config, lr raised to 1e-2) against item popularity on tiny
    synthetic data: measured test HR@10 0.637 vs 0.540 (chance 0.1)."""
    pop = train("synthetic", _cfg(model="popularity"), data_dir=data_dir, runs_dir=tmp_path, name="pop")
    cml = train("synthetic", RunConfig(device="cpu", epochs=3, lr=1e-2, max_lr=1e-2).validate(),
                data_dir=data_dir, runs_dir=tmp_path, name="cml")
    assert cml["test"]["hr@10"] > pop["test"]["hr@10"] + 0.05, (cml["test"], pop["test"])
    assert cml["test"]["ndcg@10"] > pop["test"]["ndcg@10"] + 0.02, (cml["test"], pop["test"])
