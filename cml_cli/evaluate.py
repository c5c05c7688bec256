"""Evaluation: the paper's sampled 1+99 ranking and full ranking over all items."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch_geometric.metrics import LinkPredHitRatio, LinkPredNDCG, LinkPredRecall

from cml_cli.data.dataset import MultiBehaviorDataset, Split


class Scorer(Protocol):
    """Anything that scores (user, item) pairs: ``users [B]``, ``items [B, C]`` -> ``[B, C]``."""

    def score(self, users: Tensor, items: Tensor) -> Tensor: ...


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


def evaluate_full(scorer, ds: MultiBehaviorDataset, split_name: str, ks: list[int], batch: int = 1024,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Rank every item for each user (known target items masked); Recall, NDCG and HR at
    each K with ``torch_geometric.metrics.LinkPred*``, in user batches of ``batch``."""
    split: Split = getattr(ds, split_name)
    metrics = {}
    for k in ks:
        metrics[f"recall@{k}"] = LinkPredRecall(k)
        metrics[f"ndcg@{k}"] = LinkPredNDCG(k)
        metrics[f"hr@{k}"] = LinkPredHitRatio(k)
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
        for m in metrics.values():
            m.update(top, truth)
    return {name: float(m.compute()) for name, m in metrics.items()}
