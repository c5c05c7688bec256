"""The installed ``cml`` entry point as a new user meets it: usage errors, help text, runs
that find their dataset without ``--data-dir``, and ``--json`` on stdout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("preprocess", "datasets", "train", "evaluate", "ablate", "report")
BLOCK_CLICK = """
import sys


class _NoClick:
    def find_spec(self, name, path=None, target=None):
        if name == "click" or name.startswith("click."):
            raise ImportError("click is not installed here (blocked by the test)")
        return None


sys.meta_path.insert(0, _NoClick())
"""


def _cml(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """The installed entry point: the ``cml`` script beside this Python."""
    script = Path(sys.executable).with_name("cml")
    assert script.is_file(), f"{script}: the package is not installed in this environment (make install)"
    base = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    base.update({"PYTHONWARNINGS": "ignore", "COLUMNS": "200"}, **(env or {}))
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=base,
                          timeout=timeout)


@pytest.fixture(scope="module")
def no_click(tmp_path_factory) -> dict:
    """Environment of a Python where ``import click`` fails, as in an install without Ray."""
    site = tmp_path_factory.mktemp("noclick")
    (site / "sitecustomize.py").write_text(BLOCK_CLICK)
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize("blocked", [False, True], ids=["installed", "without-click"])
@pytest.mark.parametrize("argv", [["train", "--bogus"], ["ablate", "--bogus"], ["evaluate"], ["evaluate", "--ranking"]])
def test_usage_errors_exit_2_without_traceback(argv, blocked, no_click, tmp_path):
    proc = _cml(*argv, cwd=tmp_path, env=no_click if blocked else None)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert re.search(r"Error: (No such option|Missing argument|Option '--ranking' requires an argument)",
                     proc.stderr), proc.stderr


def test_no_click_is_really_blocked(no_click, tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import click"], capture_output=True, text=True,
                          env={**os.environ, **no_click}, cwd=tmp_path)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_keeps_everything_in_square_brackets(command, tmp_path):
    proc = _cml(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # rich markup would eat "[default: ...]" and leave a bare " ." behind
    assert not re.search(r"[A-Za-z0-9)] \.(\s|$)", text), text
    assert "[default: $CML_DATA_DIR or ./data]" in " ".join(text.split()) or command in ("evaluate", "report"), text


def test_help_of_train_names_the_default_preset_and_run_name(tmp_path):
    text = " ".join(_cml("train", "--help", cwd=tmp_path).stdout.split())
    assert "[default: the dataset's]" in text and "[default: dataset-model-seed-time]" in text
    assert "(a [train] table or top level)" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A dataset preprocessed into a non-default --data-dir and a one-epoch run on it."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "elsewhere" / "my-data"
    data.parent.mkdir()
    proc = _cml("preprocess", "--dataset", "synthetic", "--data-dir", data, cwd=root)
    assert proc.returncode == 0, proc.stderr
    proc = _cml("train", "--dataset", "synthetic", "--data-dir", data, "--name", "r", "--set", "epochs=1",
                "--set", "dim=8", "--set", "layers=1", "--quiet", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "data": data, "run": root / "runs" / "r", "result": json.loads(proc.stdout)}


def test_evaluate_and_resume_find_the_dataset_without_data_dir(trained, tmp_path):
    run = trained["run"]
    proc = _cml("evaluate", run, "--json", cwd=tmp_path)  # another directory, no --data-dir
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert result["test"]["hr@10"] == pytest.approx(trained["result"]["test"]["hr@10"])
    proc = _cml("train", "--resume", run, "--epochs", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs_run"] == 2


def test_evaluate_full_ranking_json_has_beyond_accuracy_metrics(trained, tmp_path):
    proc = _cml("evaluate", trained["run"], "--ranking", "full", "--ks", "10", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    full = json.loads(proc.stdout)["test"]["full"]
    assert set(full) == {"recall@10", "ndcg@10", "hr@10", "coverage@10", "personalization@10", "arp@10"}
    # the deprecated spellings still work, with a note on stderr
    proc = _cml("evaluate", trained["run"], "--protocol", "full", "--ks", "10", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["test"]["full"] == pytest.approx(full)
    assert "--protocol` is deprecated" in proc.stderr and "--format` is deprecated" in proc.stderr


def test_evaluate_refuses_a_changed_dataset(trained, tmp_path):
    """The run's dataset was preprocessed again with another seed: evaluate refuses, as resume does."""
    data = tmp_path / "data"
    proc = _cml("preprocess", "--dataset", "synthetic", "--data-dir", data, "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _cml("evaluate", trained["run"], "--data-dir", data, cwd=tmp_path)
    assert proc.returncode == 2 and "dataset changed" in proc.stderr and "Traceback" not in proc.stderr
