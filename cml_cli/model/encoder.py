"""Behavior-aware graph encoder (spec §2) with PyG sparse propagation."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric import EdgeIndex
from torch_geometric.utils import spmm

warnings.filterwarnings("ignore", message="Sparse (invariant checks|CSR tensor support)")


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

    def to_users(self, h_item: Tensor) -> Tensor:
        """``M_U^k = A_k H_I`` for every k: ``[|I|, d] -> [K, |U|, d]``."""
        x = h_item.repeat(self.n_behaviors, 1)
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
        """``M_I^k = A_k^T H_U`` for every k: ``[|U|, d] -> [K, |I|, d]``."""
        x = h_user.repeat(self.n_behaviors, 1)
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


class BehaviorEncoder(nn.Module):
    r"""Per layer :math:`l` and behavior :math:`k`:

    .. math::
        S_U^{k,l+1} = \sigma(A_k H_I^l W_U^l), \qquad
        H_U^{l+1} = \sigma\big(\tfrac{1}{K} \textstyle\sum_k A_k H_I^l \, W_U^l\big)

    (items alike with :math:`A_k^\top`, :math:`W_I^l`), then
    :math:`e_u = [H_U^1 \| \dots \| H_U^L] P_U` and :math:`e_u^k = [S_U^{k,1} \| \dots \| S_U^{k,L}] P_U`.
    Only the users' behavior-specific embeddings are returned: nothing downstream uses the items'.

    ``act='sigmoid'`` is the paper's :math:`\sigma`; ``act='tanh'`` replaces it with the
    zero-centred :math:`\tanh` (see the README's "Strong CML" note).

    ``ego=True`` also feeds the layer-0 tables into the projection (``P`` gets :math:`(L+1)d` rows):
    :math:`e_u = [E_U \| H_U^1 \| \dots \| H_U^L] P_U` and
    :math:`e_u^k = [E_U \| S_U^{k,1} \| \dots \| S_U^{k,L}] P_U` (items alike), so the score
    :math:`e_u \cdot e_i` contains item-to-item terms :math:`H_U^1 \cdot E_I` between the items a
    user touched and the candidate, as in LightGCN/NGCF, which also keep the ego embedding.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 16, layers: int = 3, act: str = "sigmoid",
                 ego: bool = False):
        super().__init__()
        self.ego = ego
        width = (layers + int(ego)) * dim
        self.act = torch.sigmoid if act == "sigmoid" else torch.tanh
        self.user_emb = nn.Parameter(torch.empty(n_users, dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        self.w_user = nn.Parameter(torch.empty(layers, dim, dim))
        self.w_item = nn.Parameter(torch.empty(layers, dim, dim))
        self.p_user = nn.Parameter(torch.empty(width, dim))
        self.p_item = nn.Parameter(torch.empty(width, dim))
        self.layers = layers
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.user_emb, self.item_emb, self.p_user, self.p_item):
            nn.init.xavier_uniform_(p)
        for w in (self.w_user, self.w_item):
            for layer in w:
                nn.init.xavier_uniform_(layer)

    def forward(self, graph: BehaviorGraph) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``e_u [|U|, d]``, ``e_i [|I|, d]`` and ``e_u^k [K, |U|, d]``."""
        h_u, h_i = self.user_emb, self.item_emb
        agg_u, agg_i, spec_u = ([h_u], [h_i], [h_u.expand(graph.n_behaviors, -1, -1)]) if self.ego else ([], [], [])
        for layer in range(self.layers):
            m_u = graph.to_users(h_i) @ self.w_user[layer]
            m_i = graph.to_items(h_u) @ self.w_item[layer]
            spec_u.append(self.act(m_u))
            h_u = self.act(m_u.mean(0))
            h_i = self.act(m_i.mean(0))
            agg_u.append(h_u)
            agg_i.append(h_i)
        e_u = torch.cat(agg_u, dim=-1) @ self.p_user
        e_i = torch.cat(agg_i, dim=-1) @ self.p_item
        e_uk = torch.cat(spec_u, dim=-1) @ self.p_user
        return e_u, e_i, e_uk
