"""Scoring by whole rows: a model that computes each user's scores of every item at once
(CascadingRank, history, blend) serves both evaluation protocols through :class:`RowScorer`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from cml_cli.data.dataset import MultiBehaviorDataset

CACHE_BYTES = 1 << 30  # score rows kept per scorer (1 GiB: every user of the MB-CGCN files, 0.74 GB)


class RowScorer:
    r"""The :class:`~cml_cli.evaluate.Scorer` of a row function ``compute(users [B]) -> [B, |I|]``
    (float32 numpy): ``score_all`` returns the rows, ``score`` reads the candidates from them.

    Rows are computed ``block`` users at a time, so memory stays bounded whatever the batch the
    caller asks for, on ``workers`` threads side by side (numpy and scipy release the GIL in
    their kernels). The rows of the first users asked for are kept, up to ``cache_bytes``, so
    the passes that follow (validation, sampled and full ranking of the test split) reuse them
    instead of computing again; ``compute`` must therefore give a user the same row whatever
    other users share its block.
    """

    def __init__(self, compute: Callable[[np.ndarray], np.ndarray], n_users: int, n_items: int, block: int = 1024,
                 cache_bytes: int = CACHE_BYTES, workers: int = 1):
        self.compute, self.n_items, self.block, self.workers = compute, n_items, max(1, block), max(1, workers)
        self.capacity = min(n_users, cache_bytes // (4 * max(n_items, 1)))
        self.slot = np.full(n_users, -1, dtype=np.int64)
        self.store = np.empty((self.capacity, n_items), dtype=np.float32)  # pages are touched as rows arrive
        self.used = 0

    def rows(self, users: np.ndarray) -> np.ndarray:
        """``[B, |I|]`` float32 scores of ``users`` (a fresh, writable array)."""
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.n_items), dtype=np.float32)
        slots = self.slot[users]
        hit = slots >= 0
        out[hit] = self.store[slots[hit]]
        missing = np.unique(users[~hit])
        waiting = np.flatnonzero(~hit)
        parts = [missing[lo:lo + self.block] for lo in range(0, len(missing), self.block)]
        with ThreadPoolExecutor(self.workers) as pool:
            for part, computed in zip(parts, pool.map(self.compute, parts)):
                # part is a slice of the sorted missing users: every waiting user in [first, last] is in it
                sel = waiting[(users[waiting] >= part[0]) & (users[waiting] <= part[-1])]
                out[sel] = computed[np.searchsorted(part, users[sel])]
                self._keep(part, computed)
        return out

    def _keep(self, users: np.ndarray, computed: np.ndarray) -> None:
        take = min(len(users), self.capacity - self.used)
        if take > 0:
            self.store[self.used:self.used + take] = computed[:take]
            self.slot[users[:take]] = np.arange(self.used, self.used + take)
            self.used += take

    def score_all(self, users: Tensor) -> Tensor:
        return torch.from_numpy(self.rows(users.cpu().numpy())).to(users.device)

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        u, it = users.cpu().numpy(), items.cpu().numpy()
        out = np.empty(it.shape, dtype=np.float32)
        for lo in range(0, len(u), self.block):
            out[lo:lo + self.block] = np.take_along_axis(self.rows(u[lo:lo + self.block]), it[lo:lo + self.block], 1)
        return torch.from_numpy(out).to(items.device)


def behavior_matrix(ds: MultiBehaviorDataset, behavior: str) -> sp.csr_matrix:
    """Binary ``[|U|, |I|]`` float32 CSR matrix of one behavior's training interactions."""
    t = ds.train[behavior]
    a = sp.csr_matrix((np.ones(len(t), dtype=np.float32), (t.user, t.item)), shape=(ds.n_users, ds.n_items))
    a.data[:] = 1.0  # a pair listed twice is one edge
    return a
