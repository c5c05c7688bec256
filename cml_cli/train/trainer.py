"""The contract between the epoch loop and a model: :class:`Trainer`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from cml_cli.evaluate import Scorer


@runtime_checkable
class Trainer(Protocol):
    """What :mod:`cml_cli.train.loop` needs from every model (CML, baselines, peers).

    A trainer owns its model, optimizers and sampling. ``trainable`` is False for models
    fitted in the constructor (popularity, item-kNN), which then run a single epoch without
    batches. ``model_state()`` holds what scoring needs (the best checkpoint) and its keys
    are a subset of ``state_dict()``'s, which adds what resuming needs (optimizers,
    schedules, counters).

    The protocol is ``runtime_checkable``: ``tests/test_conformance.py`` checks every model of
    the registry against it (``isinstance`` and the methods' signatures)."""

    device: torch.device
    trainable: bool

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's mini-batches, as arrays of training-row indices."""
        ...

    def train_batch(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """One optimisation step on ``rows``; returns the loss and its parts (``{"loss": ...}``)."""
        ...

    def end_epoch(self) -> None:
        """Called after the last batch of an epoch (learning-rate schedules step here)."""
        ...

    def scorer(self) -> Scorer:
        """A scorer of the current model for evaluation."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def model_state(self) -> dict: ...

    def load_model_state(self, state: dict) -> None: ...
