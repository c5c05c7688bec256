"""Loading third-party pickles through an allow-list, so they cannot run code.

A pickle is a small program: besides importing globals (``find_class``) it can call them
(``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``), set state on objects (``BUILD``) and call
``append`` / ``__setitem__`` on whatever sits on its stack. Restricting imports alone is
not enough: an allowed class called with hostile arguments can allocate terabytes
(``ndarray((10**12,), object)``) and numpy's ``__setstate__`` crashes the interpreter on an
object array whose item list is shorter than its shape. So this loader runs the pure-Python
unpickler with every code-running opcode replaced:

* imports: only numpy arrays / dtypes / scalars, scipy CSR / CSC / COO matrices and the
  helpers their pickles use (``_reconstruct``, ``_frombuffer``, ``_codecs.encode``,
  ``copyreg._reconstructor``), each returned as a guard that checks its arguments;
* calls: only those guards; ``NEWOBJ`` only creates empty sparse matrices; ``INST``/``OBJ``
  are refused;
* ``BUILD``: only on arrays, dtypes and sparse matrices, with states whose sizes agree
  (bytes == shape x itemsize, item lists == shape, indices within the shape); sparse
  matrices are rebuilt from their validated components;
* ``APPEND``/``SETITEM``/``ADDITEMS``: only on real lists, dicts and sets;
* lengths read from the stream never exceed the file; integers must fit in int64; sparse
  matrix dimensions fit in int32 and are plausible for the file's size.

Anything else is refused with :class:`~cml_cli.errors.InputError` naming the file.
"""

from __future__ import annotations

import _compat_pickle
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cml_cli.errors import InputError

MAX_BYTES = 2 << 30
MAX_DIM = 2**31 - 1  # user and item ids must fit in int32
INT64 = (-(2**63), 2**63 - 1)
MAX_ELEMENTS = 2**40

_SPARSE = {"csr_matrix": sp.csr_matrix, "csc_matrix": sp.csc_matrix, "coo_matrix": sp.coo_matrix}
_SPARSE_CLASSES = tuple(_SPARSE.values())


class Refused(pickle.UnpicklingError):
    """The pickle tries something outside the allow-list."""


def _numpy_attr(modules: tuple[str, ...], name: str):
    import importlib

    for m in modules:
        try:
            return getattr(importlib.import_module(m), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(name)


_np_reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
_np_scalar = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "scalar")


def _shape(shape, what: str) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
            type(d) is int and 0 <= d <= 2**62 for d in shape):
        raise Refused(f"{what}: bad shape {str(shape)[:80]}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise Refused(f"{what}: shape {shape} is too large")
    return shape


def _plain_dtype(dtype, what: str, allow_object: bool = False) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise Refused(f"{what}: expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.subdtype is not None or dtype.names is not None:
        raise Refused(f"{what}: structured or sub-array dtype {dtype} not allowed")
    if dtype.hasobject and not (allow_object and dtype == np.dtype(object)):
        raise Refused(f"{what}: object dtype not allowed here")
    return dtype


def _raw_bytes(raw, what: str) -> int:
    if isinstance(raw, (bytes, bytearray)):
        return len(raw)
    if isinstance(raw, memoryview):
        return raw.nbytes
    if isinstance(raw, str):  # Python 2 pickles read with encoding="latin1"
        return len(raw)
    raise Refused(f"{what}: expected raw bytes, got {type(raw).__name__}")


# ------------------------------------------------------------------ guarded callables


def _reconstruct(subtype, shape, dtype_code):
    """``ndarray.__reduce__``'s constructor: an empty array, filled by ``BUILD``."""
    if subtype is not np.ndarray:
        raise Refused("_reconstruct: only numpy.ndarray")
    if math.prod(_shape(shape, "_reconstruct")) > 1 or not isinstance(dtype_code, (bytes, str)) or len(dtype_code) > 4:
        raise Refused("_reconstruct: unexpected arguments")
    return _np_reconstruct(np.ndarray, (0,), b"b")


def _scalar(dtype, raw=None):
    dtype = _plain_dtype(dtype, "numpy scalar")
    if raw is None or _raw_bytes(raw, "numpy scalar") != dtype.itemsize:
        raise Refused("numpy scalar: data does not match its dtype")
    return _np_scalar(dtype, raw)


def _frombuffer(buf, dtype, shape, order):
    """Protocol 5's in-band array constructor."""
    dtype = _plain_dtype(dtype, "numpy array")
    shape = _shape(shape, "numpy array")
    if order not in ("C", "F") or _raw_bytes(buf, "numpy array") != math.prod(shape) * dtype.itemsize:
        raise Refused("numpy array: buffer does not match its shape and dtype")
    if isinstance(buf, str):
        raise Refused("numpy array: expected a buffer")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _dtype(obj, align=False, copy=False):
    if not isinstance(obj, str) or len(obj) > 16 or type(align) is not bool or type(copy) is not bool:
        raise Refused(f"numpy dtype: only simple type codes, got {str(obj)[:40]!r}")
    try:
        return _plain_dtype(np.dtype(obj, align, copy), "numpy dtype", allow_object=True)
    except TypeError as e:
        raise Refused(f"numpy dtype: {e}") from None


def _encode(text, encoding="utf-8"):
    """``_codecs.encode``: how protocols 0-2 store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("_codecs.encode: only latin1 text")
    return text.encode("latin1")


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor``: how protocols 0 and 1 create objects."""
    if cls not in _SPARSE_CLASSES or base is not object or state is not None:
        raise Refused("copyreg._reconstructor: only empty scipy sparse matrices")
    return object.__new__(cls)


_CALLABLE = {_reconstruct, _scalar, _frombuffer, _dtype, _encode, _reconstructor}

_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}
for _m in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _GLOBALS[(_m, "_reconstruct")] = _reconstruct
    _GLOBALS[(_m, "scalar")] = _scalar
for _m in ("numpy.core.numeric", "numpy._core.numeric"):
    _GLOBALS[(_m, "_frombuffer")] = _frombuffer
for _name, _cls in _SPARSE.items():
    _short = _name.split("_")[0]
    for _m in (f"scipy.sparse.{_short}", f"scipy.sparse._{_short}", "scipy.sparse"):
        _GLOBALS[(_m, _name)] = _cls

#: The globals a pickle may name (module, name).
ALLOWED = frozenset(_GLOBALS)


# ------------------------------------------------------------------ BUILD checks


def _build_array(inst: np.ndarray, state) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise Refused("numpy array: unexpected state")
    shape, dtype, fortran, raw = state[-4:]
    if len(state) == 5 and state[0] != 1:
        raise Refused("numpy array: unknown state version")
    shape = _shape(shape, "numpy array")
    dtype = _plain_dtype(dtype, "numpy array", allow_object=True)
    if type(fortran) is not bool:
        raise Refused("numpy array: unexpected state")
    n = math.prod(shape)
    if dtype.hasobject:
        if not isinstance(raw, list) or len(raw) != n:
            raise Refused(f"numpy array: {n} objects expected")
    elif _raw_bytes(raw, "numpy array") != n * dtype.itemsize:
        raise Refused("numpy array: data size does not match shape and dtype")
    inst.__setstate__(state)


def _build_dtype(inst: np.dtype, state) -> None:
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise Refused("numpy dtype: unexpected state")
    _, order, sub, names, fields, elsize, align, flags = state[:8]
    if order not in ("<", ">", "|", "=") or sub is not None or names is not None or fields is not None:
        raise Refused("numpy dtype: only simple dtypes")
    if elsize not in (-1, inst.itemsize) or align not in (-1, inst.alignment) or flags != inst.flags:
        raise Refused("numpy dtype: state does not match the type")
    if len(state) == 9 and state[8] is not None:
        raise Refused("numpy dtype: metadata not allowed")
    inst.__setstate__(state)


def _index_array(a, what: str, length: int | None = None) -> np.ndarray:
    if type(a) is not np.ndarray or a.ndim != 1 or a.dtype.kind not in "iu":
        raise Refused(f"sparse matrix: {what} must be a 1-D integer array")
    if length is not None and a.shape[0] != length:
        raise Refused(f"sparse matrix: {what} has {a.shape[0]} entries, expected {length}")
    return a


def _in_range(a: np.ndarray, hi: int, what: str) -> None:
    if a.size and (int(a.min()) < 0 or int(a.max()) >= hi):
        raise Refused(f"sparse matrix: {what} out of range 0..{hi - 1}")


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be replaced
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, size: int):
        super().__init__(file, encoding="latin1")
        self.size = size
        self.max_dim = min(MAX_DIM, 64 * size + (1 << 16))
        self.built: set[int] = set()

    def find_class(self, module: str, name: str):
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise Refused(f"forbidden global {module}.{name}") from None

    def persistent_load(self, pid):
        raise Refused("persistent ids are not allowed")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in _CALLABLE or type(args) is not tuple:
            raise Refused(f"call of {getattr(func, '__name__', type(func).__name__)} not allowed")
        self.stack[-1] = func(*args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls not in _SPARSE_CLASSES or args != ():
            raise Refused(f"creating {getattr(cls, '__name__', type(cls).__name__)} objects is not allowed")
        self.append(object.__new__(cls))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        if kwargs != {}:
            raise Refused("keyword arguments to constructors are not allowed")
        self.load_newobj()

    def load_inst(self):
        raise Refused("INST opcode not allowed")

    def load_obj(self):
        raise Refused("OBJ opcode not allowed")

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _build_array(inst, state)
        elif isinstance(inst, np.dtype):
            _build_dtype(inst, state)
        elif type(inst) in _SPARSE_CLASSES:
            self._build_sparse(inst, state)
        else:
            raise Refused(f"setting the state of a {type(inst).__name__} is not allowed")

    def _build_sparse(self, inst, state) -> None:
        if type(state) is not dict:
            raise Refused("sparse matrix: unexpected state")
        shape = state.get("_shape", state.get("shape"))
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(d) is int for d in shape)):
            raise Refused(f"sparse matrix: bad shape {str(shape)[:80]}")
        if min(shape) < 0 or max(shape) > self.max_dim:
            raise Refused(f"sparse matrix: shape {shape} is out of range (at most {self.max_dim} rows or "
                          f"columns for a {self.size}-byte file; ids must fit in int32)")
        data = state.get("data")
        if type(data) is not np.ndarray or data.ndim != 1 or data.dtype.kind not in "biuf":
            raise Refused("sparse matrix: data must be a 1-D numeric array")
        n = data.shape[0]
        cls = type(inst)
        if cls is sp.coo_matrix:
            coords = state.get("coords", (state.get("row"), state.get("col")))
            if not isinstance(coords, tuple) or len(coords) != 2:
                raise Refused("sparse matrix: bad coordinates")
            row = _index_array(coords[0], "row", n)
            col = _index_array(coords[1], "col", n)
            _in_range(row, shape[0], "row indices")
            _in_range(col, shape[1], "column indices")
            cls.__init__(inst, (data, (row, col)), shape=shape)
        else:
            major, minor = shape if cls is sp.csr_matrix else shape[::-1]
            indptr = _index_array(state.get("indptr"), "indptr", major + 1)
            indices = _index_array(state.get("indices"), "indices", n)
            if int(indptr[0]) != 0 or int(indptr[-1]) != n or (np.diff(indptr) < 0).any():
                raise Refused("sparse matrix: indptr is inconsistent")
            _in_range(indices, minor, "indices")
            cls.__init__(inst, (data, indices, indptr), shape=shape)
        self.built.add(id(inst))

    def load_append(self):
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise Refused("APPEND to a non-list")
        self.stack[-1].append(value)

    def load_appends(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise Refused("APPENDS to a non-list")
        self.stack[-1].extend(items)

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        if type(self.stack[-1]) is not dict:
            raise Refused("SETITEM on a non-dict")
        self.stack[-1][key] = value

    def load_setitems(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not dict:
            raise Refused("SETITEMS on a non-dict")
        for i in range(0, len(items) - 1, 2):
            self.stack[-1][items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            raise Refused("ADDITEMS to a non-set")
        self.stack[-1].update(items)

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self.size:
            raise Refused(f"BYTEARRAY8 of {n} bytes in a {self.size}-byte file")
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    for _op, _fn in (
        (pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.INST, load_inst), (pickle.OBJ, load_obj), (pickle.BUILD, load_build),
        (pickle.APPEND, load_append), (pickle.APPENDS, load_appends), (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems), (pickle.ADDITEMS, load_additems), (pickle.BYTEARRAY8, load_bytearray8),
    ):
        dispatch[_op[0]] = _fn
    del _op, _fn


class _Bounded:
    """A file whose reads never ask for more than what is left of it."""

    def __init__(self, f, size: int):
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(self._left)
        self._left -= len(line)
        return line


_SCALARS = (type(None), bool, float, complex, str, bytes, bytearray, np.generic, np.dtype)


def _check_result(obj, built: set[int]) -> None:
    """Every object in the result is data of an allowed type, ints fit in int64, every sparse
    matrix was completely built (iteratively: nesting depth is not bounded)."""
    stack, seen = [obj], set()
    while stack:
        o = stack.pop()
        t = type(o)
        if t is int:
            if not INT64[0] <= o <= INT64[1]:
                raise InputError(f"integer {str(o)[:30]}... does not fit in 64 bits")
        elif isinstance(o, _SCALARS):
            continue
        elif id(o) in seen:
            continue
        elif t in (list, tuple, set, frozenset):
            seen.add(id(o))
            stack.extend(o)
        elif t is dict:
            seen.add(id(o))
            stack.extend(o.keys())
            stack.extend(o.values())
        elif t is np.ndarray:
            seen.add(id(o))
            if o.dtype.hasobject:
                stack.extend(o.ravel().tolist())
        elif t in _SPARSE_CLASSES:
            if id(o) not in built:
                raise InputError("incomplete sparse matrix (no state)")
            seen.add(id(o))
        elif t is memoryview:
            continue
        else:
            raise InputError(f"unexpected object of type {t.__name__}")


def safe_load(path: Path):
    """Unpickle ``path`` allowing only scipy sparse matrices, numpy arrays and builtins."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file")
    if size > MAX_BYTES:
        raise InputError(f"{path}: {size} bytes is larger than the {MAX_BYTES} byte limit")
    try:
        with open(path, "rb") as f:
            unpickler = _Unpickler(_Bounded(f, size), size)
            obj = unpickler.load()
        _check_result(obj, unpickler.built)
        return obj
    except (Refused, InputError) as e:
        raise InputError(f"{path}: refused pickle ({e})") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {str(e)[:200]})") from None
