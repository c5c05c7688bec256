"""Trainers of the multi-behavior peers: :class:`~cml_cli.train.baseline_trainers.BPRTrainer`
over :mod:`cml_cli.model.peers`, one symmetric-normalised graph per behavior in the
dataset's order (funnel order, target last)."""

from __future__ import annotations

import torch

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
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


def mbcgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> BPRTrainer:
    """MB-CGCN, BPR on the target behavior."""
    return BPRTrainer(ds, cfg, device, MBCGCN(behavior_graphs(ds, device), cfg.dim, block_layers(ds, cfg)))


def crgcn_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> BPRTrainer:
    """CRGCN, BPR on every behavior (multi-task)."""
    return BPRTrainer(ds, cfg, device, CRGCN(behavior_graphs(ds, device), cfg.dim, block_layers(ds, cfg)),
                      behaviors=list(range(len(ds.behaviors))))
