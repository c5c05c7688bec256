"""Run directories and checkpoints a careless or hostile user hands to ``cml train`` and
``cml evaluate`` (issue 16, rows 6, 9, 10, 11, 18 and 21): each refused with one line and
exit 2 (1 for a full disk), nothing changed, never a traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import assert_clean_error, one_line, read_only_under, resume_argv, snapshot, train_argv

from cml_cli.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def runs(children, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Finished one-epoch runs: CML with seeds 0 and 1, BPR-MF with seed 0."""
    root = tmp_path_factory.mktemp("trust-runs")
    out = {}
    for key, extra in {"s0": [], "s1": ["--seed", "1"], "mf": ["--set", "model=bpr-mf"]}.items():
        child = children.run(train_argv(data_dir, root, key, "--set", "epochs=1", *extra))
        assert child.exitcode == 0, child.stderr
        out[key] = root / key
    return out


def copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def without_lock(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != ".lock"}


# ------------------------------------------------------------------ row 6: checkpoints tied to their run


def test_evaluate_refuses_a_best_checkpoint_of_another_seed(cml, runs, tmp_path):
    run = copy(runs["s0"], tmp_path)
    shutil.copy(runs["s1"] / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    before = snapshot(run)
    res = cml("evaluate", run, "--json")
    assert_clean_error(res, 2, str(run / "checkpoints" / "best.ckpt"), "belongs to another run")
    one_line(res)
    ours, theirs = (load_checkpoint(r / "checkpoints" / "best.ckpt")["identity"]["config"] for r in (runs["s0"], runs["s1"]))
    assert ours != theirs and ours in res.stderr and theirs in res.stderr  # both named
    assert snapshot(run) == before  # no eval-*.json with the foreign checkpoint's metrics


def test_resume_refuses_a_last_checkpoint_of_another_model(cml, data_dir, runs, tmp_path):
    run = copy(runs["s0"], tmp_path)
    (run / "metrics.json").unlink()
    shutil.copy(runs["mf"] / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    before = snapshot(run)
    res = cml(*resume_argv(data_dir, run))
    assert_clean_error(res, 2, "last.ckpt", "belongs to another run", "model bpr-mf", "model cml")
    assert without_lock(snapshot(run)) == before


def test_resume_refuses_a_config_edited_to_another_model(cml, data_dir, runs, tmp_path):
    run = copy(runs["s0"], tmp_path)
    (run / "metrics.json").unlink()
    config = run / "config.toml"
    config.write_text(config.read_text().replace('model = "cml"', 'model = "bpr-mf"'))
    before = snapshot(run)
    res = cml(*resume_argv(data_dir, run))
    assert_clean_error(res, 2, "belongs to another run", "model cml", "model bpr-mf")
    assert without_lock(snapshot(run)) == before


def test_an_old_checkpoint_of_another_shape_is_refused(cml, runs, tmp_path):
    """A checkpoint written before identities were recorded is checked by loading it."""
    run = copy(runs["s0"], tmp_path)
    state = load_checkpoint(runs["mf"] / "checkpoints" / "best.ckpt")
    del state["identity"]
    save_checkpoint(run / "checkpoints" / "best.ckpt", state)
    res = cml("evaluate", run)
    assert_clean_error(res, 2, "best.ckpt", "does not fit this run's model")


# ------------------------------------------------------------------ rows 9, 21: links and look-alikes


def test_force_never_follows_a_symbolic_link(cml, data_dir, runs, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs["s0"], elsewhere, ignore=shutil.ignore_patterns(".lock"))  # a run, outside --runs-dir
    (elsewhere / "mine.txt").write_text("keep")
    root = tmp_path / "runs"
    root.mkdir()
    (root / "link").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    res = cml(*train_argv(data_dir, root, "link", "--force"))
    assert_clean_error(res, 2, "symbolic link", "nothing was changed")
    assert snapshot(tmp_path) == before


def test_resume_of_a_look_alike_writes_nothing(cml, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text('{"photos": 12}')
    (fake / "config.toml").write_text("title = 'holiday'\n")
    before = snapshot(tmp_path)
    res = cml("train", "--resume", fake)
    assert_clean_error(res, 2, str(fake / "manifest.json"))
    assert snapshot(tmp_path) == before  # no .lock left behind


# ------------------------------------------------------------------ rows 10, 11, 18: numbers and text


@pytest.mark.parametrize("extra, needle", [
    (["--seed", "-5"], "seed"),
    (["--seed", str(10**20)], "seed"),
    (["--set", "dim=1000000000"], "dim"),
    (["--set", "ks=100000000000000000000000"], "ks"),
    (["--set", "ks=1000"], "exceed the dataset's 400 items"),
    (["--set", "batch=1e30"], "batch"),
    (["--set", "reg=-1"], "reg"),
    (["--set", "meta_momentum=1"], "meta_momentum"),
])
def test_numbers_out_of_bounds_are_refused(cml, data_dir, tmp_path, extra, needle):
    res = cml(*train_argv(data_dir, tmp_path / "runs", "n", *extra))
    assert_clean_error(res, 2, needle)
    one_line(res)
    assert not (tmp_path / "runs" / "n").exists()


def test_a_config_file_whose_train_is_not_a_table(cml, data_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("train = 5\n")
    res = cml(*train_argv(data_dir, tmp_path / "runs", "c", "--config", bad))
    assert_clean_error(res, 2, str(bad), "must be a table")


@pytest.mark.parametrize("extra, needle", [
    (["--ks", "9223372036854775808"], "exceed the dataset's 400 items"),
    (["--ks", "10,401"], "401"),
    (["--device", "tpu"], "'tpu' is not one of"),
])
def test_evaluate_refuses_bad_cutoffs_and_devices(cml, runs, tmp_path, extra, needle):
    run = copy(runs["s0"], tmp_path)
    before = snapshot(run)
    res = cml("evaluate", run, *extra)
    assert_clean_error(res, 2, needle)
    assert snapshot(run) == before  # no result written


def test_user_text_is_never_an_emoji_or_markup(cml, data_dir, tmp_path):
    res = cml(*train_argv(data_dir, tmp_path / "runs", "e", "--device", "cuda:-1:"))
    assert_clean_error(res, 2, "cuda:-1:")
    assert "\N{THUMBS DOWN SIGN}" not in res.stderr
    res = cml(*train_argv(data_dir, tmp_path / "runs", "m", "--set", "encoder=[bold]x[/]:smile:"))
    assert_clean_error(res, 2, "[bold]x[/]:smile:")


def test_evaluate_on_a_read_only_run(cml, runs, tmp_path, monkeypatch):
    run = copy(runs["s0"], tmp_path)
    read_only_under(monkeypatch, run)
    before = snapshot(run)
    res = cml("evaluate", run)
    assert_clean_error(res, 2, str(run), "Read-only file system")
    assert snapshot(run) == before


def test_a_full_disk_during_training_keeps_nothing_half_written(children, data_dir, tmp_path):
    runs = tmp_path / "runs"
    child = children.run(train_argv(data_dir, runs, "full"), {"fsize": 100_000})  # a checkpoint is > 190 kB
    assert child.exitcode == 1, child.stderr
    assert "Traceback" not in child.stderr and len(child.stderr.strip().splitlines()) == 1, child.stderr
    assert re.search(r"(last|best)\.ckpt: cannot write \(File too large\)", child.stderr), child.stderr
    assert not (runs / "full").exists()  # no epoch completed: nothing kept, the command can simply run again
