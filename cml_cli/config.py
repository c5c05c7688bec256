"""Run configuration: one dataclass, the paper's presets, TOML files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_cli import registry
from cml_cli.data.limits import SEED_MAX
from cml_cli.errors import InputError, did_you_mean

# The cut-offs every command reports unless told otherwise (``cml train``, ``cml evaluate``).
DEFAULT_KS = (1, 5, 10, 20)


@dataclass
class RunConfig:
    """Every option of a training run. Keys are what ``--set key=value`` accepts; each
    attribute's docstring says what it does (``cml train --help`` lists them)."""

    model: str = "cml"
    """Model to train: ``cml`` or any name in :data:`cml_cli.registry.MODELS`."""
    epochs: int = 100
    """Maximum number of epochs."""
    patience: int = 20
    """Stop after this many epochs without a better validation NDCG@10 (0: never stop early)."""
    batch: int = 4096
    """Target-behavior training pairs per mini-batch."""
    edges_per_pair: int = 0
    """Bound on the graph work per training pair (0: none). A graph model propagates over every
    training interaction once per mini-batch; where the interactions of all behaviors exceed
    ``edges_per_pair`` times ``batch``, the batch grows to ceil(interactions / edges_per_pair) and
    the learning rate (``lr``, ``max_lr``) by the square root of the growth. An epoch then takes at
    most ``edges_per_pair`` x (pairs / interactions) full-graph passes, and its cost grows linearly
    with the data (see :meth:`RunConfig.batching`)."""
    dim: int = 16
    """Embedding size d."""
    layers: int = 3
    """Propagation layers L."""
    block_layers: list[int] | None = None
    """Layers of each behavior's block in the cascading peers (MB-CGCN, CRGCN), in the dataset's
    behavior order (default: ``layers`` for every block)."""
    pretrain_epochs: int = 0
    """MB-CGCN: first epochs that train its first block alone, with BPR on the first behavior."""
    encoder: str = "cml"
    """CML's encoder: ``cml`` (the paper's: per-layer weights and activation) or ``lightgcn``
    (linear, symmetrically normalised layers, mean over layers; CML's objective unchanged)."""
    adj: str = "none"
    """Adjacency normalisation of the ``cml`` encoder: ``none`` (plain sums, the paper's
    equations), ``symmetric`` (D_U^-1/2 A D_I^-1/2) or ``mean`` (mean over the neighbours)."""
    act: str = "sigmoid"
    """Activation of the ``cml`` encoder: ``sigmoid`` (the paper's) or ``tanh`` (zero-centred)."""
    ego: bool = False
    """Feed the layer-0 embeddings into the ``cml`` encoder's projection."""
    hold_out: bool = False
    """Leave each batch's positive pairs out of the graph the encoder propagates over."""
    lr: float = 1e-3
    """Base learning rate of the encoder (cyclic schedule from ``lr`` to ``max_lr``; baselines: Adam's rate)."""
    max_lr: float = 5e-3
    """Peak learning rate of the encoder's triangular cyclic schedule."""
    cycle_up: int = 5
    """Epochs from ``lr`` up to ``max_lr``."""
    cycle_down: int = 10
    """Epochs from ``max_lr`` back down to ``lr``."""
    wd: float = 1e-4
    """AdamW weight decay of the encoder."""
    meta_lr: float = 1e-4
    """Base learning rate of the meta weight network."""
    meta_max_lr: float = 2e-3
    """Peak learning rate of the meta weight network."""
    meta_cycle_up: int = 3
    """Epochs from ``meta_lr`` up to ``meta_max_lr``."""
    meta_cycle_down: int = 7
    """Epochs from ``meta_max_lr`` back down to ``meta_lr``."""
    meta_wd: float = 1e-4
    """Weight decay of the meta weight network."""
    meta_optimizer: str = "adamw"
    """Optimizer of the meta weight network: ``adamw`` or ``sgd`` (Nesterov)."""
    meta_momentum: float = 0.95
    """Momentum of the ``sgd`` meta optimizer."""
    reg: float = 1e-3
    """L2 coefficient on the batch's embeddings."""
    beta: float = 0.005
    """Weight of the contrastive (InfoNCE) loss."""
    ssl_ratio: float = 0.1
    """Fraction of a batch's users in the contrastive loss."""
    ssl_group: int = 1024
    """Contrastive users per InfoNCE group: a batch's contrastive users are split into groups of at
    most this many, each user's negatives being the others of its group, so the loss costs time
    linear in the batch (the paper's batches have fewer users than one group)."""
    meta_batch: int = 128
    """Meta users per meta step."""
    samp_num: int = 10
    """Target pairs per meta user in the meta step (the paper's sampNum)."""
    aux_samples: int = 1
    """Auxiliary-behavior positives drawn per target example."""
    meta_dropout: float = 0.8
    """Dropout rate of the meta weight network."""
    clip: float = 20.0
    """Gradient-norm clipping."""
    meta: bool = True
    """Meta contrastive encoding: the meta weight network and the three-step update (false: w/o MCE)."""
    meta_every: int = 1
    """Run the virtual and meta steps on every k-th mini-batch only (1: every batch, the paper's
    schedule); the other batches take the real step with the meta network as it stands."""
    meta_grad: str = "first-order"
    """``first-order`` (the reference's shortcut) or ``second-order`` (the bilevel gradient)."""
    meta_sampling: str = "intended"
    """``intended`` (behavior k's pairs for behavior k) or ``reference`` (the stale-loop quirk)."""
    virtual_lr: float = 0.0
    """Step size of the second-order virtual step (0: the encoder's current learning rate)."""
    contrastive: bool = True
    """The contrastive loss across behaviors (false: w/o CLF)."""
    knn_k: int = 0
    """item-kNN: neighbours kept per item (0: all)."""
    knn_shrink: float = 0.0
    """item-kNN: shrinkage added to the cosine's denominator."""
    cr_alpha: float = 0.0
    """CascadingRank: strength of query fitting alpha (toward the user's own interactions of each behavior)."""
    cr_beta: float = 0.9
    """CascadingRank: strength of cascading alignment beta (toward the previous behavior's ranking);
    alpha + beta <= 1, the rest is smoothing over the behavior's graph."""
    cr_tol: float = 1e-4
    """CascadingRank: a user's power iteration stops when its L1 residual is at most this."""
    cr_iters: int = 100
    """CascadingRank: maximum power iterations per behavior."""
    history_popularity: str = "target"
    """history: popularity that orders ties and the remaining items: ``target`` (training interactions
    of the target behavior) or ``all`` (users over all behaviors, as the popularity model)."""
    blend_models: list[str] = field(default_factory=lambda: ["cascadingrank", "history"])
    """blend: fitted registry models whose normalised scores are summed (their options are this run's)."""
    blend_runs: list[str] = field(default_factory=list)
    """blend: run directories of trained members (their best checkpoint; same dataset), after ``blend_models``."""
    blend_weights: list[float] = field(default_factory=lambda: [1.0, 0.25])
    """blend: one weight >= 0 per member, ``blend_models`` then ``blend_runs``."""
    blend_norm: str = "zscore"
    """blend: per-user normalisation over all items before weighting: ``rank`` (average rank of the
    score among the user's scores, scaled to [0, 1]) or ``zscore`` ((score - mean) / std)."""
    behaviors: list[str] | None = None
    """Auxiliary behaviors to keep (default all; the target is always kept)."""
    protocol: str = "strict"
    """``strict`` (epoch chosen on validation, test once) or ``paper`` (best epoch on test)."""
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    """Cut-offs of the reported metrics (10 is always computed: it selects the epoch)."""
    eval_batch: int = 4096
    """Users per evaluation batch."""
    seed: int = 0
    """Random seed (same seed, same metrics on CPU)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

    def validate(self) -> RunConfig:
        """Every key checked against its choices and bounds (:data:`CHOICES`, :data:`INT_BOUNDS`,
        :data:`FLOAT_BOUNDS`); the first problem is an :class:`InputError` naming the key."""
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            allowed = registry.names() if key == "model" else allowed
            if value not in allowed and not (key == "device" and DEVICE.fullmatch(str(value))):
                raise InputError(f"{key}: '{value}' is not one of {', '.join(allowed)}"
                                 + (" or cuda:N" if key == "device" else "") + did_you_mean(value, allowed))
        for key, (low, high) in INT_BOUNDS.items():
            values = getattr(self, key)
            for value in values if isinstance(values, list) else [] if values is None else [values]:
                if not low <= value <= high:
                    raise InputError(f"{key}: must be in [{low}, {high:,}], got {values}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{f.name}: must be a finite number, got {value}")
        for key, (low, high, low_in, high_in) in FLOAT_BOUNDS.items():
            value = getattr(self, key)
            if not (low < value < high or (low_in and value == low) or (high_in and value == high)):
                raise InputError(f"{key}: must be in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}, "
                                 f"got {value}")
        if self.block_layers is not None and not self.block_layers:
            raise InputError("block_layers: need at least one layer count")
        if not self.ks:
            raise InputError("ks: need at least one cut-off")
        self._validate_sota()
        return self

    def _validate_sota(self) -> None:
        """The rules between keys of CascadingRank (alpha + beta <= 1) and of the blend (its
        members, one weight >= 0 per member, at least one positive)."""
        if self.cr_alpha + self.cr_beta > 1 + 1e-9:
            raise InputError(f"cr_alpha, cr_beta: need alpha + beta <= 1, got {self.cr_alpha} + {self.cr_beta}")
        bad = [m for m in self.blend_models if m not in registry.names() or m == "blend"]
        if bad:
            raise InputError(f"blend_models: '{bad[0]}' is not a model to blend (choose from "
                             f"{', '.join(n for n in registry.names() if n != 'blend')})")
        members = [*self.blend_models, *self.blend_runs]
        if not members or len(self.blend_weights) != len(members):
            raise InputError(f"blend_weights: need one weight per member ({len(members)}: blend_models then "
                             f"blend_runs), got {len(self.blend_weights)}")
        if any(w < 0 or not math.isfinite(w) for w in self.blend_weights) or not any(w > 0 for w in self.blend_weights):
            raise InputError(f"blend_weights: need finite weights >= 0, at least one positive, got {self.blend_weights}")
        if any(not r.strip() for r in self.blend_runs):
            raise InputError("blend_runs: a run directory cannot be empty")

    def batching(self, edges: int) -> tuple[int, float]:
        r"""The mini-batch size and learning-rate factor for a graph of ``edges`` training
        interactions: ``(batch, 1)``, or with ``edges_per_pair`` = :math:`r` and
        :math:`edges > r \cdot batch`, :math:`(b, \sqrt{b / batch})` with :math:`b = \lceil edges / r \rceil`."""
        if not self.edges_per_pair or edges <= self.edges_per_pair * self.batch:
            return self.batch, 1.0
        grown = -(-edges // self.edges_per_pair)
        return grown, math.sqrt(grown / self.batch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        return apply_overrides(cls(), values)


CHOICES: dict[str, tuple[str, ...]] = {
    "model": (),  # the model registry's names
    "encoder": ("cml", "lightgcn"),
    "adj": ("none", "symmetric", "mean"),
    "act": ("sigmoid", "tanh"),
    "meta_optimizer": ("adamw", "sgd"),
    "meta_grad": ("first-order", "second-order"),
    "meta_sampling": ("intended", "reference"),
    "protocol": ("strict", "paper"),
    "device": ("auto", "cpu", "cuda"),
    "history_popularity": ("target", "all"),
    "blend_norm": ("rank", "zscore"),
}
DEVICE = re.compile(r"cuda:\d{1,3}")
# Inclusive bounds of the integer keys (lists: of each element). The upper bounds are far
# above any useful setting and low enough that no value can exhaust memory or overflow an
# integer type; cut-offs are also checked against the dataset's item count when it is read.
_LONG = 100_000
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "epochs": (1, _LONG), "patience": (0, _LONG), "pretrain_epochs": (0, _LONG),
    "cycle_up": (1, _LONG), "cycle_down": (1, _LONG), "meta_cycle_up": (1, _LONG), "meta_cycle_down": (1, _LONG),
    "batch": (1, 2**20), "eval_batch": (1, 2**16), "dim": (1, 1024), "layers": (1, 16), "block_layers": (1, 16),
    "meta_batch": (1, 2**16), "samp_num": (1, 1000), "aux_samples": (1, 100), "knn_k": (0, 2**31 - 1),
    "ks": (1, 2**31 - 1), "seed": (0, SEED_MAX), "meta_every": (1, _LONG), "edges_per_pair": (0, _LONG),
    "cr_iters": (1, _LONG),
    "ssl_group": (2, 2**16),
}
# Float keys: (low, high, low included, high included); every float must also be finite.
_POSITIVE, _NON_NEGATIVE = (0.0, math.inf, False, False), (0.0, math.inf, True, False)
FLOAT_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "lr": _POSITIVE, "max_lr": _POSITIVE, "meta_lr": _POSITIVE, "meta_max_lr": _POSITIVE, "clip": _POSITIVE,
    "wd": _NON_NEGATIVE, "meta_wd": _NON_NEGATIVE, "reg": _NON_NEGATIVE, "beta": _NON_NEGATIVE,
    "virtual_lr": _NON_NEGATIVE, "knn_shrink": _NON_NEGATIVE,
    "meta_momentum": (0.0, 1.0, True, False), "meta_dropout": (0.0, 1.0, True, False), "ssl_ratio": (0.0, 1.0, False, True),
    "cr_alpha": (0.0, 1.0, True, True), "cr_beta": (0.0, 1.0, True, True), "cr_tol": _POSITIVE,
}


# Keys only CML's trainer reads: two runs of any other model that differ in these alone
# compute the same thing (ablate reuses such a run when a CML preset changes).
CML_ONLY_KEYS = frozenset({
    "max_lr", "cycle_up", "cycle_down", "wd", "meta_lr", "meta_max_lr", "meta_cycle_up", "meta_cycle_down",
    "meta_wd", "meta_optimizer", "meta_momentum", "beta", "ssl_ratio", "ssl_group", "meta_batch", "samp_num", "aux_samples",
    "meta_dropout", "clip", "meta", "meta_every", "meta_grad", "meta_sampling", "virtual_lr", "contrastive", "encoder", "adj",
    "act", "ego", "hold_out",
})


# Keys that choose where a run computes, not what: a run is the same run whatever their values.
PLACEMENT_KEYS = ("device",)


def check_cutoffs(ks: list[int], n_items: int, option: str = "ks") -> list[int]:
    """Cut-offs must rank no more items than the dataset has: an :class:`InputError` otherwise."""
    too_big = [k for k in ks if k > n_items]
    if too_big:
        raise InputError(f"{option}: cut-off(s) {', '.join(map(str, too_big))} exceed the dataset's {n_items:,} items")
    return ks


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key of ``new`` whose value differs from ``old``, leaving
    out :data:`PLACEMENT_KEYS` and, unless ``new`` is a CML run, :data:`CML_ONLY_KEYS`."""
    unread = set(PLACEMENT_KEYS) | (set() if registry.kind_of(str(new.get("model", ""))) == "cml" else CML_ONLY_KEYS)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if k not in unread and old.get(k) != new.get(k)]


PAPER_PRESETS: dict[str, dict[str, Any]] = {
    "tmall": dict(batch=8192, lr=1e-3, max_lr=5e-3, cycle_up=5, cycle_down=10, wd=1e-4,
                  meta_lr=1e-4, meta_max_lr=2e-3, meta_cycle_up=3, meta_cycle_down=7, meta_wd=1e-4,
                  reg=1e-3, beta=0.005, samp_num=10, epochs=300, patience=100),
    "ijcai": dict(batch=8192, lr=1e-3, max_lr=2e-3, cycle_up=5, cycle_down=10, wd=1e-4,
                  meta_lr=1e-4, meta_max_lr=1e-3, meta_cycle_up=2, meta_cycle_down=3, meta_wd=1e-4,
                  reg=1e-3, beta=0.005, samp_num=10, epochs=300, patience=100),
    "retailrocket": dict(batch=2048, lr=1e-4, max_lr=1e-3, cycle_up=1, cycle_down=2, wd=1e-4,
                         meta_lr=1e-4, meta_max_lr=1e-3, meta_cycle_up=1, meta_cycle_down=2, meta_wd=1e-3,
                         meta_optimizer="sgd", meta_momentum=0.95, reg=1e-2, beta=0.005, samp_num=40,
                         epochs=200, patience=100),
}
# The project's presets: the paper's values (its Section 4.1 and the authors' published
# commands) with what measurement on the validation split showed CML needs to rank more than one
# list for everyone (experiments/results/collapse.md): the LightGCN backbone (linear, normalised
# layers with the layer-0 embeddings: the paper's encoder saturates and collapses in its deeper
# layers), trained without holding the batch's edges out, with the learning rates, L2
# coefficient, beta, dimension, depth and batch size that `cml tune` chose on each dataset's
# validation split (experiments/results/tuned.md; rounded). ``<name>-paper`` is the paper's setting.
# Speed (experiments/results/speed.md): the virtual and meta steps run on every 4th batch
# (meta_every), and a batch holds at least 1/64 as many target pairs as the graph has
# interactions (edges_per_pair: where the graph is large against its target pairs, as in the
# MB-CGCN files, fewer and larger batches); at equal time both reach a higher validation
# NDCG@10 than the paper's schedule.
PROJECT = dict(encoder="lightgcn", hold_out=False, meta_every=4, edges_per_pair=64)
PROJECT_CHANGES: dict[str, dict[str, Any]] = {
    "tmall": dict(PROJECT, lr=7e-4, max_lr=1e-2, reg=1e-5, beta=8e-4, dim=64, layers=2),
    "ijcai": dict(PROJECT, lr=7e-4, max_lr=1e-2, reg=1e-5, beta=8e-4, dim=64, layers=2),
    "retailrocket": dict(PROJECT, lr=2e-3, max_lr=1e-2, reg=7e-5, beta=2.5e-4, dim=64, layers=2, batch=2048),
}
# The `default` preset (every dataset without a preset of its own, e.g. a user's --source log) was
# chosen leave-one-dataset-out (experiments/default_preset.py, experiments/results/default-preset.md):
# of four candidates trained on retailrocket, tmall, the MB-CGCN files, IJCAI-15 and two synthetic
# logs, the tmall values were picked for 3 of the 6 held-out datasets (the retailrocket values for
# the other 3) and lead on the mean rank over all six; on each shared dataset they rank above
# popularity under full ranking with personalization@10 >= 0.95 (the old default, d 16, three
# layers, L2 1e-3, had 0.59 and early-stopped at epoch 9 on the MB-CGCN files).
# Rules that adapt to the data: the batch grows with the graph (edges_per_pair in PROJECT: at
# least interactions / 64 target pairs per batch, learning rate scaled by the square root of the
# growth), which keeps an epoch's cost linear in the data (experiments/results/speed.md). No L2
# or dimension rule by size was adopted: the same values held on datasets from 0.09 M to 1.15 M
# interactions. On the synthetic logs no candidate reached personalization@10 0.5 (0.18-0.27:
# popularity alone has full HR@10 0.34-0.36 there), which the collapse check reports.
DEFAULT_CHANGES = dict(PROJECT, lr=7e-4, max_lr=1e-2, reg=1e-5, beta=8e-4, dim=64, layers=2)
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(DEFAULT_CHANGES),
    **{name: {**values, **PROJECT_CHANGES[name]} for name, values in PAPER_PRESETS.items()},
    **{f"{name}-paper": dict(values) for name, values in PAPER_PRESETS.items()},
}


def _coerce(key: str, raw: Any, annotation: str) -> Any:
    """``raw`` (command-line text, or a value from TOML / JSON) as the field's type; a
    ``ValueError`` says what was expected."""
    if isinstance(raw, str):
        return _parse_text(key, raw.strip(), annotation)
    if "list" in annotation:
        if raw is None and key in ("behaviors", "block_layers"):
            return None
        if not isinstance(raw, (list, tuple)):
            raise ValueError(f"expected a list, got {raw!r}")
        return [_coerce(key, v, _element(annotation)) for v in raw]
    if "bool" in annotation:
        if not isinstance(raw, bool):
            raise ValueError(f"expected true/false, got {raw!r}")
        return raw
    if "int" in annotation:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not float(raw).is_integer():
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(raw)
    if "float" in annotation:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {raw!r}")
        return float(raw)
    raise ValueError(f"expected text, got {raw!r}")


def _element(annotation: str) -> str:
    """The element type of a list field's annotation (``list[float] | None`` -> ``float``)."""
    return next((t for t in ("int", "float") if f"list[{t}]" in annotation), "str")


def _parse_text(key: str, text: str, annotation: str) -> Any:
    if "list" in annotation:
        if text.lower() in ("", "none", "all") and key in ("behaviors", "block_layers"):
            return None
        parts = [p.strip() for p in text.strip("[]").split(",") if p.strip()]
        return [_parse_text(key, p, _element(annotation)) for p in parts]
    if "bool" in annotation:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got '{text}'")
    if "int" in annotation:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected an integer, got '{text}'") from None
        if not number.is_integer():
            raise ValueError(f"expected an integer, got '{text}'")
        return int(number)
    if "float" in annotation:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got '{text}'") from None
    return text


def apply_overrides(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with ``values`` (strings from the command line, or typed) applied."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    out = dataclasses.replace(cfg)
    for key, raw in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise InputError(f"unknown option '{key}'{did_you_mean(key, fields)}; the keys are the fields of "
                             "RunConfig, listed under --set by `cml train -h`")
        try:
            value = _coerce(key, raw, str(fields[key].type))
        except ValueError as e:
            raise InputError(f"option {key}: {e}") from None
        setattr(out, key, value)
    return out


def parse_set(pairs: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "epochs=5"]`` -> ``{"lr": "1e-3", "epochs": "5"}``."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set: expected key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables, or one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({what})")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{path}: invalid TOML ({e})") from None


def load_toml(path: Path) -> dict[str, Any]:
    """Run options from a TOML file: its ``[train]`` table, or its top level."""
    data = read_toml(path)
    options = data.get("train", data)
    if not isinstance(options, dict):
        raise InputError(f"{path}: 'train' must be a table of options ([train]), got {options!r}")
    return options


def compose(preset: str, layers: list[dict[str, Any]]) -> RunConfig:
    """The preset, then the model's own settings (:data:`cml_cli.registry.MODELS`; the model is
    the one the last layer that names one gives, else the preset's), then ``layers`` in order.
    Not validated: callers set what is left (the seed) and validate."""
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}'{did_you_mean(preset, PRESETS)} (choose from "
                         f"{', '.join(PRESETS)})")
    cfg = apply_overrides(RunConfig(), PRESETS[preset])
    model = apply_overrides(cfg, {k: v for layer in layers for k, v in layer.items()}).model
    if model in registry.MODELS:
        cfg = apply_overrides(cfg, registry.entry(model).settings)
    for layer in layers:
        cfg = apply_overrides(cfg, layer)
    return cfg


def resolve_config(
    preset: str,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """The preset, the model's settings, then a TOML file, then ``--set`` overrides (see
    :func:`compose`), validated."""
    layers = [load_toml(config_file)] if config_file is not None else []
    return compose(preset, [*layers, overrides or {}]).validate()


def config_for_dataset(
    dataset: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    data_dir: Path | None = None,
    preset: str | None = None,
    config_file: Path | None = None,
) -> RunConfig:
    """The resolved config of a run on a processed dataset: ``preset`` (default: the dataset's,
    :func:`dataset_preset_name`), the model's settings, ``config_file``, then ``overrides``
    (``--set``), validated. What ``cml train --dataset`` runs; scripts use it the same way."""
    from cml_cli.data.store import read_manifest, resolve_dataset_dir

    manifest = read_manifest(resolve_dataset_dir(dataset, data_dir))
    return resolve_config(preset or dataset_preset_name(manifest), config_file, overrides)


def dataset_preset_name(manifest: dict[str, Any]) -> str:
    """The training preset of a processed dataset: the one its manifest records, else its
    family's (``tmall-mbcgcn`` -> ``tmall``), else ``default``."""
    from cml_cli.data.preprocess import dataset_preset

    family = dataset_preset(str(manifest.get("name", "")))
    name = manifest.get("preset") or (family.train_preset if family else "default")
    return name if name in PRESETS else "default"


def config_to_toml(cfg: RunConfig) -> str:
    """TOML text of a resolved config (``None`` values are left out)."""
    lines = ["[train]"]
    for key, value in cfg.to_dict().items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
