"""The real datasets through ``preprocess``, and the ``cml preprocess`` command end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cml_cli.data.preprocess import preprocess
from cml_cli.data.store import load_dataset

# README counts of /work/shared/datasets (train interactions per behavior before validation).
EXPECTED = {
    "retailrocket": ("retailrocket/cml-format", (2174, 30113), {"view": 75374, "cart": 12456, "buy": 9551}, 2174),
    "tmall": ("tmall/cml-format", (31882, 31232), {"fav": 49482, "cart": 140068, "buy": 167862}, 10000),
    "ijcai": ("ijcai_15/cml-format", (17435, 35920), {"fav": 60204, "cart": 751, "buy": 131685}, 6102),
}


def _pairs(inter) -> np.ndarray:
    return inter.user.astype(np.int64) * 10**6 + inter.item.astype(np.int64)


@pytest.fixture(scope="module")
def processed(shared_datasets, tmp_path_factory):
    """Each real dataset preprocessed once per module: name -> (path, dataset)."""
    cache: dict = {}
    data_dir = tmp_path_factory.mktemp("data")

    def get(name: str, sub: str):
        if name not in cache:
            src = shared_datasets / sub
            if not src.is_dir():
                pytest.skip(f"{src} not present")
            cache[name] = preprocess(name, src, data_dir=data_dir)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(EXPECTED))
def test_cml_format_counts(processed, name):
    sub, shape, counts, n_test = EXPECTED[name]
    path, ds = processed(name, sub)
    stats = ds.stats()
    assert (stats["n_users"], stats["n_items"]) == shape
    assert stats["behaviors"] == list(counts)  # pv / click missing is fine
    assert stats["interactions"] == counts
    assert stats["n_test_users"] == n_test
    assert 0 < stats["n_valid_users"] <= n_test
    # validation pairs left the target training; test pairs never were in it
    tgt = ds.train["buy"]
    assert stats["train_interactions"]["buy"] == counts["buy"] - stats["n_valid_users"]
    assert not np.isin(ds.test.user * 10**6 + ds.test.item, _pairs(tgt)).any()
    assert not np.isin(ds.valid.user * 10**6 + ds.valid.item, _pairs(tgt)).any()
    manifest = json.loads((path / "manifest.json").read_text())
    missing = {"retailrocket": [], "tmall": ["pv"], "ijcai": ["click"]}[name]
    assert manifest["reader_info"]["missing_behaviors"] == missing
    # the saved dataset loads back identically
    back = load_dataset(path)
    assert back.stats() == ds.stats()
    for b in ds.behaviors:
        np.testing.assert_array_equal(back.train[b].user, ds.train[b].user)
        np.testing.assert_array_equal(back.train[b].item, ds.train[b].item)


def test_mbcgcn_format_counts(processed, shared_datasets):
    src = shared_datasets / "tmall/mbcgcn-format"
    path, ds = processed("tmall-mbcgcn", "tmall/mbcgcn-format")
    stats = ds.stats()
    assert (stats["n_users"], stats["n_items"]) == (15449, 11953)
    assert stats["behaviors"] == ["view", "cart", "buy"]
    assert stats["interactions"]["buy"] == 92180
    assert stats["n_test_users"] == 15449

    # view = npz training pairs plus the held-out view/test.txt pairs, de-duplicated
    adj = sp.load_npz(src / "view" / "s_adj_mat.npz").tocsr()
    r = adj[:15449, 15449:].tocoo()
    assert r.nnz == 858505
    held = np.loadtxt(src / "view" / "test.txt", dtype=np.int64, ndmin=2)
    view = np.union1d(r.row.astype(np.int64) * 10**6 + r.col, held[:, 0] * 10**6 + held[:, 1])
    assert stats["interactions"]["view"] == view.size >= 858505
    # cart = train.txt lines plus cart/test.txt, de-duplicated
    cart = set()
    for line in (src / "cart" / "train.txt").read_text().splitlines():
        u, *items = map(int, line.split())
        cart.update((u, i) for i in items)
    assert len(cart) == 180027
    cart.update(map(tuple, np.loadtxt(src / "cart" / "test.txt", dtype=np.int64, ndmin=2).tolist()))
    assert stats["interactions"]["cart"] == len(cart)
    info = json.loads((path / "manifest.json").read_text())["reader_info"]
    assert info["train_pairs"] == {"view": 858505, "cart": 180027, "buy": 92180}
    assert info["train_from"]["view"] == "s_adj_mat.npz"


# ---------------------------------------------------------------- CLI


def _assert_clean_failure(proc, data_dir: Path, match: str | None = None) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert err and "\n" not in err, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    if match:
        assert match in err, err
    assert not data_dir.exists() or not any(data_dir.iterdir()), list(data_dir.iterdir())


def test_cli_json_on_real_data(run_cli, shared_datasets, tmp_path):
    data_dir = tmp_path / "data"
    proc = run_cli("preprocess", "--dataset", "retailrocket", "--source", shared_datasets / "retailrocket/cml-format",
                   "--data-dir", data_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)  # exactly one JSON object, nothing else
    assert isinstance(stats, dict)
    assert stats["n_users"] == 2174 and stats["interactions"]["buy"] == 9551
    assert (data_dir / "retailrocket" / "manifest.json").is_file()
    assert [p.name for p in data_dir.iterdir()] == ["retailrocket"]


def test_cli_json_on_small_sources(run_cli, tmp_path, make_cml, make_mbcgcn):
    data_dir = tmp_path / "data"
    make_cml(tmp_path / "c")
    make_mbcgcn(tmp_path / "m")
    log = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    rows = [f"u{u},{rng.integers(200)},{['view', 'cart', 'buy'][rng.integers(3)]},{t}"
            for t, u in enumerate(rng.integers(0, 20, size=600))]
    log.write_text("user,item,behavior,timestamp\n" + "\n".join(rows) + "\n")
    for name, src in [("c", tmp_path / "c"), ("m", tmp_path / "m"), ("e", log)]:
        proc = run_cli("preprocess", "-d", name, "-s", src, "--data-dir", data_dir, "--json")
        assert proc.returncode == 0, proc.stderr
        stats = json.loads(proc.stdout)
        assert stats["name"] == name and stats["n_test_users"] > 0
    assert sorted(p.name for p in data_dir.iterdir()) == ["c", "e", "m"]


def _cml_source(tmp_path: Path, make_cml) -> Path:
    src = tmp_path / "src"
    make_cml(src)
    return src


def test_cli_missing_path(run_cli, tmp_path):
    proc = run_cli("preprocess", "-d", "x", "-s", tmp_path / "nope", "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "no such file or directory")


def test_cli_unknown_format(run_cli, tmp_path, make_cml):
    src = _cml_source(tmp_path, make_cml)
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--format", "xml", "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "unknown format 'xml'")


def test_cli_malicious_pickle(run_cli, tmp_path, make_cml, evil_pickle):
    src = _cml_source(tmp_path, make_cml)
    target = tmp_path / "PWNED"
    evil_pickle(src / "trn_cart", target)
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "refused pickle")
    assert not target.exists()


def test_cli_behaviors_with_different_shapes(run_cli, tmp_path, make_cml):
    src = _cml_source(tmp_path, make_cml)
    with open(src / "trn_view", "wb") as f:
        pickle.dump(sp.csr_matrix((31, 150), dtype=np.int64), f)
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "differs from")


def test_cli_ids_out_of_range(run_cli, tmp_path, make_cml):
    src = _cml_source(tmp_path, make_cml)
    with open(src / "tst_int", "wb") as f:
        pickle.dump([None] * 29 + [10_000], f)
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "out of range")


def test_cli_ids_out_of_range_mbcgcn(run_cli, tmp_path, make_mbcgcn):
    make_mbcgcn(tmp_path / "m")
    (tmp_path / "m" / "buy" / "test.txt").write_text("0\t100000\n")
    proc = run_cli("preprocess", "-d", "x", "-s", tmp_path / "m", "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "s_adj_mat.npz")


@pytest.mark.parametrize("which", ["cml", "events"])
def test_cli_empty_file(run_cli, tmp_path, make_cml, which):
    if which == "cml":
        src = _cml_source(tmp_path, make_cml)
        (src / "trn_buy").write_bytes(b"")
    else:
        src = tmp_path / "log.csv"
        src.write_bytes(b"")
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "empty file")


def test_cli_test_item_in_training(run_cli, tmp_path, make_cml):
    src = _cml_source(tmp_path, make_cml)
    with open(src / "trn_buy", "rb") as f:
        buy = pickle.load(f)
    tst = [None] * 30
    tst[3] = int(buy[3].indices[0])
    with open(src / "tst_int", "wb") as f:
        pickle.dump(tst, f)
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "also in the 'buy' training data")


def test_cli_malformed_events_and_markup_in_path(run_cli, tmp_path):
    d = tmp_path / "we[" / "]ird [bold]"  # the path holds the markup '[/]'
    d.mkdir(parents=True)
    src = d / "log.csv"
    src.write_text("user,item,behavior\n1,2,buy\n1,3,buy,4\n")
    proc = run_cli("preprocess", "-d", "x", "-s", src, "--data-dir", tmp_path / "data")
    _assert_clean_failure(proc, tmp_path / "data", "malformed file")
    assert str(src) in proc.stderr
