"""Trainers of the baselines (and of any model trained with BPR): the
:class:`~cml_cli.train.trainer.Trainer` contract over :mod:`cml_cli.model.baselines`.

* :class:`PopularityTrainer`, :class:`ItemKNNTrainer`: fitted in the constructor
  (``trainable = False``), then one epoch without batches.
* :class:`BPRTrainer`: Adam on a :class:`~cml_cli.model.losses.BPRModel` (MF, LightGCN and
  the peers). The trainer samples each batch's triples and steps the optimizer; the
  objective is the model's own :meth:`~cml_cli.model.losses.BPRModel.loss`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.sampling import TripleSampler
from cml_cli.errors import InputError, NonFiniteLoss
from cml_cli.evaluate import EmbeddingScorer
from cml_cli.model.baselines import (
    MF,
    ItemKNNScorer,
    LightGCN,
    PopularityScorer,
    bipartite_graph,
    cosine_similarity,
    item_popularity,
    keep_neighbours,
    merged_matrix,
)
from cml_cli.model.losses import BPRModel, Embeddings, Triple


class FittedTrainer:
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
        """Nothing to do: the model was fitted in the constructor."""

    def model_state(self) -> dict:
        return {"model": self.name}

    def load_model_state(self, state: dict) -> None:
        if state.get("model") != self.name:
            raise InputError(f"checkpoint holds model '{state.get('model')}', not '{self.name}'")

    def state_dict(self) -> dict:
        return self.model_state()

    def load_state_dict(self, state: dict) -> None:
        self.load_model_state(state)


class PopularityTrainer(FittedTrainer):
    """Items ranked by how many users interacted with them under any behavior."""

    name = "popularity"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(device)
        self.counts = torch.from_numpy(item_popularity(ds).astype(np.float32)).to(device)

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


class ItemKNNTrainer(FittedTrainer):
    """Item-based kNN over the merged behaviors: cosine similarity with shrinkage ``knn_shrink``,
    each item keeping its ``knn_k`` nearest items (0: all)."""

    name = "itemknn-merged"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(device)
        self.x = merged_matrix(ds)
        self.sim = keep_neighbours(cosine_similarity(self.x, cfg.knn_shrink), cfg.knn_k)

    def scorer(self) -> ItemKNNScorer:
        return ItemKNNScorer(self.x, self.sim)

    def model_state(self) -> dict:
        return {"model": self.name, "nnz": int(self.x.nnz), "sim_nnz": int(self.sim.nnz)}

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        if int(state.get("nnz", self.x.nnz)) != self.x.nnz:
            raise InputError("checkpoint was fitted on other interactions than the dataset's")


class BPRTrainer:
    """Adam on ``model``: each batch samples one ``(user, pos, neg)`` triple set per trained
    behavior (``behaviors``: indices into the dataset's behaviors, target last; default the
    target only) and takes one step on ``model.loss``."""

    trainable = True

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, model: BPRModel,
                 behaviors: list[int] | None = None):
        self.cfg, self.device = cfg, device
        self.model = model.to(device)
        size, factor = cfg.batching(sum(len(ds.train[b]) for b in ds.behaviors))
        self.sampler = TripleSampler(ds, size, behaviors)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr * factor, fused=True)  # one kernel per table

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self.sampler.epoch(rng)

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        return self._step(self._triples(self.sampler, rows, rng))

    def _triples(self, sampler: TripleSampler, rows: np.ndarray, rng: np.random.Generator) -> list[Triple]:
        """``sampler``'s triples for the batch ``rows``, as tensors on the trainer's device."""
        return [tuple(map(self._tensor, t)) for t in sampler.triples(rows, rng)]

    def _step(self, triples: list[Triple], outputs: list[Embeddings] | None = None) -> dict[str, float]:
        """One Adam step on ``model.loss(triples, outputs)``; returns the loss parts."""
        self.opt.zero_grad(set_to_none=True)
        loss, parts = self.model.loss(triples, outputs)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {float(loss)}")
        loss.backward()
        self.opt.step()
        return parts

    def end_epoch(self) -> None:
        """Nothing to do: plain Adam, no schedule."""

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """The scoring embeddings ``users [|U|, d]``, ``items [|I|, d]`` (no gradient)."""
        self.model.eval()
        try:
            with torch.no_grad():
                e_u, e_i = self.model()[-1]
            return e_u.detach(), e_i.detach()
        finally:
            self.model.train()

    def scorer(self) -> EmbeddingScorer:
        return EmbeddingScorer(*self.embeddings())

    def model_state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def bpr_mf_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> BPRTrainer:
    """BPR-MF on the target behavior."""
    return BPRTrainer(ds, cfg, device, MF(ds.n_users, ds.n_items, cfg.dim, cfg.reg))


def lightgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, merged: bool) -> BPRTrainer:
    """LightGCN on the target behavior's graph (or all behaviors merged), BPR on target pairs."""
    graph = bipartite_graph(ds, list(ds.behaviors) if merged else [ds.target], device)
    return BPRTrainer(ds, cfg, device, LightGCN(graph, cfg.dim, cfg.layers, cfg.reg))
