"""Evaluation: the paper's sampled 1+99 ranking and full ranking over all items."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch_geometric.metrics import (
    LinkPredAveragePopularity,
    LinkPredCoverage,
    LinkPredHitRatio,
    LinkPredMetricCollection,
    LinkPredNDCG,
    LinkPredPersonalization,
    LinkPredRecall,
)

from cml_cli.data.dataset import MultiBehaviorDataset, Split


class Scorer(Protocol):
    """Anything that scores (user, item) pairs: ``score(users [B], items [B, C]) -> [B, C]``
    for the sampled protocol and ``score_all(users [B]) -> [B, |I|]`` (writable: full
    ranking masks known items in place)."""

    def score(self, users: Tensor, items: Tensor) -> Tensor: ...

    def score_all(self, users: Tensor) -> Tensor: ...


class EmbeddingScorer:
    r"""Dot-product scores :math:`\hat x(u, i) = e_u \cdot e_i`."""

    def __init__(self, user_emb: Tensor, item_emb: Tensor):
        self.user_emb, self.item_emb = user_emb, item_emb

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", self.user_emb[users], self.item_emb[items])

    def score_all(self, users: Tensor) -> Tensor:
        return self.user_emb[users] @ self.item_emb.T


def sampled_metrics(pos: Tensor, neg: Tensor, ks: list[int]) -> dict[str, float]:
    r"""HR@N and NDCG@N of one positive among its negatives: ``pos [n]``, ``neg [n, m]``.

    Ties are broken uniformly at random *in expectation*: with :math:`g` negatives scoring
    higher and :math:`t` tied, the positive's rank is uniform on :math:`g..g+t`, and each metric
    is averaged over those ranks (so a constant scorer gets exactly chance level).
    """
    if pos.numel() == 0:
        return {**{f"hr@{k}": 0.0 for k in ks}, **{f"ndcg@{k}": 0.0 for k in ks}}
    greater = (neg > pos[:, None]).sum(1)
    ties = (neg == pos[:, None]).sum(1)
    ranks = torch.arange(neg.shape[1] + 1, device=pos.device)[None, :]
    in_range = (ranks >= greater[:, None]) & (ranks <= (greater + ties)[:, None])
    weight = in_range.float() / (ties + 1).float()[:, None]
    gain = 1.0 / torch.log2(ranks.float() + 2.0)
    out = {}
    for k in ks:
        hit = (ranks < k).float()
        out[f"hr@{k}"] = float((weight * hit).sum(1).mean())
    for k in ks:
        hit = (ranks < k).float()
        out[f"ndcg@{k}"] = float((weight * hit * gain).sum(1).mean())
    return out


def evaluate_sampled(scorer: Scorer, split: Split, ks: list[int], batch: int = 4096,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """The paper's protocol over the dataset's fixed candidates (held-out item + 99)."""
    cands = torch.from_numpy(split.candidates())
    users = torch.from_numpy(split.user)
    scores = []
    for lo in range(0, len(split), batch):
        u = users[lo:lo + batch].to(device)
        c = cands[lo:lo + batch].to(device)
        scores.append(scorer.score(u, c).float().cpu())
    if not scores:
        return sampled_metrics(torch.empty(0), torch.empty(0, 99), ks)
    s = torch.cat(scores)
    return sampled_metrics(s[:, 0], s[:, 1:], ks)


def known_items(ds: MultiBehaviorDataset, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Target items each user is known to have, masked in full ranking: training targets,
    plus the validation item when ranking for the test split."""
    t = ds.train[ds.target]
    users, items = [t.user], [t.item]
    if split_name == "test":
        users.append(ds.valid.user)
        items.append(ds.valid.item)
    return np.concatenate(users), np.concatenate(items)


PERSONALIZATION_USERS = 1000  # users whose top-K lists are compared pairwise (a fixed seeded sample)


def full_metrics(ks: list[int], n_items: int, popularity: Tensor) -> tuple[LinkPredMetricCollection,
                                                                           dict[str, LinkPredPersonalization]]:
    r"""PyG's metrics of full ranking at every cut-off K, keyed ``<name>@K``:

    * ``recall@K``, ``ndcg@K``, ``hr@K``: accuracy against the held-out items;
    * ``coverage@K``: the fraction of all items that are in at least one evaluated user's top-K;
    * ``arp@K``: the mean, over users, of the mean ``popularity`` of their top-K items;
    * ``personalization@K`` (kept apart: it sees a sample of the users): 1 - the mean overlap
      :math:`|L_u \cap L_v| / K` of the top-K lists over all pairs of the sampled users.
    """
    collection = LinkPredMetricCollection({
        name: metric for k in ks for name, metric in (
            (f"recall@{k}", LinkPredRecall(k)), (f"ndcg@{k}", LinkPredNDCG(k)), (f"hr@{k}", LinkPredHitRatio(k)),
            (f"coverage@{k}", LinkPredCoverage(k, n_items)), (f"arp@{k}", LinkPredAveragePopularity(k, popularity)))})
    personal = {f"personalization@{k}": LinkPredPersonalization(k, max_src_nodes=None) for k in ks}
    return collection, personal


def evaluate_full(scorer: Scorer, ds: MultiBehaviorDataset, split_name: str, ks: list[int], batch: int = 1024,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Rank every item for each user of the split (known target items masked) and compute
    :func:`full_metrics` in user batches of ``batch``. Popularity for ``arp@K`` counts training
    interactions over all behaviors; ``personalization@K`` compares the top-K lists of a fixed
    sample of :data:`PERSONALIZATION_USERS` users (drawn with seed 0 from the split's users,
    the same for every model)."""
    split: Split = getattr(ds, split_name)
    collection, personal = full_metrics(ks, ds.n_items, torch.from_numpy(ds.item_interactions()))
    sampled = np.zeros(len(split), dtype=bool)
    sampled[np.random.default_rng(0).permutation(len(split))[:PERSONALIZATION_USERS]] = True
    mu, mi = known_items(ds, split_name)
    order = np.argsort(mu, kind="stable")
    mu, mi = mu[order], mi[order]
    kmax = min(max(ks), ds.n_items)
    for lo in range(0, len(split), batch):
        users = split.user[lo:lo + batch]
        u = torch.from_numpy(users).to(device)
        scores = scorer.score_all(u).float()
        left, right = np.searchsorted(mu, users, "left"), np.searchsorted(mu, users, "right")
        counts = right - left
        rows = np.repeat(np.arange(len(users)), counts)
        cols = mi[np.repeat(left - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))]
        scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
        # stable sort: tied items rank by item id, so a cut-off's metric does not depend on which
        # other cut-offs are asked for (topk orders ties differently for different k)
        top = scores.sort(dim=1, descending=True, stable=True).indices[:, :kmax].cpu()
        truth = torch.stack([torch.arange(len(users)), torch.from_numpy(split.item[lo:lo + batch])])
        collection.update(top, truth)
        for metric in personal.values():
            metric.update(top[torch.from_numpy(sampled[lo:lo + batch])], truth)
    values = {**{k: float(v) for k, v in collection.compute().items()},
              **{k: float(m.compute()) for k, m in personal.items()}}
    kinds = ("recall", "ndcg", "hr", "coverage", "personalization", "arp")
    return {f"{kind}@{k}": values[f"{kind}@{k}"] for k in ks for kind in kinds}
