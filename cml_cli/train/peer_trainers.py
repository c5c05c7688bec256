"""Trainers of the multi-behavior peers: :class:`~cml_cli.train.baseline_trainers.BPRTrainer`
over :mod:`cml_cli.model.peers`, one symmetric-normalised graph per behavior in the
dataset's order (funnel order, target last)."""

from __future__ import annotations

import numpy as np
import torch

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.sampling import TripleSampler
from cml_cli.errors import InputError
from cml_cli.model.baselines import bipartite_graph
from cml_cli.model.peers.crgcn import CRGCN
from cml_cli.model.peers.mbcgcn import MBCGCN
from cml_cli.model.propagation import BehaviorGraph
from cml_cli.train.baseline_trainers import BPRTrainer


def behavior_graphs(ds: MultiBehaviorDataset, device: torch.device) -> list[BehaviorGraph]:
    """One graph per behavior, in the dataset's behavior order (the cascade's order)."""
    return [bipartite_graph(ds, [b], device) for b in ds.behaviors]


def block_layers(ds: MultiBehaviorDataset, cfg: RunConfig) -> list[int]:
    """Propagation layers of each behavior's block: ``block_layers``, else ``layers`` for all."""
    if cfg.block_layers is None:
        return [cfg.layers] * len(ds.behaviors)
    if len(cfg.block_layers) != len(ds.behaviors):
        raise InputError(f"block_layers: {cfg.block_layers} has {len(cfg.block_layers)} entries, the dataset "
                         f"{len(ds.behaviors)} behaviors {ds.behaviors}")
    return list(cfg.block_layers)


class MBCGCNTrainer(BPRTrainer):
    """MB-CGCN, BPR on the target behavior. The first ``pretrain_epochs`` epochs train the first
    block alone with BPR on the first behavior's pairs (an epoch is then a pass over those
    pairs), as the authors initialise it from a LightGCN trained on that behavior; the later
    epochs train the whole cascade."""

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        super().__init__(ds, cfg, device, MBCGCN(behavior_graphs(ds, device), cfg.dim, block_layers(ds, cfg),
                                                  cfg.reg))
        self.first = TripleSampler(ds, self.sampler.batch, anchor=0)
        self.epoch = 0

    def _pretraining(self) -> bool:
        return self.epoch < self.cfg.pretrain_epochs

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return (self.first if self._pretraining() else self.sampler).epoch(rng)

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        if not self._pretraining():
            return super().train_batch(rows, rng)
        return self._step(self._triples(self.first, rows, rng), self.model.first_block())

    def end_epoch(self) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])


def mbcgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> BPRTrainer:
    """MB-CGCN (see :class:`MBCGCNTrainer`)."""
    return MBCGCNTrainer(ds, cfg, device)


def crgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> BPRTrainer:
    """CRGCN, BPR on every behavior (multi-task)."""
    model = CRGCN(behavior_graphs(ds, device), cfg.dim, block_layers(ds, cfg), cfg.reg)
    return BPRTrainer(ds, cfg, device, model, behaviors=list(range(len(ds.behaviors))))
