"""Sparse propagation shared by every graph model: CML's encoders, LightGCN, MB-CGCN, CRGCN.

A :class:`SparseMatrix` is a fixed weighted sparse matrix with its transpose kept beside it,
multiplied with dense matrices under autograd (the gradient of :math:`M X` w.r.t. :math:`X` is
:math:`M^\\top G`). On CPU the products run through scipy's CSR kernel, which measured about
twice as fast as ``torch.sparse.mm`` on this project's graphs; on CUDA through
``torch.sparse.mm`` on CSR tensors.

:class:`BehaviorGraph` stacks K user-item adjacencies into one block-diagonal
:class:`SparseMatrix` per direction, with the normalisation folded into the edge weights, so one
product propagates every behavior of a layer, forward and backward. :func:`lightgcn` runs
LightGCN's linear layers over it; the tests check it against PyG's ``LightGCN``.
:meth:`BehaviorGraph.merged` gives the mean of the blocks as one ``[|U|, |I|]`` matrix and
:meth:`BehaviorGraph.stacked` the blocks on top of each other, which CML's LightGCN encoder
needs (see :class:`~cml_cli.model.encoder.LightGCNBehaviorEncoder`).
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support")


def unique_pairs(users: list[np.ndarray], items: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(user, item)`` pairs of several interaction lists (one edge per pair)."""
    keys = np.unique(np.concatenate([u.astype(np.int64) * n_items + i for u, i in zip(users, items)]))
    return keys // n_items, keys % n_items


PARALLEL_NNZ = 1 << 17  # products over fewer stored entries run in one thread


@functools.lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """A thread pool of this process (``pid``: a forked child makes its own)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cml-spmm")


def _row_blocks(csr: sp.csr_matrix, parts: int) -> list[tuple[int, int]]:
    """``parts`` row ranges of ``csr`` holding about equal numbers of stored entries."""
    bounds = np.searchsorted(csr.indptr, np.linspace(0, csr.nnz, parts + 1)[1:-1])
    edges = np.unique(np.r_[0, bounds, csr.shape[0]])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


class SparseMatrix:
    r"""A fixed sparse matrix :math:`M \in \mathbb R^{n \times m}` (duplicates summed) that
    multiplies dense matrices: ``M @ x`` for ``x [m, d]`` gives ``[n, d]``, differentiable in
    ``x``. ``M.T`` is the transpose (built once, shared)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int],
                 device: torch.device | str = "cpu", _transpose: SparseMatrix | None = None):
        self.shape, self.device = (int(shape[0]), int(shape[1])), torch.device(device)
        csr = sp.csr_matrix((np.asarray(values, np.float32), (rows, cols)), shape=self.shape)
        csr.sum_duplicates()
        self.csr = csr
        self._torch: Tensor | None = None
        self._t = _transpose
        self._blocks: dict[int, list[tuple[int, int, sp.csr_matrix]]] = {}

    @classmethod
    def from_csr(cls, csr: sp.csr_matrix, device: torch.device | str = "cpu") -> SparseMatrix:
        """A :class:`SparseMatrix` of an existing CSR matrix (no copy, no duplicates expected)."""
        matrix = cls.__new__(cls)
        matrix.shape, matrix.device, matrix.csr = csr.shape, torch.device(device), csr
        matrix._torch, matrix._t, matrix._blocks = None, None, {}
        return matrix

    @property
    def nnz(self) -> int:
        return int(self.csr.nnz)

    @property
    def T(self) -> SparseMatrix:  # noqa: N802 - the usual name of a transpose
        if self._t is None:
            coo = self.csr.tocoo()
            self._t = SparseMatrix(coo.col, coo.row, coo.data, self.shape[::-1], self.device, _transpose=self)
        return self._t

    def mm(self, x: Tensor) -> Tensor:
        """``M x`` without autograd. On CPU, scipy's kernel (which releases the GIL) runs on row
        blocks of equal work in ``torch.get_num_threads()`` threads."""
        if self.device.type != "cpu":
            return self.torch_mm(x)
        dense = np.ascontiguousarray(x.detach().numpy())
        threads = torch.get_num_threads() if self.nnz >= PARALLEL_NNZ else 1
        if threads <= 1:
            return torch.from_numpy(np.asarray(self.csr @ dense, dtype=dense.dtype))
        out = np.empty((self.shape[0], dense.shape[1]), dtype=dense.dtype)

        def block(part: tuple[int, int, sp.csr_matrix]) -> None:
            lo, hi, rows = part
            out[lo:hi] = rows @ dense

        list(_pool(threads, os.getpid()).map(block, self._split(threads)))
        return torch.from_numpy(out)

    def torch_mm(self, x: Tensor) -> Tensor:
        """``M x`` through ``torch.sparse.mm`` on a CSR tensor on ``x``'s device (the CUDA path)."""
        if self._torch is None or self._torch.device != x.device:
            self._torch = torch.sparse_csr_tensor(
                torch.from_numpy(self.csr.indptr.astype(np.int64)), torch.from_numpy(self.csr.indices.astype(np.int64)),
                torch.from_numpy(self.csr.data), self.shape, device=x.device)
        return torch.sparse.mm(self._torch, x)

    def _split(self, parts: int) -> list[tuple[int, int, sp.csr_matrix]]:
        if parts not in self._blocks:
            self._blocks[parts] = [(lo, hi, self.csr[lo:hi]) for lo, hi in _row_blocks(self.csr, parts)]
        return self._blocks[parts]

    def __matmul__(self, x: Tensor) -> Tensor:
        return _SparseMM.apply(x, self)


class _SparseMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, matrix: SparseMatrix) -> Tensor:
        ctx.matrix = matrix
        return matrix.mm(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        # through apply, so that a second-order gradient (create_graph=True) differentiates it too
        return _SparseMM.apply(grad.contiguous(), ctx.matrix.T), None


class BehaviorGraph:
    r"""The K behavior adjacencies :math:`A_k \in \{0,1\}^{|U| \times |I|}` as one block-diagonal
    matrix ``[K |U|, K |I|]`` (block k is :math:`\tilde A_k`), so one product propagates every
    behavior at once. ``norm`` chooses :math:`\tilde A_k`: ``'none'`` :math:`A_k`,
    ``'symmetric'`` :math:`D_{U,k}^{-1/2} A_k D_{I,k}^{-1/2}`, ``'mean'`` a mean over the
    neighbours (:math:`D_{U,k}^{-1} A_k` towards users, :math:`D_{I,k}^{-1} A_k^\top` towards
    items), with the degrees of each behavior.

    :meth:`without` gives a view with some edges held out of the propagation,
    :math:`\tilde A_k - \Delta_k` (the weights keep the full graph's degrees).
    """

    def __init__(self, users: list[np.ndarray], items: list[np.ndarray], n_users: int, n_items: int,
                 norm: str = "none", device: torch.device | str = "cpu"):
        self.n_users, self.n_items, self.n_behaviors, self.norm = n_users, n_items, len(users), norm
        self.device = torch.device(device)
        self.held_out: tuple[Tensor, Tensor] | None = None
        keys = np.unique(np.concatenate([(u.astype(np.int64) + k * n_users) * (len(users) * n_items)
                                         + i.astype(np.int64) + k * n_items
                                         for k, (u, i) in enumerate(zip(users, items))]))
        self.rows, self.cols = keys // (len(users) * n_items), keys % (len(users) * n_items)
        size_u, size_i = len(users) * n_users, len(users) * n_items
        deg_u = np.bincount(self.rows, minlength=size_u).astype(np.float64)
        deg_i = np.bincount(self.cols, minlength=size_i).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.root_u = np.where(deg_u > 0, deg_u ** -0.5, 0.0)
            self.root_i = np.where(deg_i > 0, deg_i ** -0.5, 0.0)
            self.inv_u = np.where(deg_u > 0, 1.0 / deg_u, 0.0)
            self.inv_i = np.where(deg_i > 0, 1.0 / deg_i, 0.0)
        to_user_w, to_item_w = self.edge_weights(self.rows, self.cols)
        self.user_to_item = SparseMatrix(self.rows, self.cols, to_user_w, (size_u, size_i), device)
        self.item_to_user = (self.user_to_item.T if norm != "mean" else
                             SparseMatrix(self.cols, self.rows, to_item_w, (size_i, size_u), device))

    @property
    def n_edges(self) -> int:
        """Edges over all blocks (one per distinct (behavior, user, item))."""
        return len(self.rows)

    def edge_weights(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights of edges ``(rows, cols)`` (block coordinates) towards users and towards items."""
        if self.norm == "symmetric":
            w = self.root_u[rows] * self.root_i[cols]
            return w, w
        if self.norm == "mean":
            return self.inv_u[rows], self.inv_i[cols]
        ones = np.ones(len(rows))
        return ones, ones

    def without(self, rows: Tensor, cols: Tensor) -> BehaviorGraph:
        """This graph minus the edges ``(rows[j], cols[j])``, given in block coordinates
        (``k * |U| + u``, ``k * |I| + i``), each of which must be an edge of the graph."""
        view = copy.copy(self)
        view.held_out = (rows, cols)
        return view

    def _held_out_weights(self) -> tuple[Tensor, Tensor]:
        rows, cols = (t.cpu().numpy() for t in self.held_out)
        w_u, w_i = self.edge_weights(rows, cols)
        return (torch.as_tensor(w_u, dtype=torch.float32, device=self.device)[:, None],
                torch.as_tensor(w_i, dtype=torch.float32, device=self.device)[:, None])

    def _stack(self, h: Tensor, n: int) -> Tensor:
        """``[n, d]`` (the same input for every block) or ``[K, n, d]`` -> ``[K * n, d]``."""
        return h.reshape(self.n_behaviors * n, -1) if h.dim() == 3 else h.repeat(self.n_behaviors, 1)

    def to_users(self, h_item: Tensor) -> Tensor:
        r""":math:`M_U^k = \tilde A_k H_I` for every k: ``[|I|, d]`` or ``[K, |I|, d]`` -> ``[K, |U|, d]``."""
        x = self._stack(h_item, self.n_items)
        out = self.user_to_item @ x
        if self.held_out is not None:
            w_u, _ = self._held_out_weights()
            out = out.index_add(0, self.held_out[0], w_u * x[self.held_out[1]], alpha=-1)
        return out.view(self.n_behaviors, self.n_users, -1)

    def to_items(self, h_user: Tensor) -> Tensor:
        r""":math:`M_I^k = \tilde A_k^\top H_U` for every k: ``[|U|, d]`` or ``[K, |U|, d]`` -> ``[K, |I|, d]``."""
        x = self._stack(h_user, self.n_users)
        out = self.item_to_user @ x
        if self.held_out is not None:
            _, w_i = self._held_out_weights()
            out = out.index_add(0, self.held_out[1], w_i * x[self.held_out[0]], alpha=-1)
        return out.view(self.n_behaviors, self.n_items, -1)

    @functools.cached_property
    def merged(self) -> SparseMatrix:
        r""":math:`\bar A = \frac1K \sum_k \tilde A_k`, ``[|U|, |I|]`` (``merged.T`` towards items;
        ``norm`` must not be ``'mean'``, whose two directions are not transposes)."""
        w, _ = self.edge_weights(self.rows, self.cols)
        return SparseMatrix(self.rows % self.n_users, self.cols % self.n_items, w / self.n_behaviors,
                            (self.n_users, self.n_items), self.device)

    @functools.cached_property
    def stacked(self) -> SparseMatrix:
        r""":math:`[\tilde A_1; \dots; \tilde A_K]`, ``[K |U|, |I|]``: every behavior's messages to
        its users from one item input."""
        w, _ = self.edge_weights(self.rows, self.cols)
        return SparseMatrix(self.rows, self.cols % self.n_items, w, (self.n_behaviors * self.n_users, self.n_items),
                            self.device)

    def merged_to_users(self, h_item: Tensor) -> Tensor:
        r""":math:`\bar A H_I`: ``[|I|, d]`` -> ``[|U|, d]`` (held-out edges subtracted)."""
        out = self.merged @ h_item
        if self.held_out is not None:
            w_u, _ = self._held_out_weights()
            users, items = self.held_out[0] % self.n_users, self.held_out[1] % self.n_items
            out = out.index_add(0, users, w_u * h_item[items], alpha=-1.0 / self.n_behaviors)
        return out

    def merged_to_items(self, h_user: Tensor) -> Tensor:
        r""":math:`\bar A^\top H_U`: ``[|U|, d]`` -> ``[|I|, d]`` (held-out edges subtracted)."""
        out = self.merged.T @ h_user
        if self.held_out is not None:
            _, w_i = self._held_out_weights()
            users, items = self.held_out[0] % self.n_users, self.held_out[1] % self.n_items
            out = out.index_add(0, items, w_i * h_user[users], alpha=-1.0 / self.n_behaviors)
        return out

    def stacked_to_users(self, h_item: Tensor, users: Tensor | None = None) -> Tensor:
        r""":math:`\tilde A_k H_I` for every k from one input: ``[|I|, d]`` -> ``[K, |U|, d]``, or only
        the rows of ``users`` (sorted distinct ids ``[m]``; held-out edges must be theirs) -> ``[K, m, d]``."""
        if users is None:
            matrix, rows, n = self.stacked, None, self.n_users
        else:
            ids = users.cpu().numpy()
            rows = (np.arange(self.n_behaviors)[:, None] * self.n_users + ids[None, :]).ravel()
            matrix, n = SparseMatrix.from_csr(self.stacked.csr[rows], self.device), len(ids)
        out = matrix @ h_item
        if self.held_out is not None:
            w_u, _ = self._held_out_weights()
            held = self.held_out[0]
            if rows is not None:  # block row k |U| + u -> row k m + (position of u in users)
                held = (held // self.n_users) * n + torch.searchsorted(users, held % self.n_users)
            out = out.index_add(0, held, w_u * h_item[self.held_out[1] % self.n_items], alpha=-1)
        return out.view(self.n_behaviors, n, h_item.shape[-1])


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
