"""Reader for raw interaction logs: one event per row (user, item, behavior, optional timestamp).

CSV, TSV (optionally compressed: ``.csv.gz`` ...) or parquet, read in chunks with pandas.
Steps: id remapping to ``0..n-1`` (numeric order where every id is an integer, string order
otherwise), de-duplication of (user, item, behavior) keeping the latest event, optional
k-core filtering, and a leave-one-out test split: each user with at least two distinct target
items gives up the latest one (ties: the larger item id; without a timestamp column the file
order is the time), which leaves that user's target training data.

Presets describe the public raw logs: ``taobao`` (UserBehavior.csv), ``ijcai``
(IJCAI-15 user_log_format1.csv) and ``retailrocket`` (events.csv).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cml_cli.data.dataset import Interactions
from cml_cli.data.readers.base import RawData, require_path
from cml_cli.errors import InputError

TARGET = "buy"
CHUNK_ROWS = 1_000_000
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")
_TEXT = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_PARQUET = (".parquet", ".pq")
_MAX_ABS_TIME = 2**62


@dataclass(frozen=True)
class EventsPreset:
    user_col: str
    item_col: str
    behavior_col: str
    time_col: str | None
    behaviors: tuple[str, ...]
    behavior_map: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] | None = None  # column names of a file without a header
    int_ids: bool = True


PRESETS: dict[str, EventsPreset] = {
    "taobao": EventsPreset(
        "user_id", "item_id", "behavior_type", "timestamp", ("pv", "fav", "cart", "buy"),
        {"pv": "pv", "fav": "fav", "cart": "cart", "buy": "buy"},
        names=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    ),
    "ijcai": EventsPreset(
        "user_id", "item_id", "action_type", "time_stamp", ("click", "fav", "cart", "buy"),
        {"0": "click", "1": "cart", "2": "buy", "3": "fav"},
    ),
    "retailrocket": EventsPreset(
        "visitorid", "itemid", "event", "timestamp", ("view", "cart", "buy"),
        {"view": "view", "addtocart": "cart", "transaction": "buy"},
    ),
}


@dataclass(frozen=True)
class EventsOptions:
    """How to read an event log: a ``preset`` of a public log (its columns, behavior names and
    order), the column names (``user_col`` ...; default the preset's, else ``user``, ``item``,
    ``behavior``, ``timestamp``; a ``time_col`` given must exist), the ``behaviors`` in order
    (target last), ``behavior_map`` (raw value -> behavior name), ``kcore`` and the field
    separator ``sep`` (default from the file's suffix)."""

    preset: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    behavior_col: str | None = None
    time_col: str | None = None
    behaviors: list[str] | None = None
    behavior_map: dict | None = None
    kcore: int | None = None
    sep: str | None = None


@dataclass
class _Events:
    """The log's events as parallel arrays (behavior codes index ``behaviors``), and what was counted."""

    user: np.ndarray
    item: np.ndarray
    beh: np.ndarray
    time: np.ndarray
    behaviors: list[str]
    has_time: bool
    info: dict


def read(source: Path, options: EventsOptions = EventsOptions()) -> RawData:
    """Read an event log into raw splits (see the module docstring).

    ``options.behaviors`` (target last) orders the behaviors; without it, the preset's order
    or the sorted distinct values with ``buy`` last. Raw values are renamed by
    ``options.behavior_map`` (or the preset's). A value that is neither in ``behaviors`` nor a
    known preset value is an error; known preset values left out of ``behaviors`` are dropped.
    """
    source = require_path(source, "file")
    if not source.is_file():
        raise InputError(f"{source}: not a file (the events format is one CSV, TSV or parquet file)")
    _check_options(options)
    ev = _events(source, options)
    tgt = len(ev.behaviors) - 1
    n_events = ev.user.size
    user, item, beh, time = _dedupe(ev.user, ev.item, ev.beh, ev.time, ev.info["n_raw_items"], len(ev.behaviors))
    n_dups = int(n_events - user.size)
    k = int(options.kcore or 0)
    user, item, beh, time, rounds = _kcore(user, item, beh, time, k, ev.info["n_raw_users"], ev.info["n_raw_items"])
    if k > 1 and not (beh == tgt).any():
        raise InputError(f"{source}: no '{ev.behaviors[-1]}' events left after {k}-core filtering")
    user, item, n_users, n_items = _compact(user, item)
    test_user, test_item, drop = _leave_one_out(user, item, beh, time, tgt, n_users)
    if not test_user.size:
        raise InputError(
            f"{source}: no user has two or more distinct '{ev.behaviors[-1]}' items, so there is no test split"
        )
    train: dict[str, Interactions] = {}
    for b, name in enumerate(ev.behaviors):
        sel = (beh == b) & ~drop
        train[name] = Interactions(user[sel], item[sel], time[sel] if ev.has_time else None)
    info = {"preset": options.preset, "n_events": ev.info["n_events"], "n_duplicates": n_dups,
            "n_dropped_behavior_events": ev.info["n_dropped"], "n_raw_users": ev.info["n_raw_users"],
            "n_raw_items": ev.info["n_raw_items"], "kcore": k, "kcore_rounds": rounds, "has_time": ev.has_time,
            "test_order": "timestamp" if ev.has_time else "file order",
            "n_users_without_test": int(n_users - test_user.size), "missing_behaviors": ev.info["missing"]}
    return RawData(list(ev.behaviors), n_users, n_items, train, test_user, test_item, None, info=info)


def _check_options(options: EventsOptions) -> None:
    """The options that need no file, checked (an :class:`InputError`)."""
    if options.preset is not None and options.preset not in PRESETS:
        raise InputError(f"--events-preset: unknown preset '{options.preset}' (choose from {', '.join(PRESETS)})")
    kcore = options.kcore
    if kcore is not None and (not isinstance(kcore, (int, np.integer)) or kcore < 0):
        raise InputError(f"--kcore: expected a non-negative integer, got {kcore!r}")
    if options.behaviors is not None:
        behaviors = [str(b) for b in options.behaviors]
        if not behaviors:
            raise InputError("no behaviors given")
        if len(set(behaviors)) != len(behaviors):
            raise InputError(f"behaviors {behaviors} name some behavior twice")


def _events(source: Path, options: EventsOptions) -> _Events:
    """The log's events with ids as read, behaviors coded and ordered (events of dropped
    behaviors removed, behaviors without events left out unless named), time or file order."""
    p = PRESETS.get(options.preset) if options.preset else None
    cols = {
        "user": options.user_col or (p.user_col if p else "user"),
        "item": options.item_col or (p.item_col if p else "item"),
        "behavior": options.behavior_col or (p.behavior_col if p else "behavior"),
    }
    tcol = options.time_col or (p.time_col if p else "timestamp")
    bmap = {str(k).strip(): str(v) for k, v in (options.behavior_map or (p.behavior_map if p else {})).items()}
    behaviors = [str(b) for b in options.behaviors] if options.behaviors is not None else None
    cols_raw, n_rows, has_time = _read_columns(source, options.sep, p, cols, tcol, options.time_col is not None)
    user_raw, n_raw_users = cols_raw.ids("user", source, cols["user"], p.int_ids if p else False)
    item_raw, n_raw_items = cols_raw.ids("item", source, cols["item"], p.int_ids if p else False)
    values, beh_code = cols_raw.behavior()
    behaviors, code_of = _behavior_codes(source, values, bmap, behaviors, p, options.behavior_map is None,
                                         cols["behavior"])
    beh = code_of[beh_code] if beh_code.size else beh_code.astype(np.int64)
    keep = beh >= 0
    time = cols_raw.time()[keep] if has_time else np.flatnonzero(keep).astype(np.int64)
    beh, behaviors, empty = _drop_empty(source, beh[keep], behaviors, options.behaviors is not None)
    info = {"n_events": n_rows, "n_dropped": int((~keep).sum()), "n_raw_users": n_raw_users,
            "n_raw_items": n_raw_items, "missing": empty}
    return _Events(user_raw[keep], item_raw[keep], beh, time, behaviors, bool(has_time), info)


def _drop_empty(source: Path, beh: np.ndarray, behaviors: list[str],
                explicit: bool) -> tuple[np.ndarray, list[str], list[str]]:
    """Leave out the behaviors without events (an error for named ones and for the target):
    the recoded behaviors, the behaviors kept and those left out."""
    empty = [b for j, b in enumerate(behaviors) if not (beh == j).any()]
    if empty and behaviors[-1] not in empty:
        if explicit:
            raise InputError(f"{source}: no events of behavior(s) {empty}")
        kept = [j for j, b in enumerate(behaviors) if b not in empty]
        new_code = np.full(len(behaviors), -1, dtype=np.int64)
        new_code[kept] = np.arange(len(kept))
        beh = new_code[beh]
        behaviors = [behaviors[j] for j in kept]
    if not (beh == len(behaviors) - 1).any():
        raise InputError(f"{source}: no events of the target behavior '{behaviors[-1]}'")
    return beh, behaviors, empty


Events = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # user, item, behavior code, time


def _read_columns(source: Path, sep: str | None, p: EventsPreset | None, cols: dict[str, str], tcol: str,
                  time_required: bool) -> tuple[_Columns, int, bool]:
    """Every chunk of the file into per-column codes; the row count; whether there are times."""
    cols_raw = _Columns()
    n_rows = 0
    has_time = None
    for chunk, row0 in _chunks(source, sep, p):
        if has_time is None:
            missing = [c for c in cols.values() if c not in chunk.columns]
            if time_required and tcol not in chunk.columns:
                missing.append(tcol)
            if missing:
                shown = ", ".join(map(str, list(chunk.columns)[:12]))
                raise InputError(f"{source}: missing column(s) {missing} (columns: {shown})")
            has_time = tcol in chunk.columns
        cols_raw.add(source, chunk, cols, tcol if has_time else None, row0)
        n_rows += len(chunk)
    if n_rows == 0:
        raise InputError(f"{source}: no events (empty file or header only)")
    return cols_raw, n_rows, bool(has_time)


def _behavior_codes(source: Path, values: list[str], bmap: dict[str, str], behaviors: list[str] | None,
                    p: EventsPreset | None, preset_map: bool, column: str) -> tuple[list[str], np.ndarray]:
    """The behaviors in order (target last) and, for each distinct raw value, its behavior's
    index (-1: a known value left out of ``behaviors``, dropped)."""
    names = np.array([bmap.get(v, v) for v in values], dtype=object)
    present = sorted(set(names.tolist()))
    if behaviors is None:
        if p is not None and preset_map:
            behaviors = list(p.behaviors)
        else:
            if TARGET not in present:
                raise InputError(
                    f"{source}: no '{TARGET}' events among behaviors {present}; pass --behaviors (target last)"
                )
            behaviors = [b for b in present if b != TARGET] + [TARGET]
    known = set(bmap.values()) | set(p.behaviors if p else ())
    unknown = sorted({str(v) for v, n in zip(values, names, strict=True) if n not in behaviors and n not in known})
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InputError(f"{source}: behavior value(s) {shown} in column '{column}' are not among {behaviors}")
    return behaviors, np.array([behaviors.index(n) if n in behaviors else -1 for n in names], dtype=np.int64)


def _dedupe(user: np.ndarray, item: np.ndarray, beh: np.ndarray, time: np.ndarray, n_items: int,
            n_behaviors: int) -> Events:
    """One event per (user, item, behavior): the latest."""
    key = (user.astype(np.int64) * max(n_items, 1) + item) * n_behaviors + beh  # int64: no overflow
    order = np.lexsort((time, key))
    ks = key[order]
    last = order[np.r_[ks[1:] != ks[:-1], True]] if ks.size else order
    return user[last], item[last], beh[last], time[last]


def _kcore(user: np.ndarray, item: np.ndarray, beh: np.ndarray, time: np.ndarray, k: int, n_users: int,
           n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Repeatedly drop events of users and items with fewer than ``k`` events over all
    behaviors (``k <= 1``: nothing); also returns the number of rounds."""
    rounds = 0
    while k > 1 and user.size:
        ok = (np.bincount(user, minlength=n_users)[user] >= k) & (np.bincount(item, minlength=n_items)[item] >= k)
        if ok.all():
            break
        rounds += 1
        user, item, beh, time = user[ok], item[ok], beh[ok], time[ok]
    return user, item, beh, time, rounds


def _compact(user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """User and item ids renumbered ``0..n-1`` in their original order; and the counts."""
    u_ids, user = np.unique(user, return_inverse=True)
    i_ids, item = np.unique(item, return_inverse=True)
    return user.astype(np.int64), item.astype(np.int64), int(u_ids.size), int(i_ids.size)


def _leave_one_out(user: np.ndarray, item: np.ndarray, beh: np.ndarray, time: np.ndarray, target: int,
                   n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's latest target item (ties: the larger item id), for users with at least two
    target items: ``(test_user, test_item, drop)`` where ``drop`` marks those events."""
    is_t = beh == target
    tu, ti, tt = user[is_t], item[is_t], time[is_t]
    order = np.lexsort((ti, tt, tu))
    su = tu[order]
    last = np.r_[su[1:] != su[:-1], True]
    counts = np.bincount(tu, minlength=n_users)
    pick = order[last & (counts[su] >= 2)]
    drop = np.zeros(user.size, dtype=bool)
    drop[np.flatnonzero(is_t)[pick]] = True
    return tu[pick].astype(np.int64), ti[pick].astype(np.int64), drop


def _kind(source: Path) -> tuple[str, str | None]:
    """``("parquet", None)`` or ``("text", default separator)`` from the file name."""
    suffixes = [s.lower() for s in source.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in _PARQUET:
        return "parquet", None
    if ext in _TEXT:
        return "text", _TEXT[ext]
    raise InputError(
        f"{source}: unsupported extension '{''.join(source.suffixes) or '(none)'}' "
        "(expected .csv, .tsv, .txt, optionally .gz/.bz2/.xz/.zip, or .parquet)"
    )


def _chunks(source: Path, sep: str | None, p: EventsPreset | None):
    """Yield ``(DataFrame, first_row_number)`` chunks; every parse error becomes an InputError."""
    kind, default_sep = _kind(source)
    if source.stat().st_size == 0:
        raise InputError(f"{source}: empty file")
    row0 = 0
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{source}: reading parquet needs pyarrow (pip install pyarrow)") from None
        try:
            pf = pq.ParquetFile(source)
            batches = pf.iter_batches(batch_size=CHUNK_ROWS)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                df = batch.to_pandas()
                yield df, row0
                row0 += len(df)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{source}: unreadable parquet ({_one_line(e)})") from None
        return
    kwargs = dict(
        sep=sep or default_sep, dtype=str, keep_default_na=False, na_values=[""], chunksize=CHUNK_ROWS,
        encoding="utf-8", encoding_errors="strict", skip_blank_lines=True, engine="c", index_col=False,
        low_memory=True,
    )
    if p is not None and p.names is not None:
        kwargs.update(header=None, names=list(p.names))
    try:
        reader = pd.read_csv(source, **kwargs)
        with reader:
            while True:
                # A first data row longer than the header is a ParserWarning, not an error, in
                # pandas (the extra field is dropped): refuse it like any other ragged row.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    try:
                        df = next(reader)
                    except StopIteration:
                        break
                if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                    raise InputError(
                        f"{source}: malformed file (a row near data row {row0 + 1} has more fields than the header)"
                    )
                yield df, row0
                row0 += len(df)
    except InputError:
        raise
    except pd.errors.EmptyDataError:
        raise InputError(f"{source}: empty file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text ({_one_line(e)})") from None
    except Exception as e:  # ParserError, compression and OS errors of every kind
        raise InputError(f"{source}: malformed file ({type(e).__name__}: {_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


class _Columns:
    """Accumulates chunk-local codes and uniques, so that memory grows with codes, not strings."""

    def __init__(self) -> None:
        self.codes: dict[str, list[np.ndarray]] = {"user": [], "item": [], "behavior": []}
        self.uniques: dict[str, list] = {"user": [], "item": [], "behavior": []}
        self.times: list[np.ndarray] = []

    def add(self, source: Path, df: pd.DataFrame, cols: dict, tcol: str | None, row0: int) -> None:
        for role in ("user", "item", "behavior"):
            col = df[cols[role]]
            if isinstance(col, pd.DataFrame):
                raise InputError(f"{source}: column '{cols[role]}' appears more than once")
            bad = col.isna().to_numpy()
            if bad.any():
                r = row0 + int(np.argmax(bad)) + 1
                raise InputError(f"{source}: data row {r}: missing {role} value in column '{cols[role]}'")
            codes, uniq = pd.factorize(col, sort=False)
            self.codes[role].append(codes.astype(np.int32))
            self.uniques[role].append(np.asarray(uniq, dtype=object))
        if tcol is not None:
            col = df[tcol]
            if isinstance(col, pd.DataFrame):
                raise InputError(f"{source}: column '{tcol}' appears more than once")
            self.times.append(_times(source, col, tcol, row0))

    def _merge(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Global codes (into the returned uniques) of every row."""
        offsets = np.cumsum([0] + [len(u) for u in self.uniques[role]])
        all_uniq = np.concatenate(self.uniques[role]) if self.uniques[role] else np.empty(0, object)
        gcodes, guniq = pd.factorize(all_uniq, sort=False)
        gcodes = gcodes.astype(np.int32 if len(guniq) < 2**31 else np.int64)
        parts = [gcodes[off + c] for off, c in zip(offsets[:-1], self.codes[role], strict=True)]
        codes = np.concatenate(parts) if parts else np.empty(0, np.int64)
        self.codes[role], self.uniques[role] = [], []
        return codes, np.asarray(guniq, dtype=object)

    def ids(self, role: str, source: Path, colname: str, int_required: bool) -> tuple[np.ndarray, int]:
        """Row ids ranked by original id (numeric order where all are integers); and their count."""
        codes, uniq = self._merge(role)
        as_int, bad = _as_ints(uniq)
        if as_int is None:
            if int_required:
                raise InputError(f"{source}: non-integer {role} id {str(bad)[:40]!r} in column '{colname}'")
            _, rank = np.unique(np.array([str(v) for v in uniq], dtype=object), return_inverse=True)
        else:
            _, rank = np.unique(as_int, return_inverse=True)
        n = int(rank.max()) + 1 if rank.size else 0
        rank = rank.reshape(-1).astype(np.int32 if n < 2**31 else np.int64)
        return rank[codes], n

    def behavior(self) -> tuple[list[str], np.ndarray]:
        codes, uniq = self._merge("behavior")
        values = [str(v).strip() for v in uniq]
        # Values equal after stripping share one code.
        distinct = sorted(set(values))
        remap = np.array([distinct.index(v) for v in values], dtype=np.int64)
        return distinct, remap[codes] if codes.size else codes

    def time(self) -> np.ndarray:
        return np.concatenate(self.times) if self.times else np.empty(0, np.int64)


def _as_ints(values: np.ndarray) -> tuple[np.ndarray | None, object]:
    """``(values as int64, None)`` when every one is an integer (an int, an integral float or a
    decimal string of at most 18 digits); else ``(None, the first value that is not)``."""
    if values.size == 0:
        return np.empty(0, np.int64), None
    kinds = pd.Series(values, dtype=object).map(type)
    if kinds.isin([int, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32]).all():
        return np.array(values.tolist(), dtype=np.int64), None
    if kinds.isin([float, np.float64, np.float32]).all():
        fl = values.astype(float)
        ok = np.isfinite(fl) & (np.abs(fl) < 2**53)
        ok[ok] = fl[ok] == np.round(fl[ok])
        if ok.all():
            return fl.astype(np.int64), None
        return None, values[int(np.argmin(ok))]
    st = pd.Series(values, dtype=object).astype(str).str.strip()
    ok = st.str.fullmatch(r"[+-]?[0-9]{1,18}").to_numpy(dtype=bool)
    if ok.all():
        return st.astype(np.int64).to_numpy(), None
    return None, values[int(np.argmin(ok))]


def _times(source: Path, col: pd.Series, name: str, row0: int) -> np.ndarray:
    """Numeric timestamps as int64 (fractions floored); missing or non-numeric ones are errors."""
    if pd.api.types.is_datetime64_any_dtype(col):
        if col.isna().any():
            r = row0 + int(np.argmax(col.isna().to_numpy())) + 1
            raise InputError(f"{source}: data row {r}: missing timestamp in column '{name}'")
        return (col.astype("datetime64[ns]").astype("int64") // 10**9).to_numpy(dtype=np.int64)
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(num) | (np.abs(num) >= _MAX_ABS_TIME)
    if bad.any():
        r = int(np.argmax(bad))
        raw = col.iloc[r]
        what = "missing timestamp" if pd.isna(raw) else f"non-numeric timestamp {str(raw)[:40]!r}"
        raise InputError(f"{source}: data row {row0 + r + 1}: {what} in column '{name}'")
    return np.floor(num).astype(np.int64)
