"""A processed dataset whose arrays or manifest were edited and whose checksums were then
recomputed (so corruption detection cannot see it): loading validates the structure, so
training exits 2 naming the file and field, or (for an edit that changes nothing) gives
exactly the untampered result. Never a crash signal, never a silent change (issue 12, row 4).

The edits are drawn by hypothesis; each is trained in a forkserver child, so a segfault or
an abort would show as a negative exit code instead of killing the test run."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import strip_timing, train_argv
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

# Schema version 2: the behaviors' arrays by position (view is train.0, buy train.1).
ID_KEYS = ["train.0.user", "train.0.item", "train.1.user", "train.1.item", "test.user", "test.item", "test.neg",
           "valid.item", "valid.neg", "meta_users"]
MUTATIONS = ["huge", "negative", "one_past_end", "float", "shorter", "two_dim", "drop", "neg_columns", "n_items",
             "n_users", "behaviors_empty", "behaviors_unknown", "behaviors_twice", "count", "other_dataset",
             "no_manifest_checksum", "rewrite"]
HARMLESS = ("no_manifest_checksum", "rewrite")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(ds_dir: Path, mutation: str, key: str, columns: int, other: Path) -> bool:
    """Apply one edit to the dataset in ``ds_dir`` and recompute its checksums; False when the
    edit changes nothing (``two_dim`` of an array that is 2-D already, the harmless ones)."""
    manifest = json.loads((ds_dir / "manifest.json").read_text())
    with np.load(ds_dir / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    a = arrays.get(key)
    bound = manifest["n_users"] if key.endswith("user") or key == "meta_users" else manifest["n_items"]
    if mutation in ("huge", "negative", "one_past_end") and a is not None and a.size:
        a = a.copy()
        a.flat[0] = {"huge": 10**9, "negative": -1, "one_past_end": bound}[mutation]
    elif mutation == "float" and a is not None:
        a = a.astype(np.float64) + 0.5
    elif mutation == "shorter" and a is not None and len(a):
        a = a[:-1]
    elif mutation == "two_dim" and a is not None and a.ndim == 1:
        a = a[:, None]
    elif mutation == "two_dim":
        mutation = "rewrite"
    elif mutation == "drop":
        a = None
    elif mutation == "neg_columns":
        key = "test.neg"
        a = np.resize(arrays["test.neg"], (len(arrays["test.neg"]), columns))
    elif mutation == "n_items":
        manifest["n_items"] = int(arrays["train.0.item"].max())
    elif mutation == "n_users":
        manifest["n_users"] = 0
    elif mutation == "behaviors_empty":
        manifest["behaviors"] = []
    elif mutation == "behaviors_unknown":
        manifest["behaviors"] = ["view", "nope", "buy"]
    elif mutation == "behaviors_twice":
        manifest["behaviors"] = ["view", "view", "buy"]
    elif mutation == "count":
        manifest["train_interactions"]["view"] += 1
    elif mutation == "other_dataset":
        shutil.copy(other / "arrays.npz", ds_dir / "arrays.npz")
    if mutation not in ("other_dataset", "no_manifest_checksum", "rewrite") + tuple(
            m for m in MUTATIONS if m.startswith(("n_", "behaviors", "count"))):
        if a is None:
            arrays.pop(key, None)
        else:
            arrays[key] = a
    if mutation != "other_dataset":
        with open(ds_dir / "arrays.npz", "wb") as f:
            np.savez_compressed(f, **arrays)
    manifest["files"]["arrays.npz"] = _sha(ds_dir / "arrays.npz")
    manifest["sizes"]["arrays.npz"] = (ds_dir / "arrays.npz").stat().st_size
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if mutation == "no_manifest_checksum":
        manifest = body
    else:
        manifest["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (ds_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return mutation not in HARMLESS


@pytest.fixture(scope="module")
def sources(tmp_path_factory, children) -> dict:
    """The tiny synthetic dataset with 4 behaviors cut to view and buy, its one-epoch result, and
    another (larger) dataset whose arrays can be swapped in."""
    from cml_cli.data.preprocess import ReadOptions, preprocess

    root = tmp_path_factory.mktemp("tamper")
    preprocess("synthetic", None, ReadOptions(behaviors=["view", "buy"], size="tiny"), data_dir=root / "data")
    preprocess("synthetic", None, ReadOptions(behaviors=["view", "buy"], size="small"), data_dir=root / "other")
    child = children.run(train_argv(root / "data", root / "runs", "clean", "--set", "epochs=1"))
    assert child.exitcode == 0, child.stderr
    return {"root": root, "data": root / "data", "other": root / "other" / "synthetic",
            "result": strip_timing(child.json())}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.sampled_from(MUTATIONS), key=st.sampled_from(ID_KEYS), columns=st.sampled_from([5, 98, 100]))
def test_tampered_dataset_is_refused_or_unchanged(sources, children, mutation, key, columns):
    assume(not (mutation == "shorter" and key == "meta_users"))  # a shorter meta-user list is still a valid one
    with tempfile.TemporaryDirectory(dir=sources["root"]) as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(sources["data"], data)
        changed = tamper(data / "synthetic", mutation, key, columns, sources["other"])
        child = children.run(train_argv(data, Path(tmp) / "runs", "t", "--set", "epochs=1"))
    assert child.exitcode in (0, 2), (mutation, key, child.exitcode, child.stderr[-2000:])  # no crash signal
    if child.exitcode == 2:
        assert "Traceback" not in child.stderr
        assert "arrays.npz" in child.stderr or "manifest.json" in child.stderr, child.stderr
        assert len(child.stderr.strip().splitlines()) == 1, child.stderr
    else:  # only an edit that changes nothing may train, and then exactly as before
        assert not changed, (mutation, key, "trained on a tampered dataset")
        assert strip_timing(child.json()) == sources["result"], (mutation, key)
