"""HR@N / NDCG@N (sampled, with ties) and full ranking against brute-force implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cml_cli.data.dataset import Split
from cml_cli.evaluate import EmbeddingScorer, evaluate_full, evaluate_sampled, known_items, sampled_metrics

KS = [1, 3, 5, 10]


def _brute_sampled(pos: np.ndarray, neg: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Every position the positive can take among the items tied with it, each by an actual
    sort with explicit tie-breaking keys, averaged (the exact expectation over random tie orders)."""
    hr = {k: 0.0 for k in ks}
    ndcg = {k: 0.0 for k in ks}
    for p, row in zip(pos.tolist(), neg.tolist()):
        scores = [p, *row]
        tied = [j for j, s in enumerate(scores) if s == p]  # includes the positive (index 0)
        per_k_hr = {k: 0.0 for k in ks}
        per_k_ndcg = {k: 0.0 for k in ks}
        for slot in range(len(tied)):
            # tie-break keys: the positive gets `slot`, the other tied items the remaining slots
            others = iter(s for s in range(len(tied)) if s != slot)
            key = {0: slot, **{j: next(others) for j in tied if j != 0}}
            order = sorted(range(len(scores)), key=lambda j: (-scores[j], key.get(j, 0)))
            rank = order.index(0)
            for k in ks:
                if rank < k:
                    per_k_hr[k] += 1.0
                    per_k_ndcg[k] += 1.0 / math.log2(rank + 2)
        for k in ks:
            hr[k] += per_k_hr[k] / len(tied)
            ndcg[k] += per_k_ndcg[k] / len(tied)
    n = len(pos)
    return {**{f"hr@{k}": hr[k] / n for k in ks}, **{f"ndcg@{k}": ndcg[k] / n for k in ks}}


def test_sampled_metrics_without_ties_hand_values():
    pos = torch.tensor([5.0, 1.0, 3.0])
    neg = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0], [4.0, 5.0, 1.0, 0.0]])
    out = sampled_metrics(pos, neg, [1, 3])
    # ranks 0, 4, 2
    assert out["hr@1"] == pytest.approx(1 / 3)
    assert out["hr@3"] == pytest.approx(2 / 3)
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["ndcg@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)


def test_sampled_metrics_with_ties_match_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 4, size=60).astype(np.float32)  # few distinct values: many ties
    neg = rng.integers(0, 4, size=(60, 12)).astype(np.float32)
    got = sampled_metrics(torch.from_numpy(pos), torch.from_numpy(neg), KS)
    want = _brute_sampled(pos, neg, KS)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-7), name


def test_sampled_metrics_with_ties_match_random_tie_orders():
    """Monte Carlo over random tie orders converges to the closed form."""
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 3, size=8).astype(np.float64)
    neg = rng.integers(0, 3, size=(8, 9)).astype(np.float64)
    got = sampled_metrics(torch.from_numpy(pos), torch.from_numpy(neg), [3])
    draws = 4000
    scores = np.concatenate([pos[:, None], neg], 1)
    noise = rng.random((draws, *scores.shape))
    # rank of the positive: items strictly above, plus tied items whose random key is above
    above = (scores[None, :, 1:] > scores[None, :, :1]) | (
        (scores[None, :, 1:] == scores[None, :, :1]) & (noise[:, :, 1:] > noise[:, :, :1]))
    rank = above.sum(-1)
    hr = (rank < 3).mean()
    ndcg = np.where(rank < 3, 1 / np.log2(rank + 2), 0).mean()
    assert got["hr@3"] == pytest.approx(hr, abs=0.02)
    assert got["ndcg@3"] == pytest.approx(ndcg, abs=0.02)


def test_constant_scores_give_chance_level():
    out = sampled_metrics(torch.zeros(5), torch.zeros(5, 99), [1, 10, 100])
    assert out["hr@1"] == pytest.approx(0.01)
    assert out["hr@10"] == pytest.approx(0.10)
    assert out["hr@100"] == pytest.approx(1.0)
    assert out["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 100)


def test_empty_split_gives_zeros():
    out = sampled_metrics(torch.empty(0), torch.empty(0, 99), [10])
    assert out == {"hr@10": 0.0, "ndcg@10": 0.0}


def test_evaluate_sampled_scores_fixed_candidates_in_batches():
    rng = np.random.default_rng(2)
    n_users, n_items = 13, 150
    users = np.arange(n_users)
    items = rng.integers(0, n_items, size=n_users)
    neg = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [i]), 99, replace=False) for i in items])
    split = Split(users, items, neg)
    scorer = EmbeddingScorer(torch.randn(n_users, 8), torch.randn(n_items, 8))
    whole = evaluate_sampled(scorer, split, KS, batch=1000)
    pieces = evaluate_sampled(scorer, split, KS, batch=4)
    assert whole == pytest.approx(pieces)
    full = (scorer.user_emb @ scorer.item_emb.T).numpy()
    cand = split.candidates()
    want = _brute_sampled(full[users[:, None], cand][:, 0], full[users[:, None], cand][:, 1:], KS)
    for name, value in want.items():
        assert whole[name] == pytest.approx(value, rel=1e-5, abs=1e-6)


def _brute_full(scores: np.ndarray, ds, split_name: str, ks: list[int]) -> dict[str, float]:
    split = getattr(ds, split_name)
    masked = {}
    for u, i in zip(ds.train[ds.target].user.tolist(), ds.train[ds.target].item.tolist()):
        masked.setdefault(u, set()).add(i)
    if split_name == "test":
        for u, i in zip(ds.valid.user.tolist(), ds.valid.item.tolist()):
            masked.setdefault(u, set()).add(i)
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr", "arp")}
    popularity = sum(np.bincount(ds.train[b].item, minlength=ds.n_items) for b in ds.behaviors)
    tops = []
    for row, (u, item) in enumerate(zip(split.user.tolist(), split.item.tolist())):
        s = scores[row].astype(np.float64).copy()
        for j in masked.get(u, ()):
            s[j] = -np.inf
        ranking = np.argsort(-s, kind="stable")
        tops.append(ranking)
        rank = int(np.flatnonzero(ranking == item)[0])
        for k in ks:
            out[f"arp@{k}"] += popularity[ranking[:k]].mean()
            if rank < k:
                out[f"recall@{k}"] += 1
                out[f"hr@{k}"] += 1
                out[f"ndcg@{k}"] += 1 / math.log2(rank + 2)
    out = {name: value / len(split) for name, value in out.items()}
    assert len(split) <= 1000  # every user is in the personalization sample
    for k in ks:
        lists = [set(t[:k].tolist()) for t in tops]
        out[f"coverage@{k}"] = len(set().union(*lists)) / ds.n_items
        overlaps = [len(a & b) / k for i, a in enumerate(lists) for b in lists[i + 1:]]
        out[f"personalization@{k}"] = 1 - float(np.mean(overlaps))
    return out


@pytest.mark.parametrize("split_name", ["test", "valid"])
def test_evaluate_full_matches_brute_force_ranking(tiny, split_name):
    gen = torch.Generator().manual_seed(3)
    scorer = EmbeddingScorer(torch.randn(tiny.n_users, 8, generator=gen), torch.randn(tiny.n_items, 8, generator=gen))
    split = getattr(tiny, split_name)
    assert len(split) > 0
    scores = scorer.score_all(torch.from_numpy(split.user)).numpy()
    want = _brute_full(scores, tiny, split_name, KS)
    got = evaluate_full(scorer, tiny, split_name, KS, batch=37)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert evaluate_full(scorer, tiny, split_name, KS, batch=4096) == pytest.approx(got)


def test_beyond_accuracy_metrics_by_hand(tiny):
    """Three users, K = 2, every other item scored -inf: user lists {0, 1}, {0, 2} and {3, 4}
    (known target items are masked, so the scores below only reach unmasked items)."""
    from cml_cli.data.dataset import Interactions, MultiBehaviorDataset, Split

    empty = np.empty(0, np.int64)
    ds = MultiBehaviorDataset(
        name="hand", behaviors=["view", "buy"], n_users=3, n_items=6,
        train={"view": Interactions(np.array([0, 1, 2, 2]), np.array([0, 0, 0, 4])),
               "buy": Interactions(np.array([0]), np.array([5]))},
        test=Split(np.array([0, 1, 2]), np.array([1, 5, 3]), np.zeros((3, 99), np.int64)),
        valid=Split(empty, empty, np.zeros((0, 99), np.int64)), meta_users=empty)
    table = torch.full((3, 6), -1e9)
    table[0, [0, 1]] = torch.tensor([2.0, 1.0])
    table[1, [0, 2]] = torch.tensor([2.0, 1.0])
    table[2, [3, 4]] = torch.tensor([2.0, 1.0])

    class Fixed:
        def score_all(self, users):
            return table[users].clone()

    got = evaluate_full(Fixed(), ds, "test", [2])
    assert got["hr@2"] == pytest.approx(2 / 3)  # users 0 (item 1) and 2 (item 3) find their item
    assert got["coverage@2"] == pytest.approx(5 / 6)  # items 0..4 of 6
    # pair overlaps |L_u ∩ L_v| / 2: (0, 1) 1/2, (0, 2) 0, (1, 2) 0 -> mean 1/6
    assert got["personalization@2"] == pytest.approx(1 - 1 / 6)
    # interactions over all behaviors: item 0: 3, item 1: 0, item 2: 0, item 3: 0, item 4: 1
    assert got["arp@2"] == pytest.approx(((3 + 0) / 2 + (3 + 0) / 2 + (0 + 1) / 2) / 3)


def test_full_ranking_masks_known_items(tiny):
    """A scorer that puts every training target item (and the validation item) on top still
    finds the held-out item first, because known items are masked."""
    mu, mi = known_items(tiny, "test")
    bonus = np.zeros((tiny.n_users, tiny.n_items), np.float32)
    bonus[mu, mi] = 100.0
    bonus[tiny.test.user, tiny.test.item] = 50.0

    class Fixed:
        def score_all(self, users):
            return torch.from_numpy(bonus[users.numpy()])

    got = evaluate_full(Fixed(), tiny, "test", [1])
    assert got["hr@1"] == pytest.approx(1.0)
    assert got["ndcg@1"] == pytest.approx(1.0)


def test_evaluate_full_with_ties_is_independent_of_other_cutoffs(tiny):
    """Heavily tied scores (4 distinct values): each cut-off's metric is the same whichever other
    cut-offs are requested, and equals a stable brute-force ranking (ties by item id)."""
    rng = np.random.default_rng(4)
    table = torch.from_numpy(rng.integers(0, 4, size=(tiny.n_users, tiny.n_items)).astype(np.float32))

    class Tied:
        def score_all(self, users):
            return table[users].clone()

    alone = {k: evaluate_full(Tied(), tiny, "test", [k]) for k in (1, 5, 10)}
    together = evaluate_full(Tied(), tiny, "test", [1, 5, 10, 50])
    for got in alone.values():
        for name, value in got.items():
            assert together[name] == pytest.approx(value), name
    want = _brute_full(table[torch.from_numpy(tiny.test.user)].numpy(), tiny, "test", [1, 5, 10, 50])
    for name, value in want.items():
        assert together[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
