"""Property tests of the events reader: valid logs round-trip, invalid input is an InputError."""

from __future__ import annotations

import csv
import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cml_cli.data.readers import events
from cml_cli.errors import InputError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BEHAVIORS = ["view", "cart", "buy"]

user_ids = st.one_of(st.integers(0, 5), st.sampled_from(["alice", "bob", "10"]))
an_event = st.tuples(user_ids, st.integers(0, 15), st.sampled_from(["view", "cart", "buy", "buy"]), st.integers(0, 6))
logs = st.lists(an_event, min_size=4, max_size=60)


def _write(rows, path: Path, with_time: bool = True) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "behavior", "timestamp"] if with_time else ["user", "item", "behavior"])
        for r in rows:
            w.writerow(r if with_time else r[:3])
    return path


def _ranked(values) -> dict:
    """The reader's remapping: numeric order where every id is an integer, else string order."""
    vals = set(values)
    if all(isinstance(v, int) for v in vals):
        order = sorted(vals)
    else:
        order = sorted(vals, key=str)
    return {v: k for k, v in enumerate(order)}


def _reference(rows):
    """Latest event per (user, item, behavior); per user the latest target item (ties: larger item)."""
    latest: dict = {}
    for pos, (u, i, b, t) in enumerate(rows):
        key = (str(u), i, b)
        if key not in latest or (t, pos) >= latest[key][0]:
            latest[key] = ((t, pos), u)
    dedup = {(latest[k][1], k[1], k[2]): latest[k][0][0] for k in latest}
    buys: dict = {}
    for (u, i, b), t in dedup.items():
        if b == "buy":
            buys.setdefault(str(u), []).append((t, i, u))
    tests = {}
    for items in buys.values():
        if len(items) >= 2:
            t, i, u = max(items)
            tests[u] = i
    return dedup, tests


@SETTINGS
@given(rows=logs, with_time=st.booleans())
def test_valid_logs_round_trip(rows, with_time):
    if not with_time:
        rows = [(u, i, b, pos) for pos, (u, i, b, _) in enumerate(rows)]  # file order is the time
    with tempfile.TemporaryDirectory() as td:
        path = _write(rows, Path(td) / "log.csv", with_time)
        dedup, tests = _reference(rows)
        if not any(b == "buy" for _, _, b in dedup) or not tests:
            event("no test split: InputError")
            with pytest.raises(InputError):
                events.read(path)
            return
        event("round trip")
        raw = events.read(path)
    present = sorted({b for _, _, b in dedup})
    assert raw.behaviors == [b for b in present if b != "buy"] + ["buy"]
    # str() merges the integer 1 and the string "1": both are the CSV text "1"
    canon = [int(str(u)) if str(u).isdigit() else str(u) for u, *_ in rows]
    umap, imap = _ranked(canon), _ranked([i for _, i, _, _ in rows])
    assert (raw.n_users, raw.n_items) == (len(umap), len(imap))

    # one test item per eligible user, the latest, and not in that user's target training
    got = dict(zip(raw.test_user.tolist(), raw.test_item.tolist(), strict=True))
    assert got == {umap[int(str(u)) if str(u).isdigit() else str(u)]: imap[i] for u, i in tests.items()}
    buy_pairs = set(zip(raw.train["buy"].user.tolist(), raw.train["buy"].item.tolist(), strict=True))
    assert not buy_pairs & set(got.items())

    # every deduplicated event is in training, except the test pairs
    total = sum(len(raw.train[b]) for b in raw.behaviors) + len(got)
    assert total == len(dedup)
    for b in raw.behaviors:
        inter = raw.train[b]
        assert len(set(zip(inter.user.tolist(), inter.item.tolist(), strict=True))) == len(inter)
        assert (inter.time is not None) == with_time
        if len(inter):
            assert 0 <= inter.user.min() and inter.user.max() < raw.n_users
            assert 0 <= inter.item.min() and inter.item.max() < raw.n_items


@SETTINGS
@given(rows=logs, k=st.integers(1, 4))
def test_kcore_holds(rows, k):
    with tempfile.TemporaryDirectory() as td:
        path = _write(rows, Path(td) / "log.csv")
        try:
            raw = events.read(path, events.EventsOptions(kcore=k))
        except InputError:
            return
    u_count = [0] * raw.n_users
    i_count = [0] * raw.n_items
    pairs = [(u, i) for b in raw.behaviors for u, i in zip(raw.train[b].user, raw.train[b].item, strict=True)]
    pairs += list(zip(raw.test_user, raw.test_item, strict=True))
    for u, i in pairs:
        u_count[u] += 1
        i_count[i] += 1
    assert min(u_count) >= k and min(i_count) >= k


bad_row = st.sampled_from([
    "1,,buy,1",          # missing item
    ",1,buy,1",          # missing user
    "1,2,,1",            # missing behavior
    "1,2,buy,",          # missing timestamp
    "1,2,buy,soon",      # non-numeric timestamp
    "1,2,buy,1,extra",   # too many fields
    "1,2,like,1",        # behavior not in the list
    "1,2,buy,1e400",     # infinite timestamp
])


@SETTINGS
@given(rows=logs, bad=bad_row, at=st.integers(0, 60))
def test_invalid_rows_are_input_errors(rows, bad, at):
    good_rows = [f"{u},{i},{b},{t}" for u, i, b, t in rows] + ["7,1,buy,1", "7,2,buy,2"]
    good_rows.insert(min(at, len(good_rows)), bad)
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "log.csv"
        path.write_text("user,item,behavior,timestamp\n" + "\n".join(good_rows) + "\n")
        with pytest.raises(InputError):
            events.read(path, events.EventsOptions(behaviors=BEHAVIORS))


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv", ".csv.gz", ".parquet"]),
       preset=st.sampled_from([None, "taobao", "ijcai", "retailrocket"]))
def test_arbitrary_bytes_only_input_errors(data, suffix, preset):
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / f"log{suffix}"
        path.write_bytes(data)
        try:
            events.read(path, events.EventsOptions(preset=preset))
        except InputError:
            pass


text_cells = st.text(alphabet=st.sampled_from(list("01239abuy,\t\n\"' .-e")), max_size=200)


@SETTINGS
@given(body=text_cells, header=st.sampled_from(["user,item,behavior,timestamp\n", "user,item,behavior\n", ""]),
       gz=st.booleans(), kcore=st.sampled_from([None, 2]))
def test_csv_like_text_only_input_errors(body, header, gz, kcore):
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / ("log.csv.gz" if gz else "log.csv")
        content = (header + body).encode()
        path.write_bytes(gzip.compress(content) if gz else content)
        try:
            raw = events.read(path, events.EventsOptions(kcore=kcore))
        except InputError:
            return
    assert raw.behaviors[-1] == "buy" and len(raw.test_user) >= 1
