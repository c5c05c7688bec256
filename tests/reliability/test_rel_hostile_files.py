"""Files that are huge, empty, binary garbage, or whose ids overflow int32 / int64: a clear
error naming the file (exit 2, no traceback), never a crash or a memory blow-up. Huge files
are sparse (``truncate``): nothing of that size is ever written or read."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_clean_error

GARBAGE = bytes(random.Random(7).randrange(256) for _ in range(4096))


def sparse_file(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    assert path.stat().st_size == size


def _pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=4))


# ------------------------------------------------------------------ cml pickles

CML_CASES = {
    "huge (3 GiB, sparse)": ("trn_buy", lambda p: sparse_file(p, 3 << 30), "larger than the"),
    "empty": ("trn_buy", lambda p: p.write_bytes(b""), "empty file"),
    "binary garbage": ("trn_buy", lambda p: p.write_bytes(GARBAGE), "pickle"),
    "zeros": ("trn_cart", lambda p: p.write_bytes(bytes(1000)), "pickle"),
    "truncated": ("trn_buy", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "pickle"),
    "test id beyond int32": ("tst_int", lambda p: _pickle(p, [2**31] * 30), "out of range"),
    "test id beyond int64": ("tst_int", lambda p: _pickle(p, [2**70] * 30), "does not fit in 64 bits"),
    "test id a float": ("tst_int", lambda p: _pickle(p, [1.5] * 30), "expected an item id"),
    "meta ids beyond int64": ("meta_multi_single_beh_user_index_shuffle",
                              lambda p: _pickle(p, [1, 2**64 + 1]), "does not fit in 64 bits"),
    "meta ids beyond int32": ("meta_multi_single_beh_user_index_shuffle",
                              lambda p: _pickle(p, np.array([1, 2**40], dtype=np.int64)), "out of range"),
    "matrix shape beyond int32": ("trn_buy", lambda p: _pickle(
        p, sp.csr_matrix((np.ones(1), np.array([2**31 + 5], dtype=np.int64), np.array([0, 1], dtype=np.int64)),
                         shape=(1, 2**31 + 6))), "out of range"),
    "matrix not a matrix": ("trn_buy", lambda p: _pickle(p, {"a": 1}), "expected a scipy sparse matrix"),
}


@pytest.mark.parametrize("case", list(CML_CASES))
def test_cml_source(cml, make_cml, tmp_path, case):
    name, damage, needle = CML_CASES[case]
    src = tmp_path / "src"
    make_cml(src, behaviors=("cart", "buy"))
    damage(src / name)
    res = cml("preprocess", "-d", "tmall", "--format", "cml", "--source", src, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, str(src / name), needle)
    assert not (tmp_path / "data" / "tmall").exists()


# ------------------------------------------------------------------ mbcgcn text

MB_CASES = {
    "huge (8 GiB + 1, sparse)": ("buy/train.txt", lambda p: sparse_file(p, (8 << 30) + 1), "larger than the"),
    "empty": ("buy/train.txt", lambda p: p.write_bytes(b""), "empty file"),
    "binary garbage": ("buy/train.txt", lambda p: p.write_bytes(GARBAGE), "non-integer token"),
    "NUL bytes": ("cart/train.txt", lambda p: p.write_bytes(bytes(100)), "non-integer token"),
    "id beyond int32": ("buy/train.txt", lambda p: p.write_text(f"0\t{2**31}\n1\t3\n"), "larger than 2147483647"),
    "id beyond int64": ("buy/test.txt", lambda p: p.write_text(f"0\t{10**30}\n"), "too large"),
    "negative id": ("cart/train.txt", lambda p: p.write_text("0\t-4\n"), "negative id"),
    "adjacency garbage": ("view/s_adj_mat.npz", lambda p: p.write_bytes(GARBAGE), "not a readable scipy sparse"),
    "adjacency empty": ("view/s_adj_mat.npz", lambda p: p.write_bytes(b""), "not a readable scipy sparse"),
}


@pytest.mark.parametrize("case", list(MB_CASES))
def test_mbcgcn_source(cml, make_mbcgcn, tmp_path, case):
    name, damage, needle = MB_CASES[case]
    src = tmp_path / "src"
    make_mbcgcn(src)
    damage(src / name)
    res = cml("preprocess", "-d", "mb", "--format", "mbcgcn", "--source", src, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, str(src / name), needle)


# ------------------------------------------------------------------ event logs

EV_HEADER = "user,item,behavior,timestamp\n"
EV_CASES = {
    "empty": ("log.csv", b"", "empty file"),
    "header only": ("log.csv", EV_HEADER.encode(), "no events"),
    "binary garbage": ("log.csv", GARBAGE, ""),
    "zeros": ("log.csv", bytes(5000), ""),
    "not UTF-8": ("log.csv", (EV_HEADER + "1,2,buy,3\n").encode() + b"\xff\xfe,1,buy,4\n", "UTF-8"),
    "garbage gzip": ("log.csv.gz", GARBAGE, "malformed"),
    "garbage parquet": ("log.parquet", GARBAGE, "parquet"),
    "timestamp beyond int64": ("log.csv", (EV_HEADER + "1,2,buy,1e30\n1,3,buy,2\n").encode(), "timestamp"),
}


@pytest.mark.parametrize("case", list(EV_CASES))
def test_events_source(cml, tmp_path, case):
    name, content, needle = EV_CASES[case]
    src = tmp_path / name
    src.write_bytes(content)
    res = cml("preprocess", "-d", "log", "--source", src, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, str(src), needle)


def test_events_ids_beyond_int64_with_an_integer_preset(cml, tmp_path):
    """Taobao's ids are integers: 30-digit ids are refused, not wrapped around."""
    src = tmp_path / "UserBehavior.csv"
    src.write_text(f"{10**30},1,1,pv,5\n{10**30},2,1,buy,6\n{10**30},3,1,buy,7\n")
    res = cml("preprocess", "-d", "taobao", "--source", src, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, str(src), "user id")


def test_events_ids_beyond_int32_are_remapped(tmp_path):
    """Raw ids far beyond int32 are fine in an event log: they are remapped to 0..n-1."""
    from cml_cli.data.readers import events

    big = 2**40
    rows = [f"{big + u},{big * 2 + i},buy,{10 * u + i}" for u in range(3) for i in range(3)]
    src = tmp_path / "log.csv"
    src.write_text(EV_HEADER + "\n".join(rows) + "\n")
    raw = events.read(src)
    assert raw.n_users == 3 and raw.n_items == 3
    assert raw.test_user.max() < 3 and raw.train["buy"].item.max() < 3


# ------------------------------------------------------------------ processed datasets


def test_huge_processed_dataset_is_refused_without_reading(cml, fresh_data_dir, tmp_path):
    arrays = fresh_data_dir / "synthetic" / "arrays.npz"
    sparse_file(arrays, 64 << 30)
    res = cml("train", "-d", "synthetic", "--data-dir", fresh_data_dir, "--runs-dir", tmp_path / "runs",
              "--set", "epochs=1")
    assert_clean_error(res, 2, str(arrays), "checksum mismatch")


def test_huge_safe_load_is_refused_before_reading(tmp_path):
    from cml_cli.data.readers.safepickle import MAX_BYTES, safe_load
    from cml_cli.errors import InputError

    path = tmp_path / "big.pkl"
    sparse_file(path, MAX_BYTES + 1)
    with pytest.raises(InputError, match=f"{path}: .* larger than"):
        safe_load(path)
    os.unlink(path)


@pytest.mark.xfail(reason="cml_cli/data/readers/events.py (outside this suite's files) quotes the whole header "
                   "line in its 'missing column(s)' error: a file of NUL bytes gives a message as long as the "
                   "file (3 GiB file, 3 GiB message and several GiB of memory)", strict=False)
def test_events_error_message_stays_short(tmp_path):
    from cml_cli.data.readers import events
    from cml_cli.errors import InputError

    src = tmp_path / "log.csv"
    src.write_bytes(bytes(1 << 20))
    with pytest.raises(InputError) as e:
        events.read(src)
    assert len(str(e.value)) < 2000
