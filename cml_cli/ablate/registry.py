"""The variants of ``cml ablate``: CML's ablations, one variant per model of the model
registry (:mod:`cml_cli.registry`) other than CML, variants from TOML files, and choosing
the variants to run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cml_cli import registry as models
from cml_cli.config import RunConfig, apply_overrides, read_toml
from cml_cli.data.store import MAX_NAME_BYTES
from cml_cli.errors import InputError, did_you_mean
from cml_cli.layout import REFERENCE

# Group name -> the variant kinds it selects (the peers are baselines too); "sota" selects the
# registry's strongest known methods by name (models.SOTA).
GROUPS = {"ablations": ("ablation",), "baselines": ("baseline", "peer"), "peers": ("peer",)}
NAMED_GROUPS = {"sota": models.SOTA}


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides; ``kind`` is cml | ablation | baseline | peer | custom."""

    name: str
    overrides: dict[str, Any]
    kind: str = "custom"
    description: str = ""


_CORE = (
    Variant(REFERENCE, {}, "cml", "full CML"),
    Variant("w/o-clf", {"contrastive": False}, "ablation", "no contrastive loss"),
    Variant("w/o-mce", {"meta": False}, "ablation", "no meta weighting: all weights 1, no meta steps"),
    Variant("first-order", {"meta_grad": "first-order"}, "ablation", "first-order meta-gradient"),
    Variant("second-order", {"meta_grad": "second-order"}, "ablation", "second-order meta-gradient"),
    Variant("adj-none", {"adj": "none"}, "ablation", "unnormalised adjacency"),
    Variant("adj-symmetric", {"adj": "symmetric"}, "ablation", "symmetrically normalised adjacency"),
    Variant("no-hold-out", {"hold_out": False}, "ablation",
            "batch positives stay in the propagated graph (the paper's training)"),
    Variant("hold-out", {"hold_out": True}, "ablation", "batch positives left out of the propagated graph"),
    Variant("cml-lightgcn", {"encoder": "lightgcn"}, "ablation",
            "CML's objective on LightGCN's linear, normalised layers (is it the encoder or the objective?)"),
    Variant("paper-encoder", {"encoder": "cml", "hold_out": True}, "ablation",
            "the paper's encoder (sigmoid layers, projection), with the batch's positives held out"),
    Variant("meta-every-batch", {"meta_every": 1}, "ablation",
            "virtual and meta steps on every mini-batch (the paper's schedule)"),
    Variant("meta-every-4", {"meta_every": 4}, "ablation", "virtual and meta steps on every 4th mini-batch only"),
)
def builtin_variants(behaviors: list[str] | None = None) -> dict[str, Variant]:
    """The registered variants for a dataset whose behaviors are ``behaviors`` (target last):
    the CML ablations, one ``w/o-<behavior>`` per auxiliary behavior, ``target-only`` (when
    there are auxiliary behaviors) and every other model of the registry (baselines, then
    multi-behavior peers; each runs with its registry settings), in table order."""
    out = {v.name: v for v in _CORE}
    auxiliary = list(behaviors[:-1]) if behaviors else []
    for b in auxiliary:
        out[f"w/o-{b}"] = Variant(f"w/o-{b}", {"behaviors": [a for a in auxiliary if a != b]}, "ablation",
                                  f"without the {b} behavior")
    if auxiliary:
        out["target-only"] = Variant("target-only", {"behaviors": []}, "ablation",
                                     f"{behaviors[-1]} only, no auxiliary behavior")
    for kind in ("baseline", "peer"):
        for name in models.names(kind):
            out[name] = Variant(name, {"model": name}, kind, models.entry(name).description)
    return out


def load_variants_file(path: Path) -> dict[str, Variant]:
    """Variants from a TOML file: tables ``[variants.NAME]`` of config overrides (``--set``
    keys), with an optional ``description`` string. Quote names with ``/``:
    ``[variants."w/o-dropout"]``."""
    path = Path(path)
    data = read_toml(path, "variants file")
    table = data.get("variants")
    if not isinstance(table, dict) or not table:
        raise InputError(f"--variants-file {path}: expected tables [variants.NAME] of overrides")
    out = {}
    for name, spec in table.items():
        if not name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode()) > MAX_NAME_BYTES:
            raise InputError(f"--variants-file {path}: variants.{name!r}: a variant name must be printable text of "
                             f"1 to {MAX_NAME_BYTES} bytes")
        if not isinstance(spec, dict):
            raise InputError(f"--variants-file {path}: variants.{name} must be a table of overrides")
        spec = dict(spec)
        description = str(spec.pop("description", ""))
        if "seed" in spec:
            raise InputError(f"--variants-file {path}: variants.{name}: 'seed' is set by --seeds")
        try:
            apply_overrides(RunConfig(), spec)
        except InputError as e:
            raise InputError(f"--variants-file {path}: variants.{name}: {e}") from None
        kind = models.kind_of(spec["model"]) if spec.get("model", REFERENCE) != REFERENCE else "custom"
        out[name] = Variant(name, spec, kind, description or "from " + path.name)
    return out


def registry(behaviors: list[str] | None = None, variants_file: Path | None = None) -> dict[str, Variant]:
    """Built-in variants for ``behaviors`` plus (replacing same-named ones) a variants file's."""
    out = builtin_variants(behaviors)
    if variants_file is not None:
        out.update(load_variants_file(variants_file))
    return out


def select_variants(reg: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    """The variants to run: all of ``reg`` in registry order by default. ``names`` may use the
    groups ``all``, ``ablations``, ``baselines``, ``peers`` and ``sota`` (CascadingRank, history
    and blend)."""
    if not names:
        return list(reg.values())
    out: list[Variant] = []
    for name in names:
        if name == "all":
            group = list(reg.values())
        elif name in GROUPS:
            group = [v for v in reg.values() if v.kind in GROUPS[name]]
        elif name in NAMED_GROUPS:
            group = [reg[n] for n in NAMED_GROUPS[name] if n in reg]
        elif name in reg:
            group = [reg[name]]
        else:
            raise InputError(f"--variants: unknown variant '{name}'{did_you_mean(name, [*reg, 'all', *GROUPS])} "
                             f"(known: {', '.join(reg)}; add your own with --variants-file)")
        out += [v for v in group if v not in out]
    return out
