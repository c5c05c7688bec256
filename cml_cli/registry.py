"""The one list of models: name -> (kind, description, settings).

Configuration validation (``RunConfig.model``, ``cml tune --model``), ``cml ablate``'s
variants and groups and ``cml report``'s grouping read :data:`MODELS`. The registry holds
data only and imports nothing heavy, so reading it never imports torch; each model's
trainer is built by :func:`cml_cli.train.factory.make_trainer` (a test checks that both
name the same models). ``cml tune``'s default search spaces are files named after the
models, ``cml_cli/tune/spaces/<model>.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """A model: its ``kind`` (cml | baseline | peer), a one-line description, and
    ``settings``: the run options it uses on top of a dataset preset (its own learning rate,
    its paper's dimension ...), applied before ``--config`` and ``--set``."""

    name: str
    kind: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


# Trained baselines use plain Adam at one learning rate of their own (and their batch as given,
# never grown by edges_per_pair) rather than the CML preset's small cyclic one, which leaves them
# under-trained within the epoch budget; the peers keep their papers' settings the same way.
_ADAM = {"lr": 5e-3, "edges_per_pair": 0}

MODELS: dict[str, ModelEntry] = {m.name: m for m in (
    ModelEntry("cml", "cml", "full CML"),
    ModelEntry("popularity", "baseline", "most-interacted items first (all behaviors)"),
    ModelEntry("itemknn-merged", "baseline", "cosine item-item co-occurrence over all behaviors"),
    ModelEntry("bpr-mf", "baseline", "BPR matrix factorisation on the target behavior", _ADAM),
    ModelEntry("lightgcn-target", "baseline", "LightGCN on the target behavior", _ADAM),
    ModelEntry("lightgcn-merged", "baseline", "LightGCN on all behaviors merged into one graph", _ADAM),
    # Settings of the authors' published commands: MB-CGCN (SS-00-SS/MBCGCN README; it pre-trains
    # its first block for up to 1000 epochs on a GPU, here 3) and CRGCN (MingshiYan/CRGCN main.py).
    ModelEntry("mbcgcn", "peer", "MB-CGCN (WWW 2023): cascading LightGCN blocks, BPR on the target",
               {"dim": 64, "lr": 1e-3, "batch": 2048, "reg": 1e-4, "layers": 3, "pretrain_epochs": 3, "edges_per_pair": 0}),
    ModelEntry("crgcn", "peer", "CRGCN (TOIS 2023): residual cascade of LightGCN blocks, multi-task BPR",
               {"dim": 64, "lr": 1e-2, "batch": 1024, "reg": 1e-3, "layers": 1, "edges_per_pair": 0}),
    ModelEntry("cascadingrank", "peer",
               "CascadingRank (2025): training-free personalised ranking over the cascade of behavior graphs"),
    ModelEntry("history", "baseline",
               "the user's own auxiliary interactions first (nearest the target first), then by popularity"),
    ModelEntry("blend", "baseline", "weighted sum of other models' per-user normalised scores"),
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
