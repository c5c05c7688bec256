"""Trainer construction: registry model name -> the callable that builds its trainer.

:mod:`cml_cli.registry` lists the models (names, kinds, descriptions, settings) and imports
nothing heavy, so configuration validation stays cheap; this module is where a model name
meets its code, with plain imports that readers and import scanners see. Every builder is
called as ``builder(ds, cfg, device)`` and returns a :class:`~cml_cli.train.trainer.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.train.baseline_trainers import ItemKNNTrainer, PopularityTrainer, bpr_mf_trainer, lightgcn_trainer
from cml_cli.train.cml_trainer import CMLTrainer
from cml_cli.train.fitted_trainers import BlendTrainer, CascadingRankTrainer, HistoryTrainer
from cml_cli.train.peer_trainers import crgcn_trainer, mbcgcn_trainer
from cml_cli.train.trainer import Trainer

Builder = Callable[[MultiBehaviorDataset, RunConfig, torch.device], Trainer]

TRAINERS: dict[str, Builder] = {
    "cml": CMLTrainer,
    "popularity": PopularityTrainer,
    "itemknn-merged": ItemKNNTrainer,
    "bpr-mf": bpr_mf_trainer,
    "lightgcn-target": partial(lightgcn_trainer, merged=False),
    "lightgcn-merged": partial(lightgcn_trainer, merged=True),
    "mbcgcn": mbcgcn_trainer,
    "crgcn": crgcn_trainer,
    "cascadingrank": CascadingRankTrainer,
    "history": HistoryTrainer,
    "blend": BlendTrainer,
}


def make_trainer(ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device) -> Trainer:
    """The trainer of ``cfg.model`` for dataset ``ds`` on ``device`` (``cfg`` is validated, so
    the model is one of the registry's)."""
    return TRAINERS[cfg.model](ds, cfg, device)
