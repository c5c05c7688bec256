"""Reader for the text layout of MB-CGCN (SS-00-SS/MBCGCN ``Data/``).

One folder per behavior::

    <b>/train.txt      user<TAB>item<TAB>item...   (all training items of a user, one line per user)
    <b>/test.txt       user<TAB>item               (one held-out pair per line)
    <b>/s_adj_mat.npz  scipy ``save_npz`` of the symmetric bipartite adjacency [[0, R], [R^T, 0]]
                       (users first); used for ``R`` where ``train.txt`` is absent

The target's ``test.txt`` is the test split. The held-out pairs of the auxiliary behaviors join
their training data. There are no timestamps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cml_cli.data.dataset import Interactions
from cml_cli.data.readers.base import RawData, funnel_sorted, require_path
from cml_cli.errors import InputError

TARGETS = ("buy", "purchase")
TRAIN_TXT = "train.txt"
TEST_TXT = "test.txt"
ADJ_NPZ = "s_adj_mat.npz"
MAX_ID = 2**31 - 1
MAX_TEXT_BYTES = 8 << 30

_WS = np.zeros(256, dtype=bool)
_WS[list(b" \t\n\r\x0b\x0c")] = True
_ALLOWED = _WS.copy()
_ALLOWED[list(b"0123456789+-")] = True


def looks_like(source: Path) -> bool:
    return source.is_dir() and any((source / b / TRAIN_TXT).is_file() for b in TARGETS)


def discover(source: Path) -> list[str]:
    """Behavior folders holding a ``train.txt`` or an ``s_adj_mat.npz``."""
    return sorted(
        d.name for d in source.iterdir()
        if d.is_dir() and ((d / TRAIN_TXT).is_file() or (d / ADJ_NPZ).is_file())
    )


def read(source: Path, behaviors: list[str] | None = None) -> RawData:
    """Read the behaviors in ``source`` (``behaviors``, target last, restricts and orders them;
    auxiliary ones without a folder are skipped and listed in ``info["missing_behaviors"]``)."""
    source = require_path(source, "directory")
    if not source.is_dir():
        raise InputError(f"{source}: not a directory (the mbcgcn format is a directory of behavior folders)")
    found = discover(source)
    if not found:
        raise InputError(f"{source}: no behavior folder with {TRAIN_TXT} or {ADJ_NPZ}")
    behaviors = _behaviors(source, found, behaviors)
    tgt = behaviors[-1]
    present = [b for b in behaviors if b in found]
    # Text files first: they fix n_users (and a lower bound on n_items).
    text_pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    heldout: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    npz_files: dict[str, Path] = {}
    for b in present:
        train_path = source / b / TRAIN_TXT
        if train_path.is_file():
            text_pairs[b] = _read_lists(train_path)
        else:
            npz_files[b] = source / b / ADJ_NPZ
        held_path = source / b / TEST_TXT
        if held_path.is_file():
            heldout[b] = _read_lists(held_path, one_item=(b == tgt))
    all_pairs = list(text_pairs.values()) + list(heldout.values())
    n_users = max((int(u.max()) + 1 for u, _ in all_pairs if u.size), default=0)
    max_item = max((int(i.max()) for _, i in all_pairs if i.size), default=-1)
    adj, n_users, n_items = _adjacencies(npz_files, n_users, max_item)
    if n_users == 0 or n_items == 0:
        raise InputError(f"{source}: no interactions")
    info: dict = {"missing_behaviors": [b for b in behaviors if b not in found], "train_from": {},
                  "train_pairs": {}, "heldout_pairs_joined": {}}
    train = {b: _training(b, adj, text_pairs, heldout if b != tgt else {}, n_users, info) for b in present}
    test_user, test_item = heldout[tgt]
    return RawData(present, n_users, n_items, train, test_user, test_item, None, info=info)


def _behaviors(source: Path, found: list[str], behaviors: list[str] | None) -> list[str]:
    """The behaviors to read in order, target last (default: the found folders in funnel order,
    target one of :data:`TARGETS`), checked: the target has training data and a test split."""
    if behaviors is None:
        tgt = next((t for t in TARGETS if t in found), None)
        if tgt is None:
            raise InputError(f"{source}: cannot tell the target behavior among {found}; pass --behaviors")
        names = funnel_sorted(found)
        behaviors = [b for b in names if b != tgt] + [tgt]
    if not behaviors:
        raise InputError("no behaviors given")
    if len(set(behaviors)) != len(behaviors):
        raise InputError(f"behaviors {behaviors} name some behavior twice")
    tgt = behaviors[-1]
    if tgt not in found:
        raise InputError(f"{source}: no {TRAIN_TXT} or {ADJ_NPZ} for the target behavior '{tgt}' (found {found})")
    test_path = source / tgt / TEST_TXT
    if not test_path.is_file():
        raise InputError(f"{test_path}: no such file (the test split of the target behavior '{tgt}')")
    return behaviors


def _adjacencies(npz_files: dict[str, Path], n_users: int,
                 max_item: int) -> tuple[dict[str, sp.csr_matrix], int, int]:
    """The behaviors' adjacency matrices, whose user/item split must agree with the text files
    (``n_users`` users and item ids up to ``max_item`` there): the matrices, users and items."""
    adj: dict[str, sp.csr_matrix] = {}
    split_lo, split_hi = 0, MAX_ID
    dim = None
    for b, path in npz_files.items():
        a = _load_adjacency(path)
        if dim is None:
            dim = a.shape[0]
        elif a.shape[0] != dim:
            raise InputError(f"{path}: shape {a.shape} differs from {(dim, dim)} of the other {ADJ_NPZ} files")
        lo, hi = _split_range(a, path)
        split_lo, split_hi = max(split_lo, lo), min(split_hi, hi)
        if max(n_users, split_lo) > split_hi:
            raise InputError(
                f"{path}: not a users-first bipartite adjacency [[0, R], [R^T, 0]] for {n_users} users "
                f"(its edges need between {lo} and {hi} users)"
            )
        adj[b] = a
    if dim is None:
        return adj, n_users, max_item + 1
    n_users = max(n_users, split_lo)
    n_items = dim - n_users
    if n_items <= max_item:
        raise InputError(
            f"{next(iter(npz_files.values()))}: shape {(dim, dim)} leaves {n_items} items "
            f"for {n_users} users, but the text files use item id {max_item}"
        )
    return adj, n_users, n_items


def _training(b: str, adj: dict[str, sp.csr_matrix], text_pairs: dict, heldout: dict, n_users: int,
              info: dict) -> Interactions:
    """Behavior ``b``'s training pairs: from its adjacency or its ``train.txt``, joined by its
    held-out pairs (``heldout``: the auxiliary behaviors'); recorded in ``info``."""
    if b in adj:
        r = adj[b][:n_users, n_users:].tocoo()
        u, i = r.row.astype(np.int64), r.col.astype(np.int64)
        info["train_from"][b] = ADJ_NPZ
    else:
        u, i = text_pairs[b]
        info["train_from"][b] = TRAIN_TXT
    info["train_pairs"][b] = int(u.size)
    if b in heldout:
        hu, hi_ = heldout[b]
        u, i = np.concatenate([u, hu]), np.concatenate([i, hi_])
        info["heldout_pairs_joined"][b] = int(hu.size)
    return Interactions(u, i, None)


def _read_lists(path: Path, one_item: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``user item item ...`` lines (any whitespace) -> parallel ``(user, item)`` int64 arrays.

    Vectorised: tokens come from one ``bytes.split``; each token's line from a cumulative
    count of newlines at its first byte.
    """
    values, line_of = _integers(path, _read_text(path))
    first = np.r_[True, line_of[1:] != line_of[:-1]]
    line_idx = np.cumsum(first) - 1  # which non-empty line each token is on
    n_tok = np.bincount(line_idx)
    if (n_tok < 2).any():
        k = int(np.argmax(n_tok < 2))
        ln = int(line_of[np.flatnonzero(first)[k]]) + 1
        raise InputError(f"{path}: line {ln}: a user with no items")
    if one_item and (n_tok != 2).any():
        k = int(np.argmax(n_tok != 2))
        ln = int(line_of[np.flatnonzero(first)[k]]) + 1
        raise InputError(f"{path}: line {ln}: expected exactly 'user<TAB>item', found {int(n_tok[k]) - 1} items")
    neg = values < 0
    if neg.any():
        k = int(np.argmax(neg))
        raise InputError(f"{path}: line {int(line_of[k]) + 1}: negative id {int(values[k])}")
    big = values > MAX_ID
    if big.any():
        k = int(np.argmax(big))
        raise InputError(f"{path}: line {int(line_of[k]) + 1}: id {int(values[k])} is larger than {MAX_ID}")
    users = values[first]
    item = values[~first]
    user = np.repeat(users, n_tok - 1)
    return user, item


def _read_text(path: Path) -> bytes:
    """A text file's bytes (at most :data:`MAX_TEXT_BYTES`), without a BOM, with ``\n`` line ends."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InputError(f"{path}: {size} bytes is larger than the {MAX_TEXT_BYTES} byte limit")
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _integers(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Every whitespace-separated token of ``data`` as an int64, and its 0-based line."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size or _WS[buf].all():
        raise InputError(f"{path}: empty file")
    bad = ~_ALLOWED[buf]
    if bad.any():
        pos = int(np.argmax(bad))
        line = int(np.count_nonzero(buf[:pos] == 10)) + 1
        raise InputError(f"{path}: line {line}: non-integer token {_token_at(data, pos)!r}")
    ws = _WS[buf]
    start = np.flatnonzero(~ws & np.r_[True, ws[:-1]])
    line_of = np.cumsum(buf == 10)[start]  # 0-based line index of each token
    tokens = data.split()
    longest = max(map(len, tokens))
    if longest > 18:
        k = next(k for k, t in enumerate(tokens) if len(t) == longest)
        raise InputError(f"{path}: line {int(line_of[k]) + 1}: id {tokens[k][:40].decode()!r}... is too large")
    try:
        return np.array(tokens).astype(np.int64), line_of
    except ValueError:
        for k, t in enumerate(tokens):
            try:
                int(t)
            except ValueError:
                raise InputError(
                    f"{path}: line {int(line_of[k]) + 1}: non-integer token {t.decode()!r}"
                ) from None
        raise InputError(f"{path}: unparsable integers") from None


def _token_at(data: bytes, pos: int) -> str:
    lo = pos
    while lo > 0 and data[lo - 1] not in b" \t\n\r\x0b\x0c":
        lo -= 1
    hi = pos
    while hi < len(data) and data[hi] not in b" \t\n\r\x0b\x0c" and hi - lo < 40:
        hi += 1
    return data[lo:hi].decode(errors="replace")


def _load_adjacency(path: Path) -> sp.csr_matrix:
    try:
        a = sp.load_npz(path)
    except Exception as e:  # zip, key and format errors of every kind
        msg = " ".join(str(e).split())[:300]
        raise InputError(f"{path}: not a readable scipy sparse .npz ({type(e).__name__}: {msg})") from None
    if getattr(a, "ndim", 2) != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"{path}: adjacency matrix must be square, got shape {a.shape}")
    if a.shape[0] > 2 * MAX_ID:
        raise InputError(f"{path}: adjacency matrix shape {a.shape} is too large")
    a = sp.csr_matrix(a)
    a.eliminate_zeros()
    if a.nnz == 0:
        raise InputError(f"{path}: adjacency matrix has no edges")
    if (a != a.T).nnz:
        raise InputError(f"{path}: adjacency matrix is not symmetric")
    return a


def _split_range(a: sp.csr_matrix, path: Path) -> tuple[int, int]:
    """The user counts ``s`` with which ``a`` is bipartite, users ``< s`` and items ``>= s``:
    every edge ``(r, c)`` needs ``min(r, c) < s <= max(r, c)``. Returns ``(lo, hi)``, ``lo <= hi``."""
    coo = a.tocoo()
    if (coo.row == coo.col).any():
        raise InputError(f"{path}: not a bipartite adjacency matrix (it has self-loops)")
    lo = int(np.minimum(coo.row, coo.col).max()) + 1
    hi = int(np.maximum(coo.row, coo.col).min())
    if lo > hi:
        raise InputError(f"{path}: not a users-first bipartite adjacency matrix [[0, R], [R^T, 0]]")
    return lo, hi
