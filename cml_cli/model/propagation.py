"""Sparse propagation shared by every graph model: CML's encoder, LightGCN, MB-CGCN, CRGCN.

One :class:`BehaviorGraph` stacks K user-item adjacencies into one block-diagonal PyG
``EdgeIndex`` per direction (CSR cached), so a single ``torch_geometric.utils.spmm``
propagates every behavior of a layer, forward and backward. :func:`lightgcn` runs
LightGCN's linear layers over it; the tests check it against PyG's ``LightGCN``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.utils import spmm

warnings.filterwarnings("ignore", message="Sparse (invariant checks|CSR tensor support)")


def unique_pairs(users: list[np.ndarray], items: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(user, item)`` pairs of several interaction lists (one edge per pair)."""
    keys = np.unique(np.concatenate([u.astype(np.int64) * n_items + i for u, i in zip(users, items)]))
    return keys // n_items, keys % n_items


class BehaviorGraph:
    """The K behavior adjacencies as one block-diagonal ``EdgeIndex`` per direction.

    ``user_to_item`` has shape ``[K * |U|, K * |I|]`` (block k is ``A_k``), ``item_to_user``
    its transpose, so one ``spmm`` propagates every behavior at once. For ``norm='symmetric'``
    the blocks are ``D_U^{-1/2} A_k D_I^{-1/2}``; for ``norm='mean'`` a message is the mean over
    the neighbours, ``D_U^{-1} A_k`` towards users and ``D_I^{-1} A_k^T`` towards items (degrees
    per behavior). Both are applied as dense scalings around the spmm.

    :meth:`without` gives a view with some edges held out of the propagation, ``A_k - Δ_k``,
    computed as ``A_k x - Δ_k x`` (the normalisers keep the full graph's degrees).
    """

    def __init__(self, users: list[np.ndarray], items: list[np.ndarray], n_users: int, n_items: int,
                 norm: str = "none", device: torch.device | str = "cpu"):
        self.n_users, self.n_items, self.n_behaviors, self.norm = n_users, n_items, len(users), norm
        self.held_out: tuple[Tensor, Tensor] | None = None
        rows = np.concatenate([u + k * n_users for k, u in enumerate(users)])
        cols = np.concatenate([i + k * n_items for k, i in enumerate(items)])
        size_u, size_i = len(users) * n_users, len(users) * n_items
        self.user_to_item = self._edge_index(rows, cols, (size_u, size_i), device)
        self.item_to_user = self._edge_index(cols, rows, (size_i, size_u), device)
        deg_u = np.bincount(rows, minlength=size_u).astype(np.float32)
        deg_i = np.bincount(cols, minlength=size_i).astype(np.float32)
        with np.errstate(divide="ignore"):
            self.scale_u = torch.from_numpy(np.where(deg_u > 0, deg_u ** -0.5, 0.0)).to(device)[:, None]
            self.scale_i = torch.from_numpy(np.where(deg_i > 0, deg_i ** -0.5, 0.0)).to(device)[:, None]
            self.inv_u = torch.from_numpy(np.where(deg_u > 0, 1.0 / deg_u, 0.0).astype(np.float32)).to(device)[:, None]
            self.inv_i = torch.from_numpy(np.where(deg_i > 0, 1.0 / deg_i, 0.0).astype(np.float32)).to(device)[:, None]

    @staticmethod
    def _edge_index(rows: np.ndarray, cols: np.ndarray, size: tuple[int, int], device) -> EdgeIndex:
        order = np.lexsort((cols, rows))
        ei = torch.from_numpy(np.stack([rows[order], cols[order]]).astype(np.int64)).to(device)
        edge_index = EdgeIndex(ei, sparse_size=size, sort_order="row")
        edge_index.fill_cache_()
        return edge_index

    def without(self, rows: Tensor, cols: Tensor) -> BehaviorGraph:
        """This graph minus the edges ``(rows[j], cols[j])``, given in block coordinates
        (``k * |U| + u``, ``k * |I| + i``), each of which must be an edge of the graph."""
        view = copy.copy(self)
        view.held_out = (rows, cols)
        return view

    def _stack(self, h: Tensor, n: int) -> Tensor:
        """``[n, d]`` (the same input for every block) or ``[K, n, d]`` -> ``[K * n, d]``."""
        return h.reshape(self.n_behaviors * n, -1) if h.dim() == 3 else h.repeat(self.n_behaviors, 1)

    def to_users(self, h_item: Tensor) -> Tensor:
        """``M_U^k = A_k H_I`` for every k: ``[|I|, d]`` or ``[K, |I|, d]`` -> ``[K, |U|, d]``."""
        x = self._stack(h_item, self.n_items)
        if self.norm == "symmetric":
            x = x * self.scale_i
        out = spmm(self.user_to_item, x)
        if self.held_out is not None:
            out = out.index_add(0, self.held_out[0], x[self.held_out[1]], alpha=-1)
        if self.norm == "symmetric":
            out = out * self.scale_u
        elif self.norm == "mean":
            out = out * self.inv_u
        return out.view(self.n_behaviors, self.n_users, -1)

    def to_items(self, h_user: Tensor) -> Tensor:
        """``M_I^k = A_k^T H_U`` for every k: ``[|U|, d]`` or ``[K, |U|, d]`` -> ``[K, |I|, d]``."""
        x = self._stack(h_user, self.n_users)
        if self.norm == "symmetric":
            x = x * self.scale_u
        out = spmm(self.item_to_user, x)
        if self.held_out is not None:
            out = out.index_add(0, self.held_out[1], x[self.held_out[0]], alpha=-1)
        if self.norm == "symmetric":
            out = out * self.scale_i
        elif self.norm == "mean":
            out = out * self.inv_i
        return out.view(self.n_behaviors, self.n_items, -1)




def lightgcn(graph: BehaviorGraph, user_emb: Tensor, item_emb: Tensor, layers: int) -> tuple[Tensor, Tensor]:
    r"""LightGCN over each block of ``graph`` independently, from shared layer-0 tables:

    .. math::
        e^{(l+1)}_u = \sum_{i \in N_k(u)} \frac{e^{(l)}_i}{\sqrt{|N_k(u)|\,|N_k(i)|}}, \qquad
        e_u = \frac{1}{L+1} \sum_{l=0}^{L} e^{(l)}_u

    (items alike). ``graph`` must use ``norm='symmetric'``; ``user_emb [|U|, d]`` and
    ``item_emb [|I|, d]`` (or ``[K, |U|, d]`` / ``[K, |I|, d]``, one input per block) ->
    ``[K, |U|, d]`` and ``[K, |I|, d]``.
    """
    shape_u = (graph.n_behaviors, graph.n_users, user_emb.shape[-1])
    shape_i = (graph.n_behaviors, graph.n_items, item_emb.shape[-1])
    h_u, h_i = user_emb.expand(shape_u), item_emb.expand(shape_i)
    sum_u, sum_i = h_u, h_i
    for _ in range(layers):
        h_u, h_i = graph.to_users(h_i), graph.to_items(h_u)
        sum_u, sum_i = sum_u + h_u, sum_i + h_i
    return sum_u / (layers + 1), sum_i / (layers + 1)
