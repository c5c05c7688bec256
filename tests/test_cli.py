"""The installed ``cml`` entry point as a new user meets it: one-line usage errors, ``-h``,
``--version``, help text and metavars, "did you mean" for misspelled names, result tables on
stdout (plain text in a pipe) with progress on stderr, runs that find their dataset without
``--data-dir``, ``--json`` on stdout, file modes and no lock left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("preprocess", "datasets", "train", "evaluate", "ablate", "report", "tune")
BOX = set("─━│┃┏┓┗┛┡┩└┘├┤┼╇")
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
    # One torch thread: tiny data gains nothing from more, and on a busy machine they wait on each other.
    base.update({"PYTHONWARNINGS": "ignore", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}, **(env or {}))
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=base,
                          timeout=timeout)


@pytest.fixture(scope="module")
def no_click(tmp_path_factory) -> dict:
    """Environment of a Python where ``import click`` fails, as in an install without Ray."""
    site = tmp_path_factory.mktemp("noclick")
    (site / "sitecustomize.py").write_text(BLOCK_CLICK)
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize("blocked", [False, True], ids=["installed", "without-click"])
@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "No such option: --bogus"),
    (["ablate", "--bogus"], "No such option: --bogus"),
    (["evaluate"], "Missing argument 'RUN_DIR' (see `cml evaluate -h`)"),
    (["evaluate", "--ranking"], "Option '--ranking' requires an argument (see `cml evaluate -h`)"),
    (["tune"], "Missing option '--dataset' / '-d' (see `cml tune -h`)"),
    (["tune", "-d", "x", "-m", "cml", "--trials", "many"], "Invalid value for '--trials'"),
    (["trian"], "No such command 'trian'"),
])
def test_usage_errors_are_one_line_in_the_projects_style(argv, message, blocked, no_click, tmp_path):
    proc = _cml(*argv, cwd=tmp_path, env=no_click if blocked else None)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr  # no Usage / Try / blank line
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith(f"(see `cml {argv[0] if argv[0] != 'trian' else ''}".rstrip() + " -h`)")
    assert "Error:" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_dash_h_is_help(command, tmp_path):
    proc = _cml(*([command] if command else []), "-h", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: cml {command}".rstrip()), proc.stdout
    assert _cml("help", *([command] if command else []), cwd=tmp_path).stdout == proc.stdout  # cml help CMD


def test_version_names_the_package_version_and_git_revision(tmp_path):
    from cml_cli import __version__

    proc = _cml("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"cml {re.escape(__version__)} \(git revision ([0-9a-f]{{40}}(\+dirty)?|unknown)\)\n",
                        proc.stdout), proc.stdout


def test_help_has_readable_metavars_and_whole_summaries(tmp_path):
    summary = _cml("-h", cwd=tmp_path).stdout
    assert "..." not in summary.split("Commands:")[1], summary  # no summary cut short
    for command in COMMANDS:
        text = _cml(command, "-h", cwd=tmp_path).stdout
        assert not re.search(r"<[a-z\[\]]+>|\{[a-z_]+\}", text), text  # no <list[str]>, <path>, {run_dir}
    assert "--set KEY=VALUE" in _cml("train", "-h", cwd=tmp_path).stdout
    assert "Usage: cml evaluate [OPTIONS] RUN_DIR" in _cml("evaluate", "-h", cwd=tmp_path).stdout


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


def test_evaluate_json_keys_follow_the_options_and_the_default_cutoffs_are_one(trained, tmp_path):
    from cml_cli.config import DEFAULT_KS, RunConfig

    proc = _cml("evaluate", trained["run"], "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ranking"] == "sampled" and result["split"] == "test" and result["checkpoint"] == "best"
    assert "protocol" not in result  # the option is --ranking (train's --protocol is strict | paper)
    sampled = {f"{m}@{k}" for m in ("hr", "ndcg") for k in DEFAULT_KS}
    assert set(result["test"]) == sampled  # evaluate's default cut-offs ...
    assert set(trained["result"]["test"]) - {"full"} == sampled  # ... are train's
    assert RunConfig().ks == list(DEFAULT_KS)
    assert f"[default: the run's ks: {','.join(map(str, DEFAULT_KS))}" in " ".join(
        _cml("evaluate", "-h", cwd=tmp_path).stdout.split())


def test_files_have_one_mode_and_a_finished_run_leaves_no_lock(trained):
    umask = os.umask(0o022)
    os.umask(umask)
    run, dataset = trained["run"], trained["data"] / "synthetic"
    assert not (run / ".lock").exists()
    for path in [run, dataset, *run.rglob("*"), *dataset.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"


def test_the_lock_file_goes_with_its_holder(tmp_path):
    from cml_cli.errors import InputError
    from cml_cli.train.rundir import RunDir

    tmp_path.joinpath("run").mkdir()
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.lock()
    with pytest.raises(InputError, match="another cml process"):
        second.lock()
    stale = open(tmp_path / "run" / ".lock")  # a process that opened the file before it was removed
    first.unlock()
    assert not (tmp_path / "run" / ".lock").exists()
    second.lock()  # a new file: the removed one is no lock of this run any more
    assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
    assert os.fstat(stale.fileno()).st_ino != (tmp_path / "run" / ".lock").stat().st_ino
    stale.close()
    (tmp_path / "elsewhere").write_text("keep")
    second.unlock()
    (tmp_path / "run" / ".lock").symlink_to(tmp_path / "elsewhere")
    first.lock()
    first.unlock()  # never deletes through (or a) symlink it did not make
    assert (tmp_path / "run" / ".lock").is_symlink() and (tmp_path / "elsewhere").is_file()


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_misspelled_names_get_a_suggestion(trained, tmp_path):
    data = ["--data-dir", trained["data"]]
    line = _one_error_line(_cml("train", "--dataset", "retailrocekt", cwd=tmp_path))
    assert "did you mean 'retailrocket'?" in line and "cml preprocess --dataset retailrocket " in line
    assert "--dataset retailrocekt" not in line  # no advice to preprocess the misspelled name
    assert "did you mean 'synthetic'?" in _one_error_line(_cml("train", "--dataset", "synthetc", *data, cwd=tmp_path))
    line = _one_error_line(_cml("train", "--dataset", "synthetic", *data, "--set", "epoch=3", cwd=tmp_path))
    assert "unknown option 'epoch' (did you mean 'epochs'?)" in line and line.count(",") < 5  # not all 45 keys
    line = _one_error_line(_cml("train", "--dataset", "synthetic", *data, "--set", "model=itemknn", cwd=tmp_path))
    assert "did you mean 'itemknn-merged'?" in line
    line = _one_error_line(_cml("ablate", "--dataset", "synthetic", *data, "--variants", "cml,w/o-cfl", cwd=tmp_path))
    assert "unknown variant 'w/o-cfl' (did you mean 'w/o-clf'" in line


def test_a_preset_not_processed_yet_is_no_misspelling(tmp_path):
    from cml_cli.data.store import resolve_dataset_dir
    from cml_cli.errors import InputError

    with pytest.raises(InputError) as e:
        resolve_dataset_dir("synthetic", tmp_path)
    message = str(e.value)
    assert "did you mean" not in message and "not processed yet: `cml preprocess --dataset synthetic`" in message


def test_model_suggestions_read_the_registry(monkeypatch):
    from cml_cli import registry
    from cml_cli.config import RunConfig
    from cml_cli.errors import InputError

    monkeypatch.setitem(registry.MODELS, "cascadingrank", registry.ModelEntry("cascadingrank", "peer", "new"))
    with pytest.raises(InputError, match="did you mean 'cascadingrank'"):
        RunConfig(model="cascadingrnk").validate()


def test_source_folder_holding_known_layouts_names_them(tmp_path, make_cml, make_mbcgcn):
    make_cml(tmp_path / "published" / "cml-format")
    make_mbcgcn(tmp_path / "published" / "mbcgcn-format")
    line = _one_error_line(_cml("preprocess", "--dataset", "tmall", "--source", tmp_path / "published", "--data-dir",
                                tmp_path / "data", cwd=tmp_path))
    assert "cml-format (cml format)" in line and "mbcgcn-format (mbcgcn format)" in line
    assert not (tmp_path / "data").exists()


def test_tables_go_to_stdout_as_plain_text_and_progress_to_stderr(trained, tmp_path):
    data = ["--data-dir", trained["data"]]
    proc = _cml("datasets", *data, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("synthetic ")]
    assert len(rows) == 1 and "300" in rows[0] and not BOX & set(proc.stdout), proc.stdout
    proc = _cml("evaluate", trained["run"], cwd=tmp_path)
    assert proc.returncode == 0 and re.search(r"^test +HR@10 +0\.\d{4}$", proc.stdout, re.M), proc.stdout
    proc = _cml("train", "--dataset", "synthetic", *data, "--name", "p", "--set", "epochs=2", "--set", "dim=8",
                "--set", "layers=1", "--json", cwd=tmp_path)  # not a terminal, and --json: a line per epoch
    assert proc.returncode == 0 and json.loads(proc.stdout)["epochs_run"] == 2, proc.stderr
    assert re.search(r"^epoch 1/2 .*valid HR@10", proc.stderr, re.M) and "epoch 2/2" in proc.stderr, proc.stderr


def test_ablate_table_on_stdout_progress_on_stderr(trained, tmp_path):
    argv = ["ablate", "--dataset", "synthetic", "--data-dir", trained["data"], "--variants", "cml,popularity",
            "--set", "epochs=2", "--set", "dim=8", "--set", "layers=1"]
    proc = _cml(*argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("synthetic: test metrics") and lines[1].split()[:3] == ["variant", "seeds", "HR@10"]
    assert lines[2].startswith("cml ") and lines[3].startswith("popularity ") and not BOX & set(proc.stdout)
    assert any(line.startswith("note: p is blank: one seed") for line in lines), proc.stdout
    assert re.search(r"^  cml s0: epoch 2/2 ", proc.stderr, re.M), proc.stderr  # the run's epochs, live
    assert "tables in runs/ablate-synthetic/table." in proc.stderr  # relative to the working directory
    proc = _cml(*argv, "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"][0]["variant"] == "cml"
    assert "reused cml s0" in proc.stderr
