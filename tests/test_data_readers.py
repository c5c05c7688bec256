"""Unit tests of the readers on small files the tests write themselves."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cml_cli.data.readers import cml, events, mbcgcn
from cml_cli.data.readers.safepickle import safe_load
from cml_cli.errors import InputError

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def pairs(inter) -> set[tuple[int, int]]:
    return set(zip(inter.user.tolist(), inter.item.tolist(), strict=True))


# ---------------------------------------------------------------- safe pickles


def test_safe_load_refuses_code_execution(tmp_path, evil_pickle):
    target = tmp_path / "PWNED"
    path = evil_pickle(tmp_path / "evil.pkl", target)
    with pytest.raises(InputError, match="evil.pkl.*refused"):
        safe_load(path)
    assert not target.exists()


def test_safe_load_accepts_sparse_and_lists(tmp_path):
    mat = sp.csr_matrix(np.array([[0, 5], [7, 0]], dtype=np.int64))
    with open(tmp_path / "m", "wb") as f:
        pickle.dump({"m": mat, "l": [1, None, 3], "a": np.arange(3)}, f)
    obj = safe_load(tmp_path / "m")
    assert (obj["m"] != mat).nnz == 0 and obj["l"] == [1, None, 3]
    np.testing.assert_array_equal(obj["a"], np.arange(3))


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x80\x04\x95"])
def test_safe_load_bad_bytes(tmp_path, content):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(InputError, match="x"):
        safe_load(tmp_path / "x")


# ---------------------------------------------------------------- cml


def test_cml_round_trip(tmp_path, make_cml):
    src = make_cml(tmp_path / "cml", test_users=20)
    raw = cml.read(tmp_path / "cml")
    assert raw.behaviors == ["view", "cart", "buy"]
    assert (raw.n_users, raw.n_items) == (30, 150)
    for b, mat in src["mats"].items():
        coo = mat.tocoo()
        assert pairs(raw.train[b]) == set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))
        assert sorted(raw.train[b].time.tolist()) == sorted(coo.data.tolist())
    assert raw.test_user.tolist() == list(range(20))
    assert raw.test_item.tolist() == [src["tst"][u] for u in range(20)]
    np.testing.assert_array_equal(raw.meta_users, src["meta"])


def test_cml_partial_set_with_preset_behaviors(tmp_path, make_cml):
    make_cml(tmp_path / "cml", behaviors=("fav", "cart", "buy"))
    raw = cml.read(tmp_path / "cml", behaviors=["pv", "fav", "cart", "buy"])
    assert raw.behaviors == ["fav", "cart", "buy"]
    assert raw.info["missing_behaviors"] == ["pv"]


def test_cml_errors(tmp_path, make_cml, evil_pickle):
    d = tmp_path / "cml"
    make_cml(d)
    with pytest.raises(InputError, match="no such"):
        cml.read(tmp_path / "missing")
    with pytest.raises(InputError, match="target behavior 'fav'"):
        cml.read(d, behaviors=["view", "fav"])
    with open(d / "trn_cart", "wb") as f:
        pickle.dump(sp.csr_matrix((30, 151), dtype=np.int64), f)
    with pytest.raises(InputError, match="trn_cart.*shape"):
        cml.read(d)
    make_cml(d)
    with open(d / "tst_int", "wb") as f:
        pickle.dump([None] * 29 + [150], f)
    with pytest.raises(InputError, match="tst_int.*out of range"):
        cml.read(d)
    target = tmp_path / "PWNED"
    evil_pickle(d / "trn_view", target)
    with pytest.raises(InputError, match="trn_view"):
        cml.read(d)
    assert not target.exists()


# ---------------------------------------------------------------- mbcgcn


@pytest.mark.parametrize("view_as_npz", [True, False])
def test_mbcgcn_round_trip(tmp_path, make_mbcgcn, view_as_npz):
    src = make_mbcgcn(tmp_path / "m", view_as_npz=view_as_npz)
    raw = mbcgcn.read(tmp_path / "m")
    assert raw.behaviors == ["view", "cart", "buy"]
    assert raw.n_users == 20
    if view_as_npz:
        assert raw.n_items == 150  # from the npz shape
    for b in ("view", "cart"):
        expect = {(u, i) for u, items in src[b]["train"].items() for i in items}
        expect |= set(src[b]["test"].items())  # auxiliary held-out pairs join training
        assert pairs(raw.train[b]) == expect
        assert raw.train[b].time is None
    assert pairs(raw.train["buy"]) == {(u, i) for u, items in src["buy"]["train"].items() for i in items}
    assert dict(zip(raw.test_user.tolist(), raw.test_item.tolist(), strict=True)) == src["buy"]["test"]
    assert raw.info["train_from"]["view"] == ("s_adj_mat.npz" if view_as_npz else "train.txt")


def test_mbcgcn_behaviors_restrict_and_order(tmp_path, make_mbcgcn):
    make_mbcgcn(tmp_path / "m")
    raw = mbcgcn.read(tmp_path / "m", behaviors=["cart", "buy"])
    assert raw.behaviors == ["cart", "buy"] and set(raw.train) == {"cart", "buy"}
    raw = mbcgcn.read(tmp_path / "m", behaviors=["pv", "view", "cart", "buy"])
    assert raw.behaviors == ["view", "cart", "buy"] and raw.info["missing_behaviors"] == ["pv"]
    with pytest.raises(InputError, match="target behavior 'fav'"):
        mbcgcn.read(tmp_path / "m", behaviors=["cart", "fav"])


def test_mbcgcn_npz_extends_n_items(tmp_path, make_mbcgcn):
    make_mbcgcn(tmp_path / "m", n_items=150)
    # Items beyond the largest id in the text files still count: n_items comes from the npz.
    a = sp.load_npz(tmp_path / "m" / "view" / "s_adj_mat.npz").tocsr()
    r = a[:20, 20:]
    r = sp.hstack([r, sp.csr_matrix((20, 30))]).tocsr()
    sp.save_npz(tmp_path / "m" / "view" / "s_adj_mat.npz", sp.bmat([[None, r], [r.T, None]], format="csr"))
    assert mbcgcn.read(tmp_path / "m").n_items == 180


def _expect_error(path: Path, match: str):
    with pytest.raises(InputError, match=match):
        mbcgcn.read(path)


def test_mbcgcn_bad_text(tmp_path, make_mbcgcn):
    d = tmp_path / "m"
    make_mbcgcn(d)
    train = d / "cart" / "train.txt"
    good = train.read_text()
    cases = {
        "0\t1\t2\n1\tx3\n": r"train.txt: line 2: non-integer token 'x3'",
        "0\t1\t2\n1\t3.5\n": r"train.txt: line 2: non-integer token '3.5'",
        "0\t1\t2\n1\t3-4\n": r"train.txt: line 2: non-integer token '3-4'",
        "0\t1\t2\n7\n": r"train.txt: line 2: a user with no items",
        "0\t1\t2\n1\t-3\n": r"train.txt: line 2: negative id -3",
        "0\t1\t" + "9" * 30 + "\n": r"train.txt: line 1: id .* too large",
        "": r"train.txt: empty file",
        " \n\n\t\n": r"train.txt: empty file",
    }
    for content, match in cases.items():
        train.write_text(content)
        _expect_error(d, match)
    train.write_bytes(b"0\t1\xff\n")
    _expect_error(d, r"train.txt: line 1: non-integer token")
    train.write_text(good)
    mbcgcn.read(d)  # fine again

    test = d / "buy" / "test.txt"
    test.write_text("0\t1\t2\n")
    _expect_error(d, r"buy/test.txt: line 1: expected exactly 'user<TAB>item'")
    test.unlink()
    _expect_error(d, r"buy/test.txt: no such file")


def test_mbcgcn_blank_lines_crlf_and_bom(tmp_path, make_mbcgcn):
    d = tmp_path / "m"
    make_mbcgcn(d)
    train = d / "cart" / "train.txt"
    train.write_bytes(b"\xef\xbb\xbf0\t1\t2\r\n\r\n1  3 4\r2\t5")
    raw = mbcgcn.read(d)
    cart = pairs(raw.train["cart"])
    assert {(0, 1), (0, 2), (1, 3), (1, 4), (2, 5)} <= cart and (1, 2) not in cart


def test_mbcgcn_bad_npz(tmp_path, make_mbcgcn):
    d = tmp_path / "m"
    make_mbcgcn(d)
    npz = d / "view" / "s_adj_mat.npz"
    sp.save_npz(npz, sp.random(40, 50, density=0.1, format="csr", random_state=0))
    _expect_error(d, r"s_adj_mat.npz: adjacency matrix must be square")
    # Square, but edges among the users: not [[0, R], [R^T, 0]] with 20 users first.
    sp.save_npz(npz, sp.csr_matrix(np.ones((170, 170)) - np.eye(170)))
    _expect_error(d, r"s_adj_mat.npz: not a .*bipartite")
    # Bipartite but too small for the item ids in the text files.
    r = sp.csr_matrix(np.ones((20, 10)))
    sp.save_npz(npz, sp.bmat([[None, r], [r.T, None]], format="csr"))
    _expect_error(d, r"s_adj_mat.npz: shape \(30, 30\) leaves 10 items")
    r = sp.csr_matrix(np.ones((20, 150)))
    a = sp.bmat([[None, r], [r.T * 0 + sp.eye(150, 20), None]], format="csr")
    sp.save_npz(npz, a)
    _expect_error(d, r"s_adj_mat.npz: adjacency matrix is not symmetric")
    npz.write_bytes(b"PK\x03\x04 garbage")
    _expect_error(d, r"s_adj_mat.npz: not a readable scipy sparse .npz")
    np.savez(npz, x=np.arange(3))
    _expect_error(d, r"s_adj_mat.npz: not a readable scipy sparse .npz")


def test_mbcgcn_missing_source_and_layout(tmp_path):
    _expect_error(tmp_path / "nope", "no such directory")
    (tmp_path / "f").write_text("x")
    _expect_error(tmp_path / "f", "not a directory")
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path / "empty", "no behavior folder")
    (tmp_path / "nobuy" / "cart").mkdir(parents=True)
    (tmp_path / "nobuy" / "cart" / "train.txt").write_text("0\t1\n")
    _expect_error(tmp_path / "nobuy", "cannot tell the target")


# ---------------------------------------------------------------- events

LOG = pd.DataFrame(
    {
        "user": ["u1", "u1", "u1", "u1", "u2", "u2", "u3", "u1"],
        "item": [10, 11, 12, 10, 11, 13, 10, 12],
        "behavior": ["view", "buy", "buy", "cart", "buy", "buy", "buy", "buy"],
        "timestamp": [1, 2, 5, 3, 4, 4, 9, 1],
    }
)


def _write(df: pd.DataFrame, path: Path, **kw) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False, sep="\t" if ".tsv" in path.name else ",", **kw)
    return path


@pytest.mark.parametrize("name", ["log.csv", "log.tsv", "log.csv.gz", "log.parquet"])
def test_events_formats(tmp_path, name):
    if name.endswith(".parquet") and not HAS_PYARROW:
        pytest.skip("pyarrow not installed")
    raw = events.read(_write(LOG, tmp_path / name))
    assert raw.behaviors == ["cart", "view", "buy"]
    # users u1 u2 u3 -> 0 1 2 (string order), items 10 11 12 13 -> 0 1 2 3 (numeric order)
    assert (raw.n_users, raw.n_items) == (3, 4)
    # u1 bought 11@2 and 12@5 (12@1 is a duplicate): test 12; u2 bought 11@4, 13@4: tie -> the larger id 13;
    # u3 has one buy: no test item.
    assert dict(zip(raw.test_user.tolist(), raw.test_item.tolist(), strict=True)) == {0: 2, 1: 3}
    assert pairs(raw.train["buy"]) == {(0, 1), (1, 1), (2, 0)}
    assert pairs(raw.train["view"]) == {(0, 0)} and pairs(raw.train["cart"]) == {(0, 0)}
    assert raw.train["buy"].time is not None
    assert raw.info["n_duplicates"] == 1 and raw.info["n_raw_users"] == 3


def test_events_integer_ids_sort_numerically(tmp_path):
    df = pd.DataFrame({"user": [10, 9, 10, 9, 100], "item": [5, 40, 300, 5, 40],
                       "behavior": ["buy"] * 5})
    raw = events.read(_write(df, tmp_path / "l.csv"))
    assert raw.n_users == 3 and raw.n_items == 3
    # without timestamps, file order decides: user 10 -> 1, last buy item 300 -> 2
    assert dict(zip(raw.test_user.tolist(), raw.test_item.tolist(), strict=True)) == {1: 2, 0: 0}
    assert raw.train["buy"].time is None and raw.info["test_order"] == "file order"


def test_events_custom_columns_behavior_map_and_sep(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a;b;c;t\n1;1;P;1\n1;2;P;2\n2;1;P;3\n2;2;P;1\n1;3;C;0\n")
    raw = events.read(path, events.EventsOptions(user_col="a", item_col="b", behavior_col="c", time_col="t", sep=";",
                      behavior_map={"P": "buy", "C": "click"}))
    assert raw.behaviors == ["click", "buy"]
    assert raw.test_item.tolist() == [1, 0]


def test_events_kcore(tmp_path):
    rows = [(u, i, "buy", u * 10 + i) for u in range(4) for i in range(3)]
    rows += [(9, 0, "buy", 1), (9, 7, "view", 2), (8, 8, "buy", 3)]
    df = pd.DataFrame(rows, columns=["user", "item", "behavior", "timestamp"])
    raw = events.read(_write(df, tmp_path / "l.csv"), events.EventsOptions(kcore=3))
    assert (raw.n_users, raw.n_items) == (4, 3)
    assert raw.info["kcore_rounds"] >= 1 and len(raw.test_user) == 4
    raw = events.read(tmp_path / "l.csv")
    assert (raw.n_users, raw.n_items) == (6, 5)


def test_events_presets(tmp_path):
    tb = tmp_path / "UserBehavior.csv"
    tb.write_text("1,100,5,pv,1511544070\n1,101,5,buy,1511544071\n1,102,5,buy,1511544072\n"
                  "2,100,5,fav,1511544073\n2,100,5,buy,1511544074\n2,103,6,cart,1511544075\n")
    raw = events.read(tb, events.EventsOptions(preset="taobao"))
    assert raw.behaviors == ["pv", "fav", "cart", "buy"]
    assert raw.test_user.tolist() == [0] and raw.test_item.tolist() == [2]
    # restricting a preset's behaviors drops its known values
    raw = events.read(tb, events.EventsOptions(preset="taobao", behaviors=["fav", "buy"]))
    assert raw.behaviors == ["fav", "buy"] and raw.info["n_dropped_behavior_events"] == 2

    ij = tmp_path / "user_log_format1.csv"
    ij.write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                  "7,1,1,1,1,1111,2\n7,2,1,1,1,1110,2\n7,3,1,1,1,511,0\n7,4,1,1,,601,3\n8,1,1,1,1,601,1\n")
    raw = events.read(ij, events.EventsOptions(preset="ijcai"))
    assert raw.behaviors == ["click", "fav", "cart", "buy"]
    assert raw.test_item.tolist() == [0]  # MMDD 1111 is the latest
    assert [len(raw.train[b]) for b in raw.behaviors] == [1, 1, 1, 1]

    rr = tmp_path / "events.csv"
    rr.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                  "1433221332117,257597,view,355908,\n1433224214164,257597,addtocart,248676,\n"
                  "1433224214165,257597,transaction,248676,4000\n1433224214166,257597,transaction,355908,4001\n")
    raw = events.read(rr, events.EventsOptions(preset="retailrocket"))
    assert raw.behaviors == ["view", "cart", "buy"]
    assert raw.test_item.tolist() == [1] and pairs(raw.train["buy"]) == {(0, 0)}


def test_events_preset_drops_behaviors_without_events(tmp_path):
    tb = tmp_path / "UserBehavior.csv"
    tb.write_text("1,100,5,pv,1\n1,101,5,buy,2\n1,102,5,buy,3\n")
    raw = events.read(tb, events.EventsOptions(preset="taobao"))
    assert raw.behaviors == ["pv", "buy"] and raw.info["missing_behaviors"] == ["fav", "cart"]
    with pytest.raises(InputError, match=r"no events of behavior\(s\) \['cart'\]"):
        events.read(tb, events.EventsOptions(preset="taobao", behaviors=["pv", "cart", "buy"]))


def _err(path: Path, match: str, **kw):
    with pytest.raises(InputError, match=match) as e:
        events.read(path, events.EventsOptions(**kw))
    assert str(path.name) in str(e.value)


def test_events_errors(tmp_path):
    ok = "user,item,behavior,timestamp\n1,1,buy,1\n1,2,buy,2\n"
    cases = [
        ("missing.csv", None, {}, "no such file"),
        ("log.json", ok, {}, "unsupported extension"),
        ("empty.csv", "", {}, "empty file"),
        ("header.csv", "user,item,behavior,timestamp\n", {}, "no events"),
        ("nocol.csv", "user,item,kind\n1,1,buy\n", {}, r"missing column\(s\) \['behavior'\]"),
        ("notime.csv", ok, {"time_col": "when"}, r"missing column\(s\) \['when'\]"),
        ("nanid.csv", "user,item,behavior\n1,,buy\n1,2,buy\n", {}, "data row 1: missing item value"),
        ("badtime.csv", "user,item,behavior,timestamp\n1,1,buy,x\n1,2,buy,2\n", {},
         "data row 1: non-numeric timestamp 'x'"),
        ("notarget.csv", "user,item,behavior\n1,1,view\n", {}, "no 'buy' events"),
        ("notarget2.csv", "user,item,behavior\n1,1,view\n", {"behaviors": ["view", "cart"]},
         "no events of the target behavior 'cart'"),
        ("unknown.csv", "user,item,behavior\n1,1,view\n1,2,buy\n1,3,like\n", {"behaviors": ["view", "buy"]},
         r"behavior value\(s\) 'like'"),
        ("malformed.csv", "user,item,behavior\n1,1,buy\n1,2,buy,7\n", {}, "malformed file.*line 3"),
        ("ragged1.csv", "user,item,behavior\n1,1,buy,7\n1,2,buy\n", {}, "more fields than the header"),
        ("ragged2.csv", "1,2,3,buy,7,8\n1,3,3,buy,8\n", {"preset": "taobao"}, "more fields than the header"),
        ("strid.csv", "u7,1,1,buy,1\nu7,2,1,buy,2\n", {"preset": "taobao"},
         "non-integer user id 'u7'"),
        ("floatid.csv", "1,2.5,1,buy,1\n1,3,1,buy,2\n", {"preset": "taobao"}, "non-integer item id '2.5'"),
        ("oneeach.csv", "user,item,behavior\n1,1,buy\n2,2,buy\n", {}, "no user has two or more"),
        ("dup.csv", ok, {"behaviors": ["buy", "buy"]}, "twice"),
        ("kcore.csv", ok, {"kcore": 5}, "after 5-core"),
        ("preset.csv", ok, {"preset": "amazon"}, "unknown preset 'amazon'"),
    ]
    for name, content, kw, match in cases:
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        if name in ("preset.csv", "dup.csv"):  # option errors, not file errors
            with pytest.raises(InputError, match=match):
                events.read(path, events.EventsOptions(**kw))
            continue
        _err(path, match, **kw)
    (tmp_path / "bin.csv").write_bytes(b"user,item,behavior\n\xff\xfe,1,buy\n")
    _err(tmp_path / "bin.csv", "not UTF-8")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    _err(tmp_path / "bad.csv.gz", "malformed file")
    with gzip.open(tmp_path / "trunc.csv.gz", "wb") as f:
        f.write(ok.encode() * 100)
    data = (tmp_path / "trunc.csv.gz").read_bytes()
    (tmp_path / "trunc.csv.gz").write_bytes(data[: len(data) // 2])
    _err(tmp_path / "trunc.csv.gz", "malformed file")
    (tmp_path / "dir.csv").mkdir()
    _err(tmp_path / "dir.csv", "not a file")


def test_events_parquet_missing_pyarrow_or_bad(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 not really")
    _err(path, "parquet")


def test_events_many_ids_no_key_overflow(tmp_path):
    # user 65536 * 65536 items wraps to 0 in 32-bit arithmetic: (65536, 0) must not merge with (0, 0)
    n = 65536
    users = np.r_[np.arange(n + 1), 0, 0]
    items = np.r_[np.arange(n + 1) % n, 1, 2]
    path = tmp_path / "big.csv"
    pd.DataFrame({"user": users, "item": items, "behavior": "buy"}).to_csv(path, index=False)
    raw = events.read(path)
    assert raw.info["n_duplicates"] == 0
    assert (raw.n_users, raw.n_items) == (n + 1, n)
    assert len(raw.train["buy"]) + len(raw.test_user) == n + 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(alphabet="0123456789\t \n\r-+x.", max_size=300).map(str.encode)),
       which=st.sampled_from(["cart/train.txt", "buy/train.txt", "buy/test.txt", "view/s_adj_mat.npz"]))
def test_mbcgcn_arbitrary_bytes_only_input_errors(tmp_path, make_mbcgcn, data, which):
    d = tmp_path / "m"
    if not d.exists():
        make_mbcgcn(d)
    target = d / which
    good = target.read_bytes()
    target.write_bytes(data)
    try:
        raw = mbcgcn.read(d)
        assert raw.n_users >= 1 and raw.n_items >= 1
    except InputError:
        pass
    finally:
        target.write_bytes(good)
