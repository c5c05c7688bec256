"""``cml ablate``, ``cml report`` and ``cml tune`` given hostile or careless input (issue 16,
rows 4, 7, 10, 12, 14, 15, 17 and 20): one line and exit 2 (1 for a failure while running),
nothing written where it does not belong, never a traceback (Optuna's included)."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_clean_error, one_line, read_only_under, snapshot

from cml_cli.errors import InputError

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="Optuna is not installed")
POPULARITY = '[variants."pop[/]"]\nmodel = "popularity"\n'


@pytest.fixture(scope="module")
def grid(children, data_dir, tmp_path_factory) -> Path:
    """A finished grid of the popularity model."""
    root = tmp_path_factory.mktemp("trust-grid")
    child = children.run(["ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", root / "runs", "--name",
                          "g", "--variants", "popularity", "--seeds", "0"])
    assert child.exitcode == 0, child.stderr
    return root / "runs" / "g"


# ------------------------------------------------------------------ row 10: grids, variants files, report


def test_a_variant_named_like_markup(children, cml, data_dir, tmp_path):
    (tmp_path / "v.toml").write_text(POPULARITY)
    child = children.run(["ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs",
                          "--name", "g", "--variants", "pop[/]", "--variants-file", tmp_path / "v.toml"])
    assert child.exitcode == 0, child.stderr
    assert "pop[/]" in child.stderr  # the progress lines show the name as written, not as markup
    assert "pop[/]" in child.stdout  # and so does the table (on stdout, issue 22)
    res = cml("report", tmp_path / "runs" / "g", "--out", tmp_path / "out", "--tables-only")
    assert res.code == 0, res.stderr
    assert "pop[/]" in res.stdout and "pop[/]" in (tmp_path / "out" / "table.md").read_text()
    from rich.console import Console

    from cml_cli.report import summarize_grid, table_listing

    terminal = Console(file=io.StringIO(), width=200)  # the table as a terminal gets it
    terminal.print(table_listing(summarize_grid(tmp_path / "runs" / "g")).rich())
    assert "pop[/]" in terminal.file.getvalue()


@pytest.mark.parametrize("damage", [{"variants": []}, {"variants": {"popularity": {"runs": {"x": "popularity-s0"}}}},
                                    {"variants": {"popularity": {"runs": {"0": "../../elsewhere"}}}},
                                    {"variants": {"popularity": []}}, {"failed": ["popularity-s0"]}])
def test_a_damaged_grid_json_is_one_line(cml, data_dir, grid, tmp_path, damage):
    g = tmp_path / "g"
    shutil.copytree(grid, g)
    (g / "grid.json").write_text(json.dumps({**json.loads((g / "grid.json").read_text()), **damage}))
    before = snapshot(g)
    res = cml("report", g, "--tables-only")
    assert_clean_error(res, 2, str(g / "grid.json"))
    one_line(res)
    res = cml("ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path, "--name", "g",
              "--variants", "popularity")
    assert_clean_error(res, 2, str(g / "grid.json"))
    assert snapshot(g) == before


def test_a_variants_file_with_a_list_for_a_model(cml, data_dir, tmp_path):
    bad = tmp_path / "v.toml"
    bad.write_text('[variants.x]\nmodel = ["cml"]\n')
    res = cml("ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs",
              "--variants", "x", "--variants-file", bad)
    assert_clean_error(res, 2, str(bad), "variants.x", "model")
    assert not (tmp_path / "runs").exists()


def test_report_into_a_place_that_cannot_be_written(cml, grid, tmp_path, monkeypatch):
    res = cml("report", grid, "--out", "/sys/kernel", "--tables-only")
    assert_clean_error(res, 2, "--out /sys/kernel")
    g = tmp_path / "g"
    shutil.copytree(grid, g)
    read_only_under(monkeypatch, g)
    before = snapshot(g)
    res = cml("report", g, "--tables-only")
    assert_clean_error(res, 2, "--out", "Read-only file system")
    assert snapshot(g) == before


# ------------------------------------------------------------------ row 20: report without matplotlib


def test_report_without_matplotlib_writes_nothing(cml, grid, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = cml("report", grid, "--out", tmp_path / "out")
    assert_clean_error(res, 2, "pip install 'cml-cli[plot]'", "--tables-only")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ row 15: only their own kind of directory


@pytest.mark.parametrize("command", ["ablate", "tune"])
def test_ablate_and_tune_write_only_into_their_own_directories(cml, data_dir, grid, tmp_path, command):
    if command == "tune" and importlib.util.find_spec("optuna") is None:
        pytest.skip("Optuna is not installed")
    runs = tmp_path / "runs"
    (runs / "mine").mkdir(parents=True)
    (runs / "mine" / "thesis.tex").write_text("mine")
    shutil.copytree(grid / "popularity-s0", runs / "a-run")  # a run directory is not a grid or a study either
    (runs / "link").symlink_to(runs / "mine")
    other = {"ablate": ["--variants", "popularity"], "tune": ["-m", "itemknn-merged", "--trials", "1"]}[command]
    before = snapshot(tmp_path)
    for name in ("mine", "a-run", "link"):
        res = cml(command, "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", name, *other)
        assert_clean_error(res, 2, str(runs / name))
        one_line(res)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ tune: rows 4, 7, 10, 12, 14, 17, 20


@needs_optuna
@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1"])
def test_tune_timeout_must_be_positive_and_finite(cml, data_dir, tmp_path, timeout):
    res = cml("tune", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs", "-m",
              "itemknn-merged", "--timeout", timeout)
    assert_clean_error(res, 2, "--timeout")
    assert not (tmp_path / "runs").exists()


@needs_optuna
def test_a_search_space_may_not_change_the_model(cml, data_dir, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('[model]\ntype = "categorical"\nchoices = ["popularity"]\n')
    res = cml("tune", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs", "-m",
              "itemknn-merged", "--space", space)
    assert_clean_error(res, 2, "[model] cannot be searched")
    assert not (tmp_path / "runs").exists()


@needs_optuna
def test_storage_credentials_are_never_shown(cml, data_dir, tmp_path):
    res = cml("tune", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs", "-m",
              "itemknn-merged", "--storage", "postgresql://user:s3cret@127.0.0.1:9/db", "--trials", "1")
    assert_clean_error(res, 2, "postgresql://127.0.0.1:9/db")
    assert "s3cret" not in res.stderr and "user:" not in res.stderr
    assert not (tmp_path / "runs").exists()  # nothing empty left behind
    from cml_cli.train.rundir import command_line

    recorded = command_line(["cml", "tune", "--storage", "postgresql://user:s3cret@db-host/cml"])
    assert recorded == "cml tune --storage postgresql://db-host/cml"  # run manifests, grid.json, the study


@needs_optuna
def test_tune_on_a_damaged_dataset_leaves_no_directory(cml, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    arrays = data / "synthetic" / "arrays.npz"
    raw = bytearray(arrays.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrays.write_bytes(bytes(raw))
    res = cml("tune", "-d", "synthetic", "--data-dir", data, "--runs-dir", tmp_path / "runs", "-m", "itemknn-merged",
              "--trials", "1")
    assert_clean_error(res, 2, "arrays.npz", "checksum mismatch")
    assert not (tmp_path / "runs").exists()


@needs_optuna
def test_a_failing_trial_is_one_line_in_the_study(children, data_dir, tmp_path):
    import optuna

    space = tmp_path / "space.toml"
    space.write_text('[behaviors]\ntype = "categorical"\nchoices = ["nope"]\n')
    runs = tmp_path / "runs"
    child = children.run(["tune", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "-m", "bpr-mf",
                          "--space", space, "--trials", "2", "--name", "t"])
    assert child.exitcode == 1, child.stderr
    assert "Traceback" not in child.stderr and "Trial 0 failed" not in child.stderr, child.stderr
    failures = [ln for ln in child.stderr.splitlines() if ln.startswith("trial ")]
    assert len(failures) == 2 and all("failed: InputError" in ln and "nope" in ln for ln in failures), child.stderr
    assert "no trial of the study" in child.stderr and "2 failed" in child.stderr
    study = optuna.load_study(study_name="cml-tune", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(runs / "t" / "study.journal"))))
    assert all("nope" in t.user_attrs["error"] for t in study.trials)


@needs_optuna
def test_a_full_disk_during_tune_fails_each_trial_with_one_line(children, data_dir, tmp_path):
    child = children.run(["tune", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs", "-m",
                          "bpr-mf", "--trials", "1", "--set", "epochs=1"], {"fsize": 20_000})
    assert child.exitcode == 1, child.stderr
    assert "Traceback" not in child.stderr
    assert "trial 0 failed: RunError" in child.stderr and "cannot write (File too large)" in child.stderr


@needs_optuna
def test_a_torn_journal_record_is_set_aside(data_dir, tmp_path, capsys):
    from cml_cli.tune import TuneOptions, run_tune

    runs = tmp_path / "runs"
    run_tune("synthetic", "itemknn-merged", TuneOptions(trials=1), name="t", runs_dir=runs, data_dir=data_dir)
    journal = runs / "t" / "study.journal"
    text = journal.read_bytes()
    journal.write_bytes(text[:-40])  # the last record cut off half-way (a write killed mid-line)
    again = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=1), name="t", runs_dir=runs, data_dir=data_dir)
    assert again["trials"] >= 1
    assert "last record was cut off" in capsys.readouterr().err
    torn = list((runs / "t").glob("study.journal.torn-*"))
    cut = text[:-40].rfind(b"\n") + 1
    assert len(torn) == 1 and torn[0].read_bytes() == text[cut:-40] and journal.read_bytes().startswith(text[:cut])
    assert all(json.loads(line) for line in journal.read_text().splitlines())  # every record whole again
    third = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=1), name="t", runs_dir=runs, data_dir=data_dir)
    assert third["trials"] == again["trials"] + 1  # never made worse


@needs_optuna
def test_a_second_tune_waits_for_the_best_run(data_dir, tmp_path):
    """Two ``cml tune`` on one study: the second waits while the first trains the best run."""
    from cml_cli.tune import TuneOptions, run_tune

    runs = tmp_path / "runs"
    run_tune("synthetic", "itemknn-merged", TuneOptions(trials=1), name="t", runs_dir=runs, data_dir=data_dir)
    best = runs / "t" / "best"
    (best / "metrics.json").unlink()  # the first process is training it right now ...
    holder = open(best / ".lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ... and holds its lock
    released = threading.Event()

    def release_soon(kind: str, info: dict) -> None:
        if kind == "best":  # the second has chosen its best trial: let the first finish a second later
            threading.Timer(1.0, lambda: (fcntl.flock(holder, fcntl.LOCK_UN), released.set())).start()

    try:
        started = time.monotonic()
        result = run_tune("synthetic", "itemknn-merged", TuneOptions(trials=1), name="t", runs_dir=runs, data_dir=data_dir,
                          on_event=release_soon)
    except InputError as e:
        pytest.fail(f"the second tune did not wait: {e}")
    finally:
        released.wait(10)
        holder.close()
    assert time.monotonic() - started >= 1.0
    assert result["test"]["hr@10"] >= 0 and (best / "metrics.json").is_file()
