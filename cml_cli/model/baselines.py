r"""The baselines: popularity, item-kNN, BPR-MF and LightGCN (their trainers are in
:mod:`cml_cli.train.baseline_trainers`). Popularity and item-kNN are fitted in closed form;
:class:`MF` and :class:`LightGCN` are :class:`~cml_cli.model.losses.BPRModel` s, trained with
the BPR objective they own.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.model.losses import BPRModel, Embeddings
from cml_cli.model.propagation import BehaviorGraph, lightgcn, unique_pairs

BLOCK = 1 << 22  # entries of a dense score block in item-kNN scoring (16 MiB of float32)


def merged_matrix(ds: MultiBehaviorDataset) -> sp.csr_matrix:
    """Binary ``[n_users, n_items]`` CSR matrix of every behavior's training interactions."""
    user, item = unique_pairs([ds.train[b].user for b in ds.behaviors], [ds.train[b].item for b in ds.behaviors],
                              ds.n_items)
    data = np.ones(len(user), dtype=np.float32)
    return sp.csr_matrix((data, (user, item)), shape=(ds.n_users, ds.n_items))


def item_popularity(ds: MultiBehaviorDataset) -> np.ndarray:
    """``[n_items]``: each item's number of training users over all behaviors merged."""
    return np.asarray(merged_matrix(ds).sum(axis=0)).ravel()


class PopularityScorer:
    r"""Most-popular items first, the same list for every user:

    .. math::
        \hat x(u, i) = |\{v : X_{vi} = 1\}|

    with :math:`X` the binary matrix of all behaviors' training interactions
    (:func:`item_popularity`).

    Args:
        counts (Tensor): each item's popularity, shape ``[|I|]``.
    """

    def __init__(self, counts: Tensor):
        self.counts = counts

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return self.counts.to(items.device)[items]

    def score_all(self, users: Tensor) -> Tensor:
        return self.counts.to(users.device)[None, :].repeat(users.shape[0], 1)  # writable: callers mask it


class ItemKNNScorer:
    r"""Item-based nearest neighbours, from `"Item-Based Collaborative Filtering
    Recommendation Algorithms" <https://doi.org/10.1145/371920.372071>`_ (Sarwar et al.,
    WWW 2001), with the shrunk cosine similarity that `"Are We Really Making Much
    Progress?" <https://arxiv.org/abs/1907.06902>`_ (Ferrari Dacrema et al., RecSys 2019)
    tunes as a baseline:

    .. math::
        \hat x(u, i) = \sum_{j \in X_u} S_{ji}

    with :math:`X_u` the items user :math:`u` interacted with under any behavior and
    :math:`S` from :func:`cosine_similarity` and :func:`keep_neighbours`. Computed as
    ``X[users] @ S`` for chunks of users, as dense blocks of at most ``block`` entries
    (users x items), from which the candidates are read.

    Args:
        x (scipy.sparse.csr_matrix): :math:`X`, binary, shape ``[|U|, |I|]``.
        sim (scipy.sparse.csr_matrix): :math:`S`, shape ``[|I|, |I|]``.
        block (int, optional): entries of a dense score block (default: 4 Mi, 16 MiB of float32).
    """

    def __init__(self, x: sp.csr_matrix, sim: sp.csr_matrix, block: int = BLOCK):
        self.x, self.sim, self.block = x, sim, block

    def _rows(self, users: np.ndarray) -> np.ndarray:
        return (self.x[users] @ self.sim).toarray()

    def _chunks(self, n: int) -> list[slice]:
        step = max(1, self.block // max(self.sim.shape[1], 1))
        return [slice(lo, lo + step) for lo in range(0, n, step)]

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        u, it = users.cpu().numpy(), items.cpu().numpy()
        out = np.empty(it.shape, dtype=np.float32)
        for part in self._chunks(len(u)):
            out[part] = np.take_along_axis(self._rows(u[part]), it[part], axis=1)
        return torch.from_numpy(out).to(items.device)

    def score_all(self, users: Tensor) -> Tensor:
        u = users.cpu().numpy()
        out = np.empty((len(u), self.sim.shape[1]), dtype=np.float32)
        for part in self._chunks(len(u)):
            out[part] = self._rows(u[part])
        return torch.from_numpy(out).to(users.device)


def cosine_similarity(x: sp.csr_matrix, shrink: float = 0.0, chunk: int = 1 << 22) -> sp.csr_matrix:
    r""":math:`S_{ij} = \frac{(X^\top X)_{ij}}{\sqrt{d_i d_j} + \lambda}` with the diagonal removed
    (:math:`d = \mathrm{diag}(X^\top X)`, :math:`\lambda` = ``shrink``), as float32 CSR. Co-occurrence
    counts are exact integers in float32 (below :math:`2^{24}`) and both sides are scaled by the
    same product, so the result is exactly symmetric. Scaling and diagonal removal happen in
    place, ``chunk`` stored entries at a time."""
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    sim = (x.T.tocsr() @ x).tocsr()
    sim.sort_indices()
    root = np.sqrt(sim.diagonal().astype(np.float64))
    nnz_row = np.diff(sim.indptr)
    step = max(1, chunk // max(int(nnz_row.max(initial=1)), 1))  # rows per chunk
    for lo in range(0, sim.shape[0], step):
        hi = min(lo + step, sim.shape[0])
        a, b = sim.indptr[lo], sim.indptr[hi]
        rows = np.repeat(np.arange(lo, hi), nnz_row[lo:hi])
        cols = sim.indices[a:b]
        denom = root[rows] * root[cols] + shrink
        scale = np.divide(1.0, denom, out=np.zeros_like(denom), where=denom > 0).astype(np.float32)
        data = sim.data[a:b]
        data *= scale
        data[rows == cols] = 0.0
    sim.eliminate_zeros()
    return sim


def keep_neighbours(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each item (column) keeps its ``k`` most similar items (ties: the smaller id); ``k <= 0``
    keeps every one. ``sim`` must be symmetric (as :func:`cosine_similarity`'s is)."""
    if k <= 0:
        return sim
    counts = np.diff(sim.indptr)
    rows = np.repeat(np.arange(sim.shape[0]), counts)
    order = np.lexsort((sim.indices, -sim.data, rows))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(sim.indptr[:-1], counts)
    keep = rank < k
    pruned = sp.csr_matrix((sim.data[keep], sim.indices[keep], np.r_[0, np.cumsum(np.bincount(rows[keep],
                           minlength=sim.shape[0]))]), shape=sim.shape)
    return pruned.T.tocsr()  # row i held i's neighbours; as columns they score item i


class MF(BPRModel):
    r"""Matrix factorisation trained with BPR, from `"BPR: Bayesian Personalized Ranking from
    Implicit Feedback" <https://arxiv.org/abs/1205.2618>`_ (Rendle et al., UAI 2009):

    .. math::
        \hat x(u, i) = p_u \cdot q_i

    trained on the target behavior with :meth:`~cml_cli.model.losses.BPRModel.loss`. Unlike
    the paper (SGD with bootstrap sampling), training uses Adam over epochs of the target
    pairs, and the tables start Xavier-uniform.

    Args:
        n_users (int): :math:`|U|`.
        n_items (int): :math:`|I|`.
        dim (int): the embedding size :math:`d`.
        reg (float, optional): the L2 coefficient of the loss (default: 0).

    Shapes:
        - **output:** ``[(users [|U|, d], items [|I|, d])]``
    """

    def __init__(self, n_users: int, n_items: int, dim: int, reg: float = 0.0):
        super().__init__(reg)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))

    def forward(self) -> list[Embeddings]:
        """The scoring embeddings (trained on the target), one pair."""
        return [(self.user_emb, self.item_emb)]


class LightGCN(BPRModel):
    r"""The LightGCN model from `"LightGCN: Simplifying and Powering Graph Convolution Network
    for Recommendation" <https://arxiv.org/abs/2002.02126>`_ (He et al., SIGIR 2020), on one
    bipartite graph (the target behavior's, or all behaviors merged):

    .. math::
        e^{(l+1)}_u = \sum_{i \in \mathcal N(u)} \frac{e^{(l)}_i}{\sqrt{|\mathcal N(u)|\,|\mathcal N(i)|}},
        \qquad e_u = \frac{1}{L+1} \sum_{l=0}^{L} e^{(l)}_u

    (items alike), :math:`\hat x(u, i) = e_u \cdot e_i`, trained with
    :meth:`~cml_cli.model.losses.BPRModel.loss` on the target behavior. As in the paper, the
    layer weights are uniform and the L2 penalty is on the layer-0 embeddings; the tables
    start Xavier-uniform. The propagation is :func:`~cml_cli.model.propagation.lightgcn`,
    which the tests check against PyG's :class:`torch_geometric.nn.models.LightGCN`.

    Args:
        graph (BehaviorGraph): a one-block graph with ``norm='symmetric'``.
        dim (int): the embedding size :math:`d`.
        layers (int): the number of propagation layers :math:`L`.
        reg (float, optional): the L2 coefficient of the loss (default: 0).

    Shapes:
        - **output:** ``[(users [|U|, d], items [|I|, d])]``
    """

    def __init__(self, graph: BehaviorGraph, dim: int, layers: int, reg: float = 0.0):
        super().__init__(reg)
        self.graph, self.layers = graph, layers
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graph.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(graph.n_items, dim)))

    def forward(self) -> list[Embeddings]:
        """The embeddings after propagation, one pair."""
        users, items = lightgcn(self.graph, self.user_emb, self.item_emb, self.layers)
        return [(users[0], items[0])]


def bipartite_graph(ds: MultiBehaviorDataset, behaviors: list[str], device: torch.device | str) -> BehaviorGraph:
    """One symmetric-normalised block over the distinct (user, item) pairs of ``behaviors``."""
    user, item = unique_pairs([ds.train[b].user for b in behaviors], [ds.train[b].item for b in behaviors],
                              ds.n_items)
    return BehaviorGraph([user], [item], ds.n_users, ds.n_items, norm="symmetric", device=device)
