"""Every model of the registry has a trainer that satisfies the :class:`Trainer` protocol.

The tests iterate :data:`cml_cli.registry.MODELS`, so a model added to the registry is
checked without touching this file."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from cml_cli import registry
from cml_cli.config import resolve_config
from cml_cli.evaluate import evaluate_sampled
from cml_cli.train.factory import TRAINERS, make_trainer
from cml_cli.train.trainer import Trainer

CPU = torch.device("cpu")
METHODS = sorted(name for name, value in vars(Trainer).items() if inspect.isfunction(value) and not name.startswith("_"))


def _trainer(ds, model: str):
    cfg = resolve_config("default", None, {"model": model, "dim": "8", "layers": "1", "batch": "512",
                                           "pretrain_epochs": "0", "device": "cpu"})
    torch.manual_seed(0)
    return make_trainer(ds, cfg, CPU)


def _shape(fn) -> list[tuple[str, inspect._ParameterKind]]:
    """A callable's parameters as (name, kind), without ``self``."""
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_the_factory_builds_every_registry_model_and_no_other():
    assert list(TRAINERS) == list(registry.MODELS)


def test_the_protocol_lists_the_loop_s_methods():
    assert {"batches", "train_batch", "end_epoch", "scorer", "state_dict", "load_state_dict", "model_state",
            "load_model_state"} <= set(METHODS)


@pytest.mark.parametrize("model", list(registry.MODELS))
def test_trainer_satisfies_the_protocol(tiny, model):
    trainer = _trainer(tiny, model)
    assert isinstance(trainer, Trainer)
    assert isinstance(trainer.trainable, bool) and trainer.device == CPU
    for name in METHODS:
        assert _shape(getattr(trainer, name)) == _shape(getattr(Trainer, name)), f"{model}: {name}"


@pytest.mark.parametrize("model", list(registry.MODELS))
def test_trainer_keeps_the_contract(tiny, model):
    """One batch, the end of an epoch, scoring, and the checkpoint round trip behave as the
    protocol's docstrings say."""
    trainer = _trainer(tiny, model)
    rng = np.random.default_rng(0)
    batches = trainer.batches(rng)
    assert isinstance(batches, list) and (len(batches) > 0) == trainer.trainable
    if batches:
        parts = trainer.train_batch(batches[0], rng)
        assert "loss" in parts and all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    trainer.end_epoch()
    before = evaluate_sampled(trainer.scorer(), tiny.valid, [10], 256, CPU)
    model_state, state = trainer.model_state(), trainer.state_dict()
    assert set(model_state) <= set(state)
    trainer.load_state_dict(state)
    trainer.load_model_state(model_state)
    assert evaluate_sampled(trainer.scorer(), tiny.valid, [10], 256, CPU) == before


def test_a_trainer_missing_a_method_does_not_conform(tiny):
    trainer = _trainer(tiny, "bpr-mf")

    class Partial:
        device, trainable = trainer.device, True
        batches, train_batch, scorer = trainer.batches, trainer.train_batch, trainer.scorer

    assert not isinstance(Partial(), Trainer)
