"""Vectorised positive and negative sampling over one behavior's interactions."""

from __future__ import annotations

import numpy as np


class BehaviorIndex:
    """CSR view of a behavior: ``indptr [n_users + 1]``, ``indices [nnz]`` sorted per user,
    and the sorted pair keys ``user * n_items + item`` for membership tests."""

    def __init__(self, user: np.ndarray, item: np.ndarray, n_users: int, n_items: int):
        self.n_users, self.n_items = n_users, n_items
        keys = np.unique(user.astype(np.int64) * n_items + item.astype(np.int64))
        self.keys = keys
        self.indices = keys % n_items
        self.indptr = np.searchsorted(keys // n_items, np.arange(n_users + 1), side="left").astype(np.int64)
        self.degree = np.diff(self.indptr)

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Boolean mask: is ``(user[j], item[j])`` an interaction?"""
        keys = user.astype(np.int64) * self.n_items + item
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys if len(self.keys) else np.zeros(keys.shape, bool)

    def sample_positive(self, user: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One item drawn uniformly from each user's items; ``mask`` is False where a user has none."""
        deg = self.degree[user]
        mask = deg > 0
        offset = np.floor(rng.random(user.shape[0]) * np.maximum(deg, 1)).astype(np.int64)
        item = self.indices[np.minimum(self.indptr[user] + offset, max(len(self.indices) - 1, 0))] if len(
            self.indices) else np.zeros_like(user)
        return np.where(mask, item, 0), mask

    def sample_negative(self, user: np.ndarray, rng: np.random.Generator, rounds: int = 20) -> np.ndarray:
        """One item per user drawn uniformly from the items the user has not interacted with
        (rejection sampling; after ``rounds`` redraws a rare leftover is kept as drawn)."""
        item = rng.integers(0, self.n_items, size=user.shape[0], dtype=np.int64)
        bad = self.contains(user, item)
        for _ in range(rounds):
            if not bad.any():
                break
            item[bad] = rng.integers(0, self.n_items, size=int(bad.sum()), dtype=np.int64)
            bad[bad] = self.contains(user[bad], item[bad])
        return item

    def sample_per_user(
        self, users: np.ndarray, max_per_user: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``max_per_user`` distinct positives per user, without replacement.
        Returns parallel ``(user, item)`` arrays."""
        deg = self.degree[users]
        starts = self.indptr[users]
        total = int(deg.sum())
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        owner = np.repeat(np.arange(len(users)), deg)
        within = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
        priority = rng.random(total)
        order = np.lexsort((priority, owner))
        rank = np.empty(total, np.int64)
        rank[order] = within
        keep = rank < max_per_user
        return users[owner[keep]], self.indices[starts[owner[keep]] + within[keep]]


class TripleSampler:
    """BPR triples over a dataset's behaviors, driven by one behavior's training pairs (the
    ``anchor``, default the target).

    An epoch is a shuffled partition of the anchor's pairs into batches of ``batch`` rows. For
    the rows of a batch, :meth:`triples` gives one ``(user, pos, neg)`` triple set per
    behavior in ``behaviors`` (indices into ``ds.behaviors``; default: the anchor only): for
    the anchor, each pair with one uniform negative item the user never had under it; for
    another behavior k, ``aux_samples`` positives drawn uniformly from the user's items under
    k (users without any are skipped) with negatives the user never had under k."""

    def __init__(self, ds, batch: int, behaviors: list[int] | None = None, aux_samples: int = 1,
                 anchor: int | None = None):
        self.target = len(ds.behaviors) - 1 if anchor is None else anchor
        pairs = ds.train[ds.behaviors[self.target]]
        self.user, self.item = pairs.user.astype(np.int64), pairs.item.astype(np.int64)
        self.batch, self.aux_samples = batch, aux_samples
        self.behaviors = list(behaviors) if behaviors is not None else [self.target]
        self.index = {k: BehaviorIndex(ds.train[ds.behaviors[k]].user, ds.train[ds.behaviors[k]].item, ds.n_users,
                                       ds.n_items) for k in self.behaviors}

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        """A shuffled partition of the target training pairs into batches."""
        perm = rng.permutation(len(self.user))
        return [perm[lo:lo + self.batch] for lo in range(0, len(perm), self.batch)]

    def triples(self, rows: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``[(user, pos, neg)]``, one per behavior of ``self.behaviors``, each ``[n_k]``."""
        user, item = self.user[rows], self.item[rows]
        out = []
        for k in self.behaviors:
            index = self.index[k]
            if k == self.target:
                u, pos = user, item
            else:
                repeated = np.repeat(user, self.aux_samples)
                pos, has = index.sample_positive(repeated, rng)
                u, pos = repeated[has], pos[has]
            out.append((u, pos, index.sample_negative(u, rng)))
        return out
