"""Loading third-party pickles through an allow-list, so they cannot run code."""

from __future__ import annotations

import pickle
from pathlib import Path

from cml_cli.errors import InputError

ALLOWED = {
    ("scipy.sparse.csr", "csr_matrix"),
    ("scipy.sparse._csr", "csr_matrix"),
    ("scipy.sparse.csc", "csc_matrix"),
    ("scipy.sparse._csc", "csc_matrix"),
    ("scipy.sparse.coo", "coo_matrix"),
    ("scipy.sparse._coo", "coo_matrix"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}

MAX_BYTES = 2 << 30


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module.startswith("scipy.sparse"):
            module = "scipy.sparse"
        return super().find_class(module, name)


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
            return _AllowListUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: refused pickle ({e})") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
