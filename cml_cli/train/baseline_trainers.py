"""Trainers of the baselines (and of any model trained with BPR): the
:class:`~cml_cli.train.trainer.Trainer` contract over :mod:`cml_cli.model.baselines`.

* :class:`PopularityTrainer`, :class:`ItemKNNTrainer`: fitted in the constructor
  (``trainable = False``), then one epoch without batches.
* :class:`BPRTrainer`: Adam on a model whose ``forward()`` returns ``(users, items)``
  embeddings per trained behavior, the target's last (also the scoring embeddings). For a
  batch of ``B`` target pairs the loss is

  .. math::
      \\sum_k \\lambda_k \\frac{1}{B_k}\\sum -\\log\\sigma(\\hat x^k_{ui^+} - \\hat x^k_{ui^-})
      + \\frac{reg}{B}\\sum (\\|e_u\\|^2 + \\|e_{i^+}\\|^2 + \\|e_{i^-}\\|^2)

  with :math:`\\lambda_k = 1` unless the model sets ``loss_weights``, and the L2 term on the
  layer-0 tables over the target triples (``model.user_emb`` / ``model.item_emb``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

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
from cml_cli.model.losses import bpr_loss, l2_reg


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
    """Adam on ``model`` with BPR over the behaviors ``behaviors`` (indices into the dataset's
    behaviors, target last; default the target only), see the module docstring."""

    trainable = True

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, model: nn.Module,
                 behaviors: list[int] | None = None):
        self.cfg, self.device = cfg, device
        self.model = model.to(device)
        self.sampler = TripleSampler(ds, cfg.batch, behaviors)
        self.weights = list(getattr(model, "loss_weights", None) or [1.0] * len(self.sampler.behaviors))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self.sampler.epoch(rng)

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def loss(self, triples: list[tuple[Tensor, Tensor, Tensor]],
             outputs: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, dict[str, float]]:
        """The weighted BPR + L2 objective of one batch's triples (one set per trained behavior)
        on ``outputs`` (default: the model's, one ``(users, items)`` pair per behavior)."""
        outputs = self.model() if outputs is None else outputs
        bpr = outputs[0][0].new_zeros(())
        for (e_u, e_i), (user, pos, neg), weight in zip(outputs, triples, self.weights):
            if user.numel():
                eu = e_u[user]
                bpr = bpr + weight * bpr_loss((eu * e_i[pos]).sum(-1), (eu * e_i[neg]).sum(-1)).mean()
        user, pos, neg = triples[-1]
        reg = l2_reg(self.model.user_emb[user], self.model.item_emb[pos], self.model.item_emb[neg]) / max(
            user.numel(), 1)
        total = bpr + self.cfg.reg * reg
        return total, {"loss": float(total.detach()), "bpr": float(bpr.detach()), "reg": float(reg.detach())}

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        return self._step(self._triples(self.sampler, rows, rng))

    def _triples(self, sampler, rows: np.ndarray, rng: np.random.Generator) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``sampler``'s triples for the batch ``rows``, as tensors on the trainer's device."""
        return [tuple(map(self._tensor, t)) for t in sampler.triples(rows, rng)]

    def _step(self, triples: list[tuple[Tensor, Tensor, Tensor]],
              outputs: list[tuple[Tensor, Tensor]] | None = None) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss, parts = self.loss(triples, outputs)
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
    return BPRTrainer(ds, cfg, device, MF(ds.n_users, ds.n_items, cfg.dim))


def lightgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device, merged: bool) -> BPRTrainer:
    """LightGCN on the target behavior's graph (or all behaviors merged), BPR on target pairs."""
    graph = bipartite_graph(ds, list(ds.behaviors) if merged else [ds.target], device)
    return BPRTrainer(ds, cfg, device, LightGCN(graph, cfg.dim, cfg.layers))
