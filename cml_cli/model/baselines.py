"""Baselines behind the same trainer interface as CML (see ``cml_cli.train.loop.make_trainer``).

* ``popularity``: an item's score is its number of training users over all behaviors merged.
* ``itemknn-merged``: cosine item-item co-occurrence on the merged binary matrix ``X``:
  :math:`S = D^{-1/2} X^\\top X D^{-1/2}` with a zero diagonal, :math:`\\hat x(u, i) = (X S)_{ui}`.
* ``bpr-mf``: matrix factorisation trained with BPR on the target pairs.
* ``lightgcn-target`` / ``lightgcn-merged``: PyG's :class:`~torch_geometric.nn.models.LightGCN` on
  the target behavior's bipartite graph or on all behaviors merged, trained with BPR on target pairs.

The first two are fitted in the constructor (``trainable = False``); the others read ``lr``,
``batch``, ``dim``, ``layers`` and ``reg`` from the run config as given. The BPR objective of a
batch of ``B`` target pairs with one uniform negative each (an item the user never bought) is
:math:`\\frac{1}{B}\\sum -\\log\\sigma(\\hat x_{ui^+} - \\hat x_{ui^-}) + \\frac{reg}{B}\\sum
(\\|e_u\\|^2 + \\|e_{i^+}\\|^2 + \\|e_{i^-}\\|^2)` (ego embeddings), optimised with Adam.
"""

from __future__ import annotations

import abc

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.sampling import BehaviorIndex
from cml_cli.errors import InputError, NonFiniteLoss
from cml_cli.evaluate import EmbeddingScorer

BASELINES = ("popularity", "itemknn-merged", "bpr-mf", "lightgcn-target", "lightgcn-merged")
BLOCK = 1 << 22  # entries of a dense score block in item-kNN scoring (16 MiB of float32)


def make_baseline(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
    """The trainer of baseline ``cfg.model``."""
    if cfg.model == "popularity":
        return PopularityTrainer(ds, cfg, device)
    if cfg.model == "itemknn-merged":
        return ItemKNNTrainer(ds, cfg, device)
    if cfg.model == "bpr-mf":
        return BPRMFTrainer(ds, cfg, device)
    if cfg.model in ("lightgcn-target", "lightgcn-merged"):
        return LightGCNTrainer(ds, cfg, device, merged=cfg.model == "lightgcn-merged")
    raise InputError(f"model: '{cfg.model}' is not a baseline (choose from {', '.join(BASELINES)})")


def merged_matrix(ds: MultiBehaviorDataset) -> sp.csr_matrix:
    """Binary ``[n_users, n_items]`` CSR matrix of every behavior's training interactions."""
    user = np.concatenate([ds.train[b].user for b in ds.behaviors]).astype(np.int64)
    item = np.concatenate([ds.train[b].item for b in ds.behaviors]).astype(np.int64)
    keys = np.unique(user * ds.n_items + item)
    data = np.ones(len(keys), dtype=np.float32)
    return sp.csr_matrix((data, (keys // ds.n_items, keys % ds.n_items)), shape=(ds.n_users, ds.n_items))


# --------------------------------------------------------------------------- non-trainable


class _FittedTrainer:
    """A model fitted in the constructor: one epoch without batches, then evaluation."""

    trainable = False
    name = ""

    def __init__(self, device: torch.device):
        self.device = device

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return []

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        return {"loss": 0.0}

    def end_epoch(self) -> None:
        pass

    def model_state(self) -> dict:
        return {"model": self.name}

    def load_model_state(self, state: dict) -> None:
        if state.get("model") != self.name:
            raise InputError(f"checkpoint holds model '{state.get('model')}', not '{self.name}'")

    def state_dict(self) -> dict:
        return self.model_state()

    def load_state_dict(self, state: dict) -> None:
        self.load_model_state(state)


class PopularityScorer:
    """``score(u, i) = counts[i]`` for every user."""

    def __init__(self, counts: Tensor):
        self.counts = counts

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return self.counts.to(items.device)[items]

    def score_all(self, users: Tensor) -> Tensor:
        return self.counts.to(users.device)[None, :].repeat(users.shape[0], 1)  # writable: callers mask it


class PopularityTrainer(_FittedTrainer):
    """Items ranked by how many users interacted with them under any behavior."""

    name = "popularity"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(device)
        counts = np.asarray(merged_matrix(ds).sum(axis=0)).ravel()
        self.counts = torch.from_numpy(counts.astype(np.float32)).to(device)

    def scorer(self) -> PopularityScorer:
        return PopularityScorer(self.counts)

    def model_state(self) -> dict:
        return {"model": self.name, "counts": self.counts}

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        counts = state["counts"]
        if counts.shape != self.counts.shape:
            raise InputError(f"checkpoint has {counts.shape[0]} items, the dataset {self.counts.shape[0]}")
        self.counts = counts.to(self.device, torch.float32)


class ItemKNNScorer:
    r""":math:`\hat x(u, i) = \sum_{j \in X_u} S_{ji}`: ``X[users] @ S`` for chunks of users, as
    dense blocks of at most ``block`` entries (users x items), from which candidates are read."""

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


def cosine_similarity(x: sp.csr_matrix, chunk: int = 1 << 22) -> sp.csr_matrix:
    r""":math:`D^{-1/2} X^\top X D^{-1/2}` with the diagonal removed (``D = diag(X^\top X)``), as
    float32 CSR. Co-occurrence counts are exact integers in float32 (below :math:`2^{24}`) and
    both sides are scaled by the same product, so the result is exactly symmetric. Scaling and
    diagonal removal happen in place, ``chunk`` stored entries at a time."""
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    sim = (x.T.tocsr() @ x).tocsr()
    sim.sort_indices()
    deg = sim.diagonal().astype(np.float64)
    inv = np.zeros_like(deg)
    np.divide(1.0, np.sqrt(deg), out=inv, where=deg > 0)
    nnz_row = np.diff(sim.indptr)
    step = max(1, chunk // max(int(nnz_row.max(initial=1)), 1))  # rows per chunk
    for lo in range(0, sim.shape[0], step):
        hi = min(lo + step, sim.shape[0])
        a, b = sim.indptr[lo], sim.indptr[hi]
        rows = np.repeat(np.arange(lo, hi), nnz_row[lo:hi])
        cols = sim.indices[a:b]
        scale = (inv[rows] * inv[cols]).astype(np.float32)
        data = sim.data[a:b]
        data *= scale
        data[rows == cols] = 0.0
    sim.eliminate_zeros()
    return sim


class ItemKNNTrainer(_FittedTrainer):
    """Item-based kNN over the merged behaviors (cosine, no neighbourhood cut-off)."""

    name = "itemknn-merged"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(device)
        self.x = merged_matrix(ds)
        self.sim = cosine_similarity(self.x)

    def scorer(self) -> ItemKNNScorer:
        return ItemKNNScorer(self.x, self.sim)

    def model_state(self) -> dict:
        return {"model": self.name, "nnz": int(self.x.nnz), "sim_nnz": int(self.sim.nnz)}

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        if int(state.get("nnz", self.x.nnz)) != self.x.nnz:
            raise InputError("checkpoint was fitted on other interactions than the dataset's")


# --------------------------------------------------------------------------- BPR-trained


class BPRSampler:
    """Target pairs in shuffled batches, each with one uniform negative the user never bought."""

    def __init__(self, ds: MultiBehaviorDataset, batch: int):
        target = ds.train[ds.target]
        self.user, self.item, self.batch = target.user.astype(np.int64), target.item.astype(np.int64), batch
        self.index = BehaviorIndex(self.user, self.item, ds.n_users, ds.n_items)

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        perm = rng.permutation(len(self.user))
        return [perm[lo:lo + self.batch] for lo in range(0, len(perm), self.batch)]

    def triples(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        user = self.user[rows]
        return user, self.item[rows], self.index.sample_negative(user, rng)


class _BPRTrainer(abc.ABC):
    """Shared BPR training: Adam on ``self.model``, batches of target pairs."""

    trainable = True

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, model: nn.Module):
        self.cfg, self.device = cfg, device
        self.n_users, self.n_items = ds.n_users, ds.n_items
        self.model = model.to(device)
        self.sampler = BPRSampler(ds, cfg.batch)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)

    @abc.abstractmethod
    def embeddings(self) -> tuple[Tensor, Tensor, Tensor]:
        """User embeddings ``[|U|, d]``, item embeddings ``[|I|, d]`` used for scoring, and the
        ego (layer-0) table ``[|U| + |I|, d]`` that the regulariser sees."""

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self.sampler.epoch(rng)

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def loss(self, user: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:
        e_u, e_i, ego = self.embeddings()
        eu = e_u[user]
        pos_score = (eu * e_i[pos]).sum(-1)
        neg_score = (eu * e_i[neg]).sum(-1)
        node_id = torch.cat([user, pos + self.n_users, neg + self.n_users])
        bpr = -torch.nn.functional.logsigmoid(pos_score - neg_score).mean()
        reg = ego[node_id].pow(2).sum() / max(user.numel(), 1)
        total = bpr + self.cfg.reg * reg
        return total, {"loss": float(total.detach()), "bpr": float(bpr.detach()), "reg": float(reg.detach())}

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        user, pos, neg = (self._tensor(a) for a in self.sampler.triples(rows, rng))
        self.opt.zero_grad(set_to_none=True)
        loss, parts = self.loss(user, pos, neg)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {float(loss)}")
        loss.backward()
        self.opt.step()
        return parts

    def end_epoch(self) -> None:  # noqa: B027 - plain Adam, no schedule to step
        """Nothing to do: plain Adam, no schedule."""

    def scorer(self) -> EmbeddingScorer:
        self.model.eval()
        try:
            with torch.no_grad():
                e_u, e_i, _ = self.embeddings()
            return EmbeddingScorer(e_u.detach(), e_i.detach())
        finally:
            self.model.train()

    def model_state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


class MF(nn.Module):
    """User and item embedding tables (Xavier-uniform)."""

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)


class BPRMFTrainer(_BPRTrainer):
    """Matrix factorisation, :math:`\\hat x(u, i) = p_u \\cdot q_i`, trained with BPR."""

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(ds, cfg, device, MF(ds.n_users, ds.n_items, cfg.dim))

    def embeddings(self) -> tuple[Tensor, Tensor, Tensor]:
        u, i = self.model.user.weight, self.model.item.weight
        return u, i, torch.cat([u, i])


def bipartite_edges(ds: MultiBehaviorDataset, behaviors: list[str], device: torch.device) -> Tensor:
    """``[2, 2E]`` edge index of the user-item graph (items offset by ``n_users``), both
    directions, one edge per distinct (user, item) pair over ``behaviors``."""
    user = np.concatenate([ds.train[b].user for b in behaviors]).astype(np.int64)
    item = np.concatenate([ds.train[b].item for b in behaviors]).astype(np.int64)
    keys = np.unique(user * ds.n_items + item)
    u, i = keys // ds.n_items, keys % ds.n_items + ds.n_users
    edges = np.stack([np.concatenate([u, i]), np.concatenate([i, u])])
    return torch.from_numpy(edges).to(device)


class LightGCNTrainer(_BPRTrainer):
    """PyG's LightGCN on the target (or merged) bipartite graph, trained with BPR on target pairs.

    The symmetric normalisation is computed once with ``gcn_norm`` and passed as edge weights
    (``LGConv(normalize=False)``), which propagates exactly as ``normalize=True`` would.
    """

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, merged: bool):
        n_nodes = ds.n_users + ds.n_items
        model = LightGCN(num_nodes=n_nodes, embedding_dim=cfg.dim, num_layers=cfg.layers, normalize=False)
        super().__init__(ds, cfg, device, model)
        behaviors = list(ds.behaviors) if merged else [ds.target]
        edge_index = bipartite_edges(ds, behaviors, device)
        self.edge_index, self.edge_weight = gcn_norm(edge_index, None, n_nodes, add_self_loops=False)

    def embeddings(self) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model.get_embedding(self.edge_index, self.edge_weight)
        return out[:self.n_users], out[self.n_users:], self.model.embedding.weight

