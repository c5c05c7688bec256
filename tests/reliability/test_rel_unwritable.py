"""Writing into a directory that cannot be written (under a regular file, in ``/proc``,
read-only, or with a missing parent) fails before any work starts, with a clear message.

Tests run as root here, where permission bits do not stop writes: the read-only case uses
``chmod`` only when that really blocks writes, and is skipped otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import SETTINGS, assert_clean_error

from cml_cli.errors import InputError


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any reading, generating or training starts."""
    import cml_cli.data.readers.synthetic as synthetic
    import cml_cli.train.loop as loop

    def boom(*a, **k):
        raise AssertionError("work started before the output directory was checked")

    monkeypatch.setattr(synthetic, "read", boom)
    monkeypatch.setattr(loop, "load_run_dataset", boom)


def _under_a_file(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "sub" / "dir"


def unwritable_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {
        "under a regular file": (_under_a_file(tmp_path), "is not a directory"),
        "in /proc": (Path("/proc/cml-reliability-test"), "/proc is not writable"),
        "missing parent": (tmp_path / "missing" / "parent" / "dir", "does not exist"),
    }


@pytest.mark.parametrize("case", ["under a regular file", "in /proc", "missing parent"])
def test_preprocess_data_dir(cml, no_work, tmp_path, case):
    path, needle = unwritable_cases(tmp_path)[case]
    res = cml("preprocess", "-d", "synthetic", "--data-dir", path)
    assert_clean_error(res, 2, "--data-dir", str(path), needle)


@pytest.mark.parametrize("case", ["under a regular file", "in /proc", "missing parent"])
def test_train_runs_dir(cml, no_work, data_dir, tmp_path, case):
    path, needle = unwritable_cases(tmp_path)[case]
    res = cml("train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", path, *SETTINGS)
    assert_clean_error(res, 2, "--runs-dir", str(path), needle)
    assert not path.exists()


def test_python_api_checks_before_work(no_work, data_dir, tmp_path):
    """``train()`` and ``save_dataset()`` (which create missing parents) still refuse
    unwritable places before doing anything."""
    from cml_cli.config import RunConfig
    from cml_cli.train.loop import train

    with pytest.raises(InputError, match="is not a directory"):
        train("synthetic", RunConfig(epochs=1), data_dir=data_dir, runs_dir=_under_a_file(tmp_path))
    with pytest.raises(InputError, match="not writable"):
        train("synthetic", RunConfig(epochs=1), data_dir=data_dir, runs_dir=Path("/proc/cml-test/runs"))


def test_save_dataset_into_proc(tmp_path):
    from cml_cli.data.dataset import build_dataset
    from cml_cli.data.readers import synthetic
    from cml_cli.data.store import save_dataset

    raw = synthetic.read("tiny")
    ds = build_dataset(raw, "t")
    with pytest.raises(InputError, match="data directory /proc/cml-test: /proc is not writable"):
        save_dataset(ds, Path("/proc/cml-test"))


def _chmod_blocks_writes(d: Path) -> bool:
    probe = d / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return True
    probe.unlink()
    return False


def test_read_only_directory(cml, no_work, tmp_path, data_dir):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if not _chmod_blocks_writes(ro):
            pytest.skip("running as root: permission bits do not block writes (covered by the /proc cases)")
        res = cml("preprocess", "-d", "synthetic", "--data-dir", ro / "data")
        assert_clean_error(res, 2, "--data-dir", "not writable")
        res = cml("train", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", ro, *SETTINGS)
        assert_clean_error(res, 2, "--runs-dir", "not writable")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_existing_parent_is_enough(cml, tmp_path):
    """The directory itself may be missing (it is created); only its parent must exist."""
    res = cml("preprocess", "-d", "synthetic", "--data-dir", tmp_path / "new-data", "--json")
    assert res.code == 0, res.stderr
    assert (tmp_path / "new-data" / "synthetic" / "manifest.json").is_file()
    assert os.listdir(tmp_path / "new-data") == ["synthetic"]  # the write probe left nothing behind
