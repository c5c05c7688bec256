"""Reader for the published processed format of CML / MATN / KHGT / KMCLR / SSLRec.

A directory of pickles: ``trn_<behavior>`` (or SSLRec's ``train_mat_<behavior>.pkl``), a
user x item CSR matrix whose non-zero values are timestamps; ``tst_int`` (a list with the
test item of each user or ``None``; SSLRec's ``test_mat.pkl`` may instead be a sparse
matrix with one entry per test user); optionally ``meta_multi_single_beh_user_index_shuffle``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cml_cli.data.dataset import Interactions
from cml_cli.data.readers.base import RawData, funnel_sorted, require_path
from cml_cli.data.readers.safepickle import safe_load
from cml_cli.errors import InputError

_TRAIN = [re.compile(r"^trn_(?P<b>[A-Za-z0-9_]+)$"), re.compile(r"^train_mat_(?P<b>[A-Za-z0-9_]+)\.pkl$")]
_TEST = ["tst_int", "test_mat.pkl", "tst_int.pkl"]
_META = ["meta_multi_single_beh_user_index_shuffle", "meta_multi_single_beh_user_index_shuffle.pkl"]


def looks_like(source: Path) -> bool:
    return source.is_dir() and any(any(p.match(f.name) for p in _TRAIN) for f in source.iterdir())


def discover(source: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in sorted(source.iterdir()):
        for pat in _TRAIN:
            m = pat.match(f.name)
            if m and f.is_file():
                found[m.group("b")] = f
    return found


def read(source: Path, behaviors: list[str] | None = None, target: str | None = None) -> RawData:
    """Read the behaviors present in ``source``.

    ``behaviors`` (target last) are the preset's names; only those whose files exist are
    used, so partial sets (Tmall without ``trn_pv``) work. The target's file must exist.
    """
    source = require_path(source, "directory")
    if not source.is_dir():
        raise InputError(f"{source}: not a directory (the cml format is a directory of pickles)")
    files = discover(source)
    if not files:
        raise InputError(f"{source}: no trn_<behavior> or train_mat_<behavior>.pkl files")
    if behaviors is None:
        names = funnel_sorted(files)
        tgt = target or ("buy" if "buy" in files else None)
        if tgt is None:
            raise InputError(f"{source}: cannot tell the target behavior among {names}; pass --behaviors")
        behaviors = [b for b in names if b != tgt] + [tgt]
    tgt = behaviors[-1]
    if tgt not in files:
        raise InputError(f"{source}: no training file for the target behavior '{tgt}' (found {sorted(files)})")
    present = [b for b in behaviors if b in files]

    train: dict[str, Interactions] = {}
    shape = None
    for b in present:
        mat = safe_load(files[b])
        if not sp.issparse(mat) or getattr(mat, "ndim", 2) != 2:
            raise InputError(f"{files[b]}: expected a scipy sparse matrix, got {type(mat).__name__}")
        if shape is None:
            shape = mat.shape
        elif mat.shape != shape:
            raise InputError(f"{files[b]}: shape {mat.shape} differs from {shape} of the other behaviors")
        coo = sp.coo_matrix(mat)
        nz = coo.data != 0
        time = coo.data[nz]
        train[b] = Interactions(
            coo.row[nz].astype(np.int64),
            coo.col[nz].astype(np.int64),
            time.astype(np.int64) if np.issubdtype(time.dtype, np.integer) else None,
        )
    n_users, n_items = int(shape[0]), int(shape[1])

    test_file = next((source / n for n in _TEST if (source / n).is_file()), None)
    if test_file is None:
        raise InputError(f"{source}: no test file (tst_int or test_mat.pkl)")
    test_user, test_item = _read_test(test_file, n_users, n_items)

    return RawData(
        present, n_users, n_items, train, test_user, test_item, _read_meta(source, n_users),
        info={"missing_behaviors": [b for b in behaviors if b not in files]},
    )


def _read_meta(source: Path, n_users: int) -> np.ndarray | None:
    """The meta users (``meta_multi_single_beh_user_index_shuffle``), checked; None without that file."""
    meta_file = next((source / n for n in _META if (source / n).is_file()), None)
    if meta_file is None:
        return None
    obj = safe_load(meta_file)
    try:
        meta = np.asarray(obj, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{meta_file}: expected a list of user ids") from None
    if meta.size and (meta.min() < 0 or meta.max() >= n_users):
        raise InputError(f"{meta_file}: user ids out of range 0..{n_users - 1}")
    return meta


def _read_test(path: Path, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_load(path)
    if sp.issparse(obj):
        coo = sp.coo_matrix(obj)
        if coo.shape != (n_users, n_items):
            raise InputError(f"{path}: shape {coo.shape} differs from the training matrices' {(n_users, n_items)}")
        return coo.row.astype(np.int64), coo.col.astype(np.int64)
    if not isinstance(obj, (list, np.ndarray)):
        raise InputError(f"{path}: expected a list of test items, got {type(obj).__name__}")
    if len(obj) != n_users:
        raise InputError(f"{path}: {len(obj)} entries, expected one per user ({n_users})")
    users, items = [], []
    for u, i in enumerate(obj):
        if i is None:
            continue
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise InputError(f"{path}: entry {u} is {type(i).__name__}, expected an item id or None")
        users.append(u)
        items.append(int(i))
    item = np.asarray(items, dtype=np.int64)
    if item.size and (item.min() < 0 or item.max() >= n_items):
        raise InputError(f"{path}: test item ids out of range 0..{n_items - 1}")
    return np.asarray(users, dtype=np.int64), item
