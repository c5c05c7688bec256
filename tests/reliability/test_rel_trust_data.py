"""What ``cml preprocess`` may replace and which names a processed dataset may carry (issue 16,
rows 2, 3, 5, 10 (disk full), 13 and 16). Each failure is one line, exit 2 (1 for a full
disk), and leaves every file as it was."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, one_line, snapshot

from cml_cli.data.store import load_dataset

# ------------------------------------------------------------------ row 2: what preprocess may replace


def _occupy(target: Path, what: str, elsewhere: Path) -> None:
    if what == "user folder":
        target.mkdir()
        (target / "events.csv").write_text("user,item,behavior\n")
    elif what == "plain file":
        target.write_text("my notes")
    elif what == "run directory":
        target.mkdir()
        (target / "manifest.json").write_text(json.dumps({"dataset": "synthetic", "dataset_checksum": "ab"}))
        (target / "config.toml").write_text("[train]\nepochs = 1\n")
    elif what == "dataset with other files":
        target.mkdir()
        (target / "manifest.json").write_text(json.dumps({"schema_version": 2, "files": {}}))
        (target / "notes.txt").write_text("mine")
    else:  # a symbolic link to someone's folder
        elsewhere.mkdir()
        (elsewhere / "keep.txt").write_text("mine")
        target.symlink_to(elsewhere)


@pytest.mark.parametrize("what", ["user folder", "plain file", "run directory", "dataset with other files", "symlink"])
def test_preprocess_replaces_only_a_processed_dataset(cml, tmp_path, what):
    data = tmp_path / "data"
    data.mkdir()
    _occupy(data / "mylog", what, tmp_path / "elsewhere")
    before = snapshot(tmp_path)
    res = cml("preprocess", "--dataset", "synthetic", "--name", "mylog", "--data-dir", data)
    assert_clean_error(res, 2, str(data / "mylog"), "nothing was changed")
    one_line(res)
    assert snapshot(tmp_path) == before


def test_the_source_may_not_lie_inside_the_target(cml, tmp_path):
    """The raw log kept where the dataset goes: refused before reading, the log kept."""
    data = tmp_path / "data"
    (data / "mylog").mkdir(parents=True)
    log = data / "mylog" / "events.csv"
    log.write_text("user,item,behavior\n1,2,buy\n")
    before = snapshot(tmp_path)
    res = cml("preprocess", "--dataset", "mylog", "--source", log, "--data-dir", data)
    assert_clean_error(res, 2, f"--source {log}", "lies inside")
    assert snapshot(tmp_path) == before
    # the target itself as the source, even when it is a processed dataset preprocess could replace
    assert cml("preprocess", "--dataset", "synthetic", "--name", "ds", "--data-dir", data).code == 0
    before = snapshot(tmp_path)
    res = cml("preprocess", "--dataset", "ds", "--source", data / "ds", "--format", "cml", "--data-dir", data)
    assert_clean_error(res, 2, "lies inside")
    assert snapshot(tmp_path) == before


def test_a_processed_dataset_is_replaced(cml, tmp_path):
    data = tmp_path / "data"
    assert cml("preprocess", "--dataset", "synthetic", "--data-dir", data).code == 0
    res = cml("preprocess", "--dataset", "synthetic", "--data-dir", data, "--seed", "1", "--json")
    assert res.code == 0, res.stderr
    assert load_dataset(data / "synthetic").seed == 1 and sorted(os.listdir(data)) == ["synthetic"]


# ------------------------------------------------------------------ row 3: behaviors named like the splits


def _events(path: Path, with_time: bool) -> int:
    """A log of view, test and buy events; returns the number of distinct (user, item) test events."""
    rng = np.random.default_rng(3)
    rows, test_pairs = [], set()
    for u in range(80):
        for behavior, n in (("view", 12), ("test", 5), ("buy", 4)):
            for i in rng.choice(150, size=n, replace=False):
                rows.append((u, int(i), behavior, int(rng.integers(1_000, 9_000))))
                if behavior == "test":
                    test_pairs.add((u, int(i)))
    header = "user,item,behavior" + (",timestamp" if with_time else "")
    lines = [f"{u},{i},{b}" + (f",{t}" if with_time else "") for u, i, b, t in rows]
    path.write_text("\n".join([header, *lines]) + "\n")
    return len(test_pairs)


@pytest.mark.parametrize("with_time", [True, False])
def test_a_behavior_called_test_keeps_its_own_pairs(cml, tmp_path, with_time):
    events = tmp_path / "events.csv"
    n_test_events = _events(events, with_time)
    data = tmp_path / "data"
    res = cml("preprocess", "--dataset", "mylog", "--source", events, "--behaviors", "view,test,buy",
              "--data-dir", data, "--json")
    assert res.code == 0, res.stderr
    ds = load_dataset(data / "mylog")
    assert ds.behaviors == ["view", "test", "buy"]
    assert len(ds.train["test"]) == n_test_events  # the behavior's pairs, not the held-out split
    assert len(ds.test) == 80 and len(ds.train["test"]) != len(ds.test)
    with np.load(data / "mylog" / "arrays.npz") as z:
        assert "train.1.user" in z.files and "test.user" in z.files and "test.time" not in z.files


def _as_version_1(ds_dir: Path, behaviors: list[str]) -> None:
    """Rewrite a dataset in the version-1 layout (arrays keyed by behavior name), checksums recomputed."""
    with np.load(ds_dir / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for i, b in enumerate(behaviors):
        for field in ("user", "item", "time"):
            if f"train.{i}.{field}" in arrays:
                arrays[f"{b}.{field}"] = arrays.pop(f"train.{i}.{field}")
    with open(ds_dir / "arrays.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    manifest = json.loads((ds_dir / "manifest.json").read_text())
    manifest.update(schema_version=1, behaviors=behaviors,
                    train_interactions=dict(zip(behaviors, manifest["train_interactions"].values())))
    manifest["files"]["arrays.npz"] = hashlib.sha256((ds_dir / "arrays.npz").read_bytes()).hexdigest()
    manifest["sizes"]["arrays.npz"] = (ds_dir / "arrays.npz").stat().st_size
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (ds_dir / "manifest.json").write_text(json.dumps(manifest))


def test_version_1_datasets_still_load_unless_names_clash(data_dir, tmp_path):
    from cml_cli.errors import InputError

    v1 = tmp_path / "v1"
    shutil.copytree(data_dir / "synthetic", v1)
    _as_version_1(v1, ["view", "fav", "cart", "buy"])
    old, new = load_dataset(v1), load_dataset(data_dir / "synthetic")
    for b in new.behaviors:
        assert np.array_equal(old.train[b].user, new.train[b].user) and np.array_equal(old.train[b].item,
                                                                                          new.train[b].item)
    assert np.array_equal(old.test.neg, new.test.neg)
    _as_version_1(v1, ["view", "fav", "test", "buy"])  # a version-1 "test" behavior shares the split's arrays
    with pytest.raises(InputError, match="share the arrays of the split"):
        load_dataset(v1)


# ------------------------------------------------------------------ row 5: names read from files


def test_a_manifest_name_that_leaves_the_directory_is_refused(cml, data_dir, tmp_path):
    ds = tmp_path / "data" / "synthetic"
    shutil.copytree(data_dir / "synthetic", ds)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["name"] = "../../x"
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (ds / "manifest.json").write_text(json.dumps(manifest))
    runs = tmp_path / "a" / "b" / "runs"
    runs.mkdir(parents=True)
    before = snapshot(tmp_path)
    commands = [["train", "-d", "synthetic", "--set", "epochs=1"], ["ablate", "-d", "synthetic", "--variants", "cml"]]
    if importlib.util.find_spec("optuna") is not None:
        commands.append(["tune", "-d", "synthetic", "-m", "itemknn-merged"])
    for argv in commands:
        res = cml(*argv, "--data-dir", tmp_path / "data", "--runs-dir", runs)
        assert_clean_error(res, 2, str(ds / "manifest.json"), "not a valid name")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ rows 13, 16: temporaries, synthetic sources


@pytest.mark.parametrize("name", [".mine.999999.k.tmp", ".hidden", ".synthetic.1.x.old"])
def test_names_that_look_like_temporaries_are_refused(cml, tmp_path, name):
    res = cml("preprocess", "--dataset", "synthetic", "--name", name, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, "--name", "not a valid name")
    assert not (tmp_path / "data").exists()


def test_a_source_with_the_synthetic_format_is_refused(cml, tmp_path):
    (tmp_path / "x.csv").write_text("user,item,behavior\n")
    res = cml("preprocess", "--dataset", "synthetic", "--format", "synthetic", "--source", tmp_path / "x.csv",
              "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, "--source", "synthetic format reads no file")
    assert not (tmp_path / "data" / "synthetic").exists()


# ------------------------------------------------------------------ row 10: a full disk


def test_a_full_disk_during_preprocess_leaves_nothing(children, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    child = children.run(["preprocess", "--dataset", "synthetic", "--data-dir", data], {"fsize": 20_000})
    assert child.exitcode == 1, child.stderr
    assert "Traceback" not in child.stderr and len(child.stderr.strip().splitlines()) == 1, child.stderr
    assert "cannot write" in child.stderr and "File too large" in child.stderr
    assert os.listdir(data) == []
