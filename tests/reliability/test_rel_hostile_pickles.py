"""Pickles that try to import or call anything outside the allow-list are refused without
executing anything; pickles that abuse the allowed classes (huge allocations, numpy's
crashing ``__setstate__``, ``__setitem__`` on a matrix) are refused too; legitimate pickles
of every protocol load."""

from __future__ import annotations

import builtins
import copyreg
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_clean_error

from cml_cli.data.readers.safepickle import safe_load
from cml_cli.errors import InputError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class Reduce:
    """Pickles as ``func(*args)`` (then ``BUILD state`` / list items / dict items)."""

    def __init__(self, func, args, state=None, listitems=None, dictitems=None):
        self.r = (func, args, state, listitems, dictitems)

    def __reduce__(self):
        func, args, state, li, di = self.r
        return (func, args, state, None if li is None else iter(li), None if di is None else iter(di))


class NewObj(Reduce):
    """Pickles as ``NEWOBJ cls`` (how real pickles create instances) plus the given state etc.;
    poses as an instance of ``cls`` because the pickler checks that."""

    def __init__(self, cls, args=(), state=None, listitems=None, dictitems=None):
        super().__init__(copyreg.__newobj__, (cls, *args), state, listitems, dictitems)
        self._cls = cls

    @property
    def __class__(self):
        return self._cls


def code_payloads(marker: Path) -> dict[str, object]:
    """Objects whose unpickling with plain ``pickle.load`` would create ``marker``."""
    m = str(marker)
    evil = Reduce(os.system, (f"touch {m}",))
    return {
        "os.system": evil,
        "builtins.eval": Reduce(builtins.eval, (f"open({m!r}, 'w').write('x')",)),
        "builtins.exec": Reduce(builtins.exec, (f"open({m!r}, 'w').write('x')",)),
        "subprocess.call": Reduce(subprocess.call, (["touch", m],)),
        "subprocess.Popen": Reduce(subprocess.Popen, (["touch", m],)),
        "builtins.__import__": Reduce(builtins.__import__, ("os",)),
        "builtins.getattr": Reduce(getattr, (Reduce(builtins.__import__, ("os",)), "system")),
        "builtins.open": Reduce(builtins.open, (m, "w")),
        "nested in a list": [1, None, evil],
        "nested in a dict": {"trn": evil},
        "in an object array": np.array([1, evil], dtype=object),
        # An allowed class (scipy CSR, created the way real pickles do) whose state holds a
        # forbidden global.
        "in a csr_matrix state": NewObj(sp.csr_matrix, (),
                                        {"_shape": (2, 2), "data": evil, "indices": np.zeros(0, np.int32),
                                         "indptr": np.zeros(3, np.int32), "maxprint": 50}),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_code_execution_is_refused(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    for name, obj in code_payloads(marker).items():
        path = tmp_path / f"{name.replace(' ', '_')}.p{protocol}"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(InputError, match="refused pickle") as e:
            safe_load(path)
        assert str(path) in str(e.value) and "forbidden global" in str(e.value), (name, e.value)
        assert not marker.exists(), f"{name} (protocol {protocol}) executed code"


HANDMADE = {
    # protocol 0 INST / protocol 1 OBJ: instantiate a class named in the stream
    "INST os.system": b"(S'touch PWNED'\nios\nsystem\n.",
    "INST allowed class": b"(I3\ninumpy\ndtype\n.",
    "OBJ allowed class": b"\x80\x01(cnumpy\ndtype\nK\x03o.",
    # persistent ids call persistent_load
    "BINPERSID": b"\x80\x02X\x04\x00\x00\x00evilQ.",
    # STACK_GLOBAL with names that are not strings
    "STACK_GLOBAL non-str": b"\x80\x04K\x01K\x02\x93.",
    # nt / posix spellings of system
    "posix.system": b"\x80\x02cposix\nsystem\nX\x0b\x00\x00\x00touch PWNEDq\x00\x85R.",
    "nt.system": b"\x80\x02cnt\nsystem\nX\x0b\x00\x00\x00touch PWNEDq\x00\x85R.",
    # A BYTEARRAY8 that claims a terabyte
    "BYTEARRAY8 1 TiB": b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b"xx.",
    # An extension code nobody registered
    "EXT1": b"\x80\x02\x82\x07.",
}


@pytest.mark.parametrize("name", list(HANDMADE))
def test_handmade_streams_are_refused(tmp_path, name):
    path = tmp_path / "x.pkl"
    path.write_bytes(HANDMADE[name])
    os.chdir(tmp_path)
    with pytest.raises(InputError, match=str(path)):
        safe_load(path)
    assert not (tmp_path / "PWNED").exists()


def abuse_payloads() -> dict[str, object]:
    """Only allowed globals, used to allocate huge memory or crash numpy."""
    short_object_state = (1, (10**6,), np.dtype(object), False, [1])
    csr = sp.csr_matrix(np.eye(3))
    return {
        "csr_matrix called with a huge shape": Reduce(sp.csr_matrix, ((2**31 - 2, 2**31 - 2),)),
        "ndarray called: 10**9 objects": Reduce(np.ndarray, ((10**9,), np.dtype(object))),
        "ndarray via NEWOBJ": NewObj(np.ndarray, ((10**9,), np.dtype(object))),
        "_reconstruct with a huge shape": Reduce(_reconstruct, (np.ndarray, (10**10,), b"b")),
        "object array shorter than its shape (segfaults numpy)": Reduce(
            _reconstruct, (np.ndarray, (0,), b"b"), short_object_state),
        "bytes shorter than the shape": Reduce(
            _reconstruct, (np.ndarray, (0,), b"b"), (1, (10**9,), np.dtype("i8"), False, b"12345678")),
        "__setitem__ on a csr_matrix": NewObj(sp.csr_matrix, (), None, None,
                                              [((slice(0, 2**31 - 2), 0), 1.0)]),
        "append to an array": Reduce(_reconstruct, (np.ndarray, (0,), b"b"), None, [1, 2]),
        "csr with indptr beyond its data": NewObj(sp.csr_matrix, (), {
            "_shape": (3, 3), "data": csr.data, "indices": csr.indices,
            "indptr": np.array([0, 1, 2, 10**9], dtype=np.int64), "maxprint": 50}),
        "csr with a shape beyond int32": NewObj(sp.csr_matrix, (), {
            "_shape": (3, 2**40), "data": csr.data, "indices": csr.indices, "indptr": csr.indptr}),
        "coo claiming 2**31-1 x 2**31-1": sp.coo_matrix(([1.0], ([0], [0])), shape=(2**31 - 1, 2**31 - 1)),
        "coo index beyond its shape": NewObj(sp.coo_matrix, (), {
            "_shape": (2, 2), "data": np.ones(1), "coords": (np.array([0]), np.array([2**40]))}),
        "structured dtype": np.zeros(2, dtype=[("a", "i8"), ("b", "O")]),
        "dtype with the object flag on int64": Reduce(np.dtype, ("i8", False, True),
                                                      (3, "<", None, None, None, -1, -1, 63)),
        "csr state that is not a dict": NewObj(sp.csr_matrix, (), ("x", "y")),
        "bare csr without state": NewObj(sp.csr_matrix),
        "integer beyond int64": [1, 2**70],
        "copyreg._reconstructor of object": Reduce(copyreg._reconstructor, (object, object, None)),
    }


def test_abuse_of_allowed_globals_is_refused_without_blowing_up(children, tmp_path):
    """Loaded in a child process whose address space is capped at 1 GiB above its start:
    a payload that allocated instead of being refused would fail there, not here."""
    paths = []
    for k, (name, obj) in enumerate(abuse_payloads().items()):
        for protocol in (2, 5):
            path = tmp_path / f"abuse{k}-p{protocol}.pkl"
            path.write_bytes(pickle.dumps(obj, protocol=protocol))
            paths.append((name, str(path)))
    from reliability_workers import load_payloads

    out = tmp_path / "results.json"
    p = children.ctx.Process(target=load_payloads, args=([p for _, p in paths], str(out), 1 << 30))
    p.start()
    p.join(120)
    assert p.exitcode == 0, f"the loader process died ({p.exitcode})"
    results = json.loads(out.read_text())
    for name, path in paths:
        r = results[path]
        assert r["outcome"].startswith("InputError: " + path), (name, r)
        assert r["seconds"] < 5, (name, r)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_legitimate_pickles_load_in_every_protocol(tmp_path, protocol):
    m = sp.csr_matrix(np.array([[0, 5], [7, 0], [0, 0]], dtype=np.int64))
    readonly = np.arange(6, dtype=np.int32)
    readonly.setflags(write=False)
    objs = {"csr": m, "csc": m.tocsc(), "coo": m.tocoo(), "float csr": m.astype(np.float32),
            "tst_int": [3, None, 1], "meta": np.arange(5), "readonly": readonly, "fortran": np.asfortranarray(
                np.arange(6.0).reshape(2, 3)), "objects": np.array([1, None], dtype=object),
            "scalar": np.int64(7), "nested": {"a": (1, 2.5, "s", b"b", None, True)}, "big int": 2**63 - 1}
    for name, obj in objs.items():
        path = tmp_path / f"{name}.p{protocol}"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        back = safe_load(path)
        assert type(back) is type(obj), name
        if sp.issparse(obj):
            assert back.shape == obj.shape and (back != obj).nnz == 0 and back.dtype == obj.dtype
        elif isinstance(obj, np.ndarray):
            assert np.array_equal(back, obj) and back.dtype == obj.dtype and back.shape == obj.shape
        else:
            assert back == obj


def test_cli_refuses_hostile_cml_dataset(make_cml, tmp_path):
    """The real ``cml preprocess`` on a CML directory whose matrix is an os.system pickle:
    exit 2, one line naming the file, no traceback, nothing executed, nothing written."""
    src = tmp_path / "src"
    make_cml(src)
    marker = tmp_path / "PWNED"
    (src / "trn_buy").write_bytes(pickle.dumps(Reduce(os.system, (f"touch {marker}",)), protocol=2))
    env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    res = subprocess.run([sys.executable, "-m", "cml_cli", "preprocess", "-d", "tmall", "--format", "cml",
                          "--source", str(src), "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{src / 'trn_buy'}: refused pickle (forbidden global" in " ".join(res.stderr.split())
    assert not marker.exists() and not (tmp_path / "data" / "tmall").exists()


@pytest.mark.parametrize("target", ["trn_cart", "tst_int", "meta_multi_single_beh_user_index_shuffle"])
def test_cli_in_process_every_cml_file_is_guarded(cml, make_cml, tmp_path, target):
    src = tmp_path / "src"
    make_cml(src)
    marker = tmp_path / "PWNED"
    (src / target).write_bytes(pickle.dumps([Reduce(builtins.exec, (f"open({str(marker)!r},'w')",))], protocol=4))
    res = cml("preprocess", "-d", "tmall", "--format", "cml", "--source", src, "--data-dir", tmp_path / "data")
    assert_clean_error(res, 2, f"{src / target}: refused pickle")
    assert not marker.exists()
