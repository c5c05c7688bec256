"""Bounded fuzzing of the readers: whatever the bytes, a reader returns data or raises
:class:`InputError`; anything else (another exception, a crash, a hang) is a bug. Inputs that
ever broke a reader are kept below as explicit regression cases."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cml_cli.data.readers import cml as cml_reader
from cml_cli.data.readers import events, mbcgcn
from cml_cli.data.readers.safepickle import safe_load
from cml_cli.errors import InputError

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _seeds() -> list[bytes]:
    m = sp.csr_matrix(np.array([[0, 5], [7, 0]], dtype=np.int64))
    objs = [m, m.tocoo(), [1, None, 3], np.arange(4), {"a": (1, 2.5)}]
    return [pickle.dumps(o, protocol=p) for o in objs for p in range(pickle.HIGHEST_PROTOCOL + 1)]


SEEDS = _seeds()


@st.composite
def mutated_pickles(draw) -> bytes:
    """A valid pickle with a few bytes flipped, inserted, deleted or the stream cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[pos:]
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


def _load_bytes(data: bytes, tmp: Path):
    path = tmp / "fuzz.pkl"
    path.write_bytes(data)
    try:
        return safe_load(path)
    except InputError as e:
        assert str(path) in str(e)
        return None


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), mutated_pickles()))
def test_fuzz_safe_load(data):
    with tempfile.TemporaryDirectory() as d:
        _load_bytes(data, Path(d))


# ------------------------------------------------------------------ cml reader end to end

ids = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**31 - 1, 2**63 - 1, -(2**63), 2**64, 10**30]))
cells = st.one_of(st.none(), ids, st.floats(allow_nan=True), st.text(max_size=3), st.booleans())


@st.composite
def cml_objects(draw):
    kind = draw(st.sampled_from(["list", "array", "csr", "coo", "other"]))
    if kind == "list":
        return draw(st.lists(cells, max_size=40))
    if kind == "array":
        return np.array(draw(st.lists(st.integers(-5, 2**40), max_size=40)), dtype=np.int64)
    if kind in ("csr", "coo"):
        n = draw(st.integers(0, 12))
        rows = np.array(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)), dtype=np.int64)
        cols = np.array(draw(st.lists(st.integers(0, 200), min_size=n, max_size=n)), dtype=np.int64)
        vals = np.array(draw(st.lists(st.integers(-5, 10**12), min_size=n, max_size=n)), dtype=np.int64)
        shape = (draw(st.integers(int(rows.max(initial=-1)) + 1, 45)),
                 draw(st.integers(int(cols.max(initial=-1)) + 1, 210)))
        m = sp.coo_matrix((vals, (rows, cols)), shape=shape)
        return m.tocsr() if kind == "csr" else m
    return draw(st.one_of(cells, st.dictionaries(st.text(max_size=2), cells, max_size=3)))


@FUZZ
@given(buy=cml_objects(), cart=cml_objects(), tst=cml_objects(), meta=st.one_of(st.none(), cml_objects()))
def test_fuzz_cml_reader(buy, cart, tst, meta):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d)
        for name, obj in (("trn_buy", buy), ("trn_cart", cart), ("tst_int", tst),
                          ("meta_multi_single_beh_user_index_shuffle", meta)):
            if obj is not None:
                (src / name).write_bytes(pickle.dumps(obj, protocol=4))
        try:
            raw = cml_reader.read(src)
        except InputError:
            return
        for inter in raw.train.values():
            assert inter.user.dtype == np.int64 and inter.item.dtype == np.int64
            assert inter.user.size == 0 or (0 <= inter.user.min() and inter.user.max() < raw.n_users)


# ------------------------------------------------------------------ events CSV

tokens = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["buy", "pv", "cart", "fav", "", " ", '"', '""', "nan", "NaN", "inf", "-0", "1e308",
                     "1.5", "0x10", "\x00", "é", "1,2", "\r", "buy "]),
    st.text(max_size=5),
)


@st.composite
def event_logs(draw) -> bytes:
    header = draw(st.sampled_from(["user,item,behavior,timestamp", "user,item,behavior", "user,item,behavior,",
                                   "user,user,behavior", "a,b,c"]))
    width = draw(st.integers(2, 5))
    rows = draw(st.lists(st.lists(tokens, min_size=width, max_size=width), max_size=12))
    text = header + "\n" + "\n".join(",".join(r) for r in rows)
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        data += draw(st.binary(max_size=20))
    return data


@FUZZ
@given(data=st.one_of(event_logs(), st.binary(max_size=200)), ext=st.sampled_from([".csv", ".tsv", ".csv.gz"]))
def test_fuzz_events_reader(data, ext):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"log{ext}"
        path.write_bytes(data)
        try:
            raw = events.read(path)
        except InputError as e:
            assert str(path) in str(e) or "behaviors" in str(e)
            return
        assert raw.n_users > 0 and raw.n_items > 0 and raw.test_user.size > 0


# ------------------------------------------------------------------ mbcgcn text

mb_tokens = st.one_of(st.integers(-5, 60).map(str), st.sampled_from([str(2**31), str(2**63), "9" * 25, "+3", "-", "1.0",
                                                                     "", "\t", "\x0b", "\xa0"]))


@st.composite
def mb_text(draw) -> bytes:
    lines = draw(st.lists(st.lists(mb_tokens, min_size=1, max_size=5), max_size=10))
    sep = draw(st.sampled_from(["\t", " ", "  ", "\t\t"]))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return eol.join(sep.join(line) for line in lines).encode("utf-8")


@FUZZ
@given(data=st.one_of(mb_text(), st.binary(max_size=200)), one=st.booleans())
def test_fuzz_mbcgcn_lists(data, one):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.txt"
        path.write_bytes(data)
        try:
            user, item = mbcgcn._read_lists(path, one_item=one)
        except InputError as e:
            assert str(path) in str(e)
            return
        assert user.dtype == np.int64 and item.dtype == np.int64 and user.shape == item.shape
        assert (user >= 0).all() and (item >= 0).all() and (item <= mbcgcn.MAX_ID).all()


@FUZZ
@given(train=mb_text(), test=mb_text(), cart=st.one_of(st.none(), mb_text()))
def test_fuzz_mbcgcn_reader(train, test, cart):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d)
        (src / "buy").mkdir()
        (src / "buy" / "train.txt").write_bytes(train)
        (src / "buy" / "test.txt").write_bytes(test)
        if cart is not None:
            (src / "cart").mkdir()
            (src / "cart" / "train.txt").write_bytes(cart)
        try:
            raw = mbcgcn.read(src)
        except InputError:
            return
        assert raw.n_users > 0 and raw.n_items > 0


# ------------------------------------------------------------------ atheris (coverage-guided)

ATHERIS_HARNESS = r'''
import sys, tempfile, os
import atheris
import numpy, scipy.sparse, pickle  # not instrumented: only cml_cli is
with atheris.instrument_imports(include=["cml_cli"]):
    from cml_cli.data.readers.safepickle import safe_load
    from cml_cli.data.readers import mbcgcn
from cml_cli.errors import InputError
from pathlib import Path
tmp = Path(tempfile.mkdtemp())
pkl, txt = tmp / "f.pkl", tmp / "train.txt"

def one(data: bytes):
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 1)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    path = pkl if which == 0 else txt
    path.write_bytes(body)
    try:
        safe_load(path) if which == 0 else mbcgcn._read_lists(path)
    except InputError:
        pass

atheris.Setup(sys.argv, one)
atheris.Fuzz()
'''


def test_atheris_bounded(tmp_path):
    """Coverage-guided fuzzing of ``safe_load`` and the MB-CGCN parser for a few seconds."""
    pytest.importorskip("atheris")
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k, seed in enumerate(SEEDS):
        (corpus / f"seed{k}").write_bytes(b"\x00" + seed)
    (corpus / "text").write_bytes(b"\x01" + b"0\t1\t2\n1\t3\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(harness), "-max_total_time=6", "-rss_limit_mb=2048",
                          "-timeout=10", f"-artifact_prefix={tmp_path}/", str(corpus)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))
    assert res.returncode == 0 and not crashes, (crashes, res.stderr[-3000:])
    assert "Done" in res.stderr, res.stderr[-3000:]


# ------------------------------------------------------------------ regressions

REGRESSIONS = {
    # numpy's __setstate__ segfaulted on an object array whose item list is shorter than its shape
    "short object array": (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85c_codecs\nencode\nX\x01\x00\x00\x00b"
        b"X\x06\x00\x00\x00latin1\x86R\x87R(K\x01J@B\x0f\x00\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R"
        b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89]K\x01atb."),
    # a Python int beyond int64 in tst_int made the cml reader crash with OverflowError
    "int beyond int64": pickle.dumps([2**70], protocol=2),
    # legitimate protocol 0/1/2 and 5 numpy pickles used to be refused (_codecs, copyreg, _frombuffer)
    "protocol 0 csr": pickle.dumps(sp.csr_matrix(np.eye(2)), protocol=0),
    "protocol 5 array": pickle.dumps(np.arange(3), protocol=5),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regressions(tmp_path, name):
    out = _load_bytes(REGRESSIONS[name], tmp_path)
    if name.startswith("protocol"):
        assert out is not None
    else:
        assert out is None


def test_regression_stream_is_what_it_claims():
    """The hand-written segfault stream above really is the object array of 10**6 items."""
    ops = [op.name for op, _, _ in __import__("pickletools").genops(io.BytesIO(REGRESSIONS["short object array"]))]
    assert ops[-2:] == ["BUILD", "STOP"] and "REDUCE" in ops
