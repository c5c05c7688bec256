"""The processed on-disk format: round trip, checksums, atomic replacement."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest

from cml_cli.data.dataset import BuildOptions, Interactions, build_dataset
from cml_cli.data.readers import synthetic
from cml_cli.data.store import ARRAYS, MANIFEST, list_datasets, load_dataset, save_dataset
from cml_cli.errors import InputError, RunError


@pytest.fixture(scope="module")
def tiny():
    raw = synthetic.read("tiny", seed=3)
    return build_dataset(raw, "tiny", BuildOptions(seed=3, preset="default", source="synthetic:tiny"))


def assert_same(a, b) -> None:
    assert a.stats() == b.stats()
    assert (a.name, a.behaviors, a.n_users, a.n_items, a.seed) == (b.name, b.behaviors, b.n_users, b.n_items, b.seed)
    assert a.raw_counts == b.raw_counts
    for beh in a.behaviors:
        x, y = a.train[beh], b.train[beh]
        np.testing.assert_array_equal(x.user, y.user)
        np.testing.assert_array_equal(x.item, y.item)
        assert (x.time is None) == (y.time is None)
        if x.time is not None:
            np.testing.assert_array_equal(x.time, y.time)
    for split in ("test", "valid"):
        s, t = getattr(a, split), getattr(b, split)
        for arr in ("user", "item", "neg"):
            np.testing.assert_array_equal(getattr(s, arr), getattr(t, arr))
    np.testing.assert_array_equal(a.meta_users, b.meta_users)


def test_round_trip(tiny, tmp_data_dir):
    path = save_dataset(tiny, tmp_data_dir, extra={"format": "synthetic"})
    assert path == tmp_data_dir / "tiny"
    assert sorted(p.name for p in path.iterdir()) == [ARRAYS, MANIFEST]
    assert_same(load_dataset("tiny", tmp_data_dir), tiny)
    assert_same(load_dataset(path), tiny)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "synthetic" and manifest["n_users"] == tiny.n_users
    with np.load(path / ARRAYS, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_round_trip_without_times(tiny, tmp_data_dir):
    ds = tiny.with_behaviors(["cart"])
    ds.train = {b: Interactions(inter.user, inter.item, None) for b, inter in ds.train.items()}
    ds.name = "notime"
    back = load_dataset(save_dataset(ds, tmp_data_dir))
    assert back.behaviors == ["cart", "buy"] and back.train["buy"].time is None
    assert_same(back, ds)


def test_modified_arrays_detected(tiny, tmp_data_dir):
    path = save_dataset(tiny, tmp_data_dir)
    arrays = path / ARRAYS
    good = arrays.read_bytes()
    # same size, one byte different: only the checksum can tell
    arrays.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    with pytest.raises(InputError, match=f"{re.escape(str(arrays))}: checksum mismatch"):
        load_dataset(path)
    # a valid npz with one changed value, and a truncated file
    with np.load(io.BytesIO(good)) as z:
        data = {k: z[k] for k in z.files}
    buy = f"train.{tiny.behaviors.index('buy')}.item"  # schema version 2: behaviors by position
    data[buy][0] = (data[buy][0] + 1) % tiny.n_items
    np.savez_compressed(arrays, **data)
    with pytest.raises(InputError, match=f"{re.escape(str(arrays))}: "):
        load_dataset(path)
    arrays.write_bytes(good[:-10])
    with pytest.raises(InputError, match=f"{re.escape(str(arrays))}: "):
        load_dataset(path)
    arrays.write_bytes(good)
    assert_same(load_dataset(path), tiny)
    arrays.unlink()
    with pytest.raises(InputError, match="arrays.npz: missing"):
        load_dataset(path)


def test_bad_manifest(tiny, tmp_data_dir):
    path = save_dataset(tiny, tmp_data_dir)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: corrupt manifest"):
        load_dataset(path)
    (path / MANIFEST).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(InputError, match="unsupported schema version 99"):
        load_dataset(path)
    assert list_datasets(tmp_data_dir) == []  # unreadable manifests are skipped
    with pytest.raises(InputError, match="not found"):
        load_dataset("nothing", tmp_data_dir)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tiny, tmp_data_dir):
    save_dataset(tiny, tmp_data_dir)
    other = tiny.with_behaviors(["view"])
    path = save_dataset(other, tmp_data_dir)
    assert load_dataset(path).behaviors == ["view", "buy"]
    assert [p.name for p in tmp_data_dir.iterdir()] == ["tiny"]
    rows = list_datasets(tmp_data_dir)
    assert [r["name"] for r in rows] == ["tiny"] and rows[0]["path"] == str(path)


def test_failed_save_leaves_nothing(tiny, tmp_data_dir, monkeypatch):
    import cml_cli.data.store as store

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_json_atomic", boom)
    with pytest.raises(RunError, match="cannot write"):
        save_dataset(tiny, tmp_data_dir)
    assert list(tmp_data_dir.iterdir()) == []


def test_arrays_are_plain_npz(tiny, tmp_data_dir):
    path = save_dataset(tiny, tmp_data_dir)
    with zipfile.ZipFile(path / ARRAYS) as z:
        names = set(z.namelist())
    buy = tiny.behaviors.index("buy")
    assert {"test.user.npy", "test.neg.npy", "valid.item.npy", "meta_users.npy", f"train.{buy}.time.npy"} <= names


def test_to_hetero_data(tmp_path):
    """The README's PyG entry point: one (user, behavior, item) edge type per behavior."""
    from cml_cli.data.preprocess import preprocess

    _, ds = preprocess("synthetic", data_dir=tmp_path)
    data = ds.to_hetero_data()
    assert data["user"].num_nodes == ds.n_users and data["item"].num_nodes == ds.n_items
    for b in ds.behaviors:
        edge_index = data["user", b, "item"].edge_index
        assert edge_index.shape == (2, len(ds.train[b]))
        assert edge_index[0].tolist() == ds.train[b].user.tolist()
    assert data["test_item"].tolist() == ds.test.item.tolist()
