"""Trainers of the training-free models that score whole rows: CascadingRank, history and the
blend of other models (fitted in the constructor like popularity and item-kNN, see
:class:`~cml_cli.train.baseline_trainers.FittedTrainer`).

Each keeps one :class:`~cml_cli.model.scoring.RowScorer`, so the rows computed for the
validation pass are reused by the test passes after it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from cml_cli.config import RunConfig
from cml_cli.data.dataset import MultiBehaviorDataset
from cml_cli.data.store import load_dataset
from cml_cli.errors import InputError
from cml_cli.model.baselines import item_popularity
from cml_cli.model.blend import Blend, member_rows
from cml_cli.model.history import History
from cml_cli.model.peers.cascadingrank import BLOCK, CascadingRank
from cml_cli.model.scoring import RowScorer, behavior_matrix
from cml_cli.train.baseline_trainers import FittedTrainer
from cml_cli.train.checkpoint import load_checkpoint
from cml_cli.train.rundir import RunDir
from cml_cli.train.trainer import Trainer


class RowTrainer(FittedTrainer):
    """A fitted model scored through one :class:`RowScorer`; its state records the number of
    training interactions per behavior, so a checkpoint of other data is refused."""

    def __init__(self, ds: MultiBehaviorDataset, device: torch.device, scorer: RowScorer):
        super().__init__(device)
        self.nnz = [len(ds.train[b]) for b in ds.behaviors]
        self._scorer = scorer

    def scorer(self) -> RowScorer:
        return self._scorer

    def model_state(self) -> dict:
        return {"model": self.name, "nnz": list(self.nnz)}

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        if list(state.get("nnz", self.nnz)) != self.nnz:
            raise InputError("checkpoint was fitted on other interactions than the dataset's")


class CascadingRankTrainer(RowTrainer):
    """CascadingRank (:class:`~cml_cli.model.peers.cascadingrank.CascadingRank`) over the
    dataset's behaviors in their order (target last), with ``cr_alpha``, ``cr_beta``,
    ``cr_tol`` and ``cr_iters``; blocks of users on as many threads as torch uses."""

    name = "cascadingrank"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        model = CascadingRank([behavior_matrix(ds, b) for b in ds.behaviors], cfg.cr_alpha, cfg.cr_beta, cfg.cr_tol,
                              cfg.cr_iters)
        super().__init__(ds, device, RowScorer(model.scores, ds.n_users, ds.n_items, BLOCK,
                                               workers=torch.get_num_threads()))
        self.model = model


class HistoryTrainer(RowTrainer):
    """The history baseline (:class:`~cml_cli.model.history.History`) with the popularity
    ``history_popularity`` names: the target's training interactions, or all behaviors'."""

    name = "history"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        if cfg.history_popularity == "all":
            popularity = item_popularity(ds)
        else:
            popularity = np.asarray(behavior_matrix(ds, ds.target).sum(axis=0)).ravel()
        model = History([behavior_matrix(ds, b) for b in ds.auxiliary], popularity, ds.n_users)
        super().__init__(ds, device, RowScorer(model.scores, ds.n_users, ds.n_items, cache_bytes=0))
        self.model = model


class BlendTrainer(RowTrainer):
    """A blend (:class:`~cml_cli.model.blend.Blend`) of the fitted models ``blend_models``
    (each with this run's options) and of the trained runs ``blend_runs`` (each its best
    checkpoint, or its last where it had no validation split), weighted by ``blend_weights``
    and normalised per user by ``blend_norm``. Members of weight 0 are left out."""

    name = "blend"

    def __init__(self, ds: MultiBehaviorDataset, cfg: RunConfig, device: torch.device):
        members = [(fitted_member, name) for name in cfg.blend_models] + [(run_member, path) for path in cfg.blend_runs]
        chosen = [(make, what, w) for (make, what), w in zip(members, cfg.blend_weights) if w > 0]
        trainers = [make(ds, cfg, what, device) for make, what, _ in chosen]
        model = Blend([member_rows(t.scorer(), device) for t in trainers], [w for *_, w in chosen], cfg.blend_norm)
        super().__init__(ds, device, RowScorer(model.scores, ds.n_users, ds.n_items, BLOCK,
                                               workers=torch.get_num_threads()))
        self.model, self.members = model, [str(what) for _, what, _ in chosen]

    def model_state(self) -> dict:
        return {**super().model_state(), "members": list(self.members)}

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        if list(state.get("members", self.members)) != self.members:
            raise InputError(f"checkpoint blends {state.get('members')}, this run {self.members}")


def fitted_member(ds: MultiBehaviorDataset, cfg: RunConfig, name: str, device: torch.device) -> Trainer:
    """The registry model ``name`` fitted on ``ds`` with ``cfg``'s options; exit 2 for a model
    that needs training (its run belongs in ``blend_runs``)."""
    from cml_cli.train.factory import make_trainer  # the factory builds BlendTrainer: imported on use

    trainer = make_trainer(ds, dataclasses.replace(cfg, model=name), device)
    if trainer.trainable:
        raise InputError(f"blend_models: '{name}' is trained, not fitted: train it (cml train --set model={name}) "
                         "and name its run directory in blend_runs")
    return trainer


def run_member(ds: MultiBehaviorDataset, cfg: RunConfig, path: str, device: torch.device) -> Trainer:
    """The model of the finished run directory ``path`` (its best checkpoint, else its last),
    checked to have been trained on the same data as ``ds``, with the same behaviors."""
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise InputError(f"blend_runs: {path}: no such run directory")
    run_cfg = run.read_config()
    if run.read_final() is None:
        raise InputError(f"blend_runs: {path}: the run has not finished (no {run.final.name})")
    if run_cfg.model == "blend":
        raise InputError(f"blend_runs: {path}: is a blend itself; name its members instead")
    theirs = load_dataset(run.dataset_dir())
    if not same_data(theirs, ds):
        raise InputError(f"blend_runs: {path}: was trained on dataset '{theirs.name}', whose data differ from "
                         f"'{ds.name}' of this run")
    used = theirs.behaviors if run_cfg.behaviors is None else theirs.with_behaviors(run_cfg.behaviors).behaviors
    if not set(used) <= set(ds.behaviors):
        raise InputError(f"blend_runs: {path}: used behaviors {used}, this run has {ds.behaviors}")
    member_ds = ds if used == ds.behaviors else ds.with_behaviors(used)
    from cml_cli.train.factory import make_trainer  # the factory builds BlendTrainer: imported on use

    trainer = make_trainer(member_ds, dataclasses.replace(run_cfg, device=cfg.device), device)
    checkpoint = run.best if run.best.is_file() else run.last
    trainer.load_model_state(load_checkpoint(checkpoint)["trainer"])
    return trainer


def same_data(a: MultiBehaviorDataset, b: MultiBehaviorDataset) -> bool:
    """Whether ``b``'s users, items, splits and every behavior's training pairs are ``a``'s."""
    if (a.n_users, a.n_items, a.target) != (b.n_users, b.n_items, b.target) or not set(b.behaviors) <= set(a.behaviors):
        return False
    arrays = [(getattr(getattr(a, s), f), getattr(getattr(b, s), f)) for s in ("test", "valid")
              for f in ("user", "item", "neg")]
    arrays += [(a.train[k].user, b.train[k].user) for k in b.behaviors]
    arrays += [(a.train[k].item, b.train[k].item) for k in b.behaviors]
    return all(np.array_equal(x, y) for x, y in arrays)
