"""The one list of models: name -> (trainer factory, kind).

Configuration validation (``RunConfig.model``, ``cml tune --model``), ``cml ablate``'s
variants and groups and ``cml report``'s grouping read :data:`MODELS`; nothing else lists
model names (``cml tune``'s default search spaces are files named after the models,
``cml_cli/tune/spaces/<model>.toml``). Factories are named by import path and imported on
first use, so reading the registry never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """A model: its trainer factory ``"module:callable"`` (called as ``factory(ds, cfg,
    device, **options)``), its ``kind`` (cml | baseline | peer), a one-line description, and
    ``settings``: the run options it uses on top of a dataset preset (its own learning rate,
    its paper's dimension ...), applied before ``--config`` and ``--set``."""

    name: str
    kind: str
    factory: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def make(self, ds, cfg, device):
        """The trainer of this model for dataset ``ds`` and config ``cfg`` on ``device``."""
        module, attr = self.factory.split(":")
        return getattr(importlib.import_module(module), attr)(ds, cfg, device, **self.options)


# Trained baselines use plain Adam at one learning rate of their own (and their batch as given,
# never grown by edges_per_pair) rather than the CML preset's small cyclic one, which leaves them
# under-trained within the epoch budget; the peers keep their papers' settings the same way.
_ADAM = {"lr": 5e-3, "edges_per_pair": 0}
_BASELINES = "cml_cli.train.baseline_trainers"
_PEERS = "cml_cli.train.peer_trainers"
_FITTED = "cml_cli.train.fitted_trainers"

MODELS: dict[str, ModelEntry] = {m.name: m for m in (
    ModelEntry("cml", "cml", "cml_cli.train.cml_trainer:CMLTrainer", "full CML"),
    ModelEntry("popularity", "baseline", f"{_BASELINES}:PopularityTrainer",
               "most-interacted items first (all behaviors)"),
    ModelEntry("itemknn-merged", "baseline", f"{_BASELINES}:ItemKNNTrainer",
               "cosine item-item co-occurrence over all behaviors"),
    ModelEntry("bpr-mf", "baseline", f"{_BASELINES}:bpr_mf_trainer", "BPR matrix factorisation on the target behavior",
               _ADAM),
    ModelEntry("lightgcn-target", "baseline", f"{_BASELINES}:lightgcn_trainer", "LightGCN on the target behavior",
               _ADAM, {"merged": False}),
    ModelEntry("lightgcn-merged", "baseline", f"{_BASELINES}:lightgcn_trainer",
               "LightGCN on all behaviors merged into one graph", _ADAM, {"merged": True}),
    # Settings of the authors' published commands: MB-CGCN (SS-00-SS/MBCGCN README; it pre-trains
    # its first block for up to 1000 epochs on a GPU, here 3) and CRGCN (MingshiYan/CRGCN main.py).
    ModelEntry("mbcgcn", "peer", f"{_PEERS}:mbcgcn_trainer",
               "MB-CGCN (WWW 2023): cascading LightGCN blocks, BPR on the target",
               {"dim": 64, "lr": 1e-3, "batch": 2048, "reg": 1e-4, "layers": 3, "pretrain_epochs": 3, "edges_per_pair": 0}),
    ModelEntry("crgcn", "peer", f"{_PEERS}:crgcn_trainer",
               "CRGCN (TOIS 2023): residual cascade of LightGCN blocks, multi-task BPR",
               {"dim": 64, "lr": 1e-2, "batch": 1024, "reg": 1e-3, "layers": 1, "edges_per_pair": 0}),
    ModelEntry("cascadingrank", "peer", f"{_FITTED}:CascadingRankTrainer",
               "CascadingRank (2025): training-free personalised ranking over the cascade of behavior graphs"),
    ModelEntry("history", "baseline", f"{_FITTED}:HistoryTrainer",
               "the user's own auxiliary interactions first (nearest the target first), then by popularity"),
    ModelEntry("blend", "baseline", f"{_FITTED}:BlendTrainer",
               "weighted sum of other models' per-user normalised scores"),
)}
# The strongest known methods on the published multi-behavior data (cml ablate's group "sota").
SOTA = ("cascadingrank", "history", "blend")


def names(kind: str | None = None) -> tuple[str, ...]:
    """Model names in registry order, optionally of one kind only."""
    return tuple(n for n, m in MODELS.items() if kind is None or m.kind == kind)


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``KeyError`` when there is none (config validation
    turns an unknown model into an input error first)."""
    return MODELS[name]


def kind_of(name: str) -> str:
    """``cml`` | ``baseline`` | ``peer`` for a model name, ``custom`` for anything else."""
    return MODELS[name].kind if name in MODELS else "custom"


def make_trainer(ds, cfg, device):
    """The trainer of ``cfg.model`` (see :class:`cml_cli.train.trainer.Trainer`)."""
    return entry(cfg.model).make(ds, cfg, device)
