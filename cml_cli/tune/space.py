"""Search spaces of ``cml tune``: a TOML file with one table per ``RunConfig`` key.

.. code-block:: toml

    [lr]                      # log-uniform float
    type = "float"
    low = 1e-4
    high = 1e-1
    log = true

    [layers]                  # integer range (inclusive), optional step
    type = "int"
    low = 1
    high = 4

    [dim]                     # one of a list
    type = "categorical"
    choices = [16, 32, 64]

Defaults per model ship in ``cml_cli/tune/spaces/<model>.toml`` (also reachable as
``experiments/search/<model>.toml``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cml_cli.config import RunConfig, apply_overrides, read_toml
from cml_cli.errors import InputError

SPACES = Path(__file__).resolve().parent / "spaces"
TYPES = ("float", "int", "categorical")
# Keys a study fixes itself, never drawn: why.
STUDY_KEYS = {"model": "a study tunes the model of --model", "seed": "the study's --seed fixes it",
              "protocol": "trials always select on validation (strict)"}


@dataclass(frozen=True)
class Param:
    """One dimension of a search space."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna ``trial`` draws for this parameter."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))


def default_space_file(model: str) -> Path:
    """The shipped search space of ``model`` (an input error when there is none)."""
    path = SPACES / f"{model}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPACES.glob("*.toml")))
        raise InputError(f"--model {model}: no default search space (shipped: {shipped}); pass --space FILE.toml")
    return path


def parse_space(data: dict[str, Any], where: str, fixed: dict[str, Any] | None = None) -> list[Param]:
    """The parameters of a space table (see the module docstring), checked: every name is a
    ``RunConfig`` key not fixed by ``--set``, every bound and choice is valid for that key."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if not isinstance(data, dict) or not data:
        raise InputError(f"{where}: empty search space (expected tables [KEY] with a type)")
    params = []
    for name, spec in data.items():
        if name not in fields:
            raise InputError(f"{where}: [{name}] is not a RunConfig key (known: {', '.join(sorted(fields))})")
        if name in STUDY_KEYS:
            raise InputError(f"{where}: [{name}] cannot be searched: {STUDY_KEYS[name]}")
        if fixed and name in fixed:
            raise InputError(f"{where}: [{name}] is also fixed with --set; drop one of them")
        if not isinstance(spec, dict):
            raise InputError(f"{where}: [{name}] must be a table with a type")
        params.append(_param(name, dict(spec), where))
    return params


def _param(name: str, spec: dict[str, Any], where: str) -> Param:
    kind = spec.pop("type", None)
    if kind not in TYPES:
        raise InputError(f"{where}: [{name}] type must be one of {', '.join(TYPES)}, got {kind!r}")
    unknown = set(spec) - ({"choices"} if kind == "categorical" else {"low", "high", "log", "step"})
    if unknown:
        raise InputError(f"{where}: [{name}] unknown field(s) {sorted(unknown)} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: [{name}] needs a non-empty list of choices")
        for c in choices:
            _check_value(name, c, where)
        return Param(name, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    numbers = (low, high) + ((step,) if step is not None else ())
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers):
        raise InputError(f"{where}: [{name}] needs finite numbers low and high (and step), got {low!r}, {high!r}")
    if kind == "int" and not all(float(x).is_integer() for x in numbers):
        raise InputError(f"{where}: [{name}] is an int range: low, high and step must be integers")
    if not low < high:
        raise InputError(f"{where}: [{name}] needs low < high, got {low} and {high}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise InputError(f"{where}: [{name}] log = true needs low > 0 (and log must be true or false)")
    if step is not None and (step <= 0 or log):
        raise InputError(f"{where}: [{name}] step must be positive, and cannot be combined with log")
    for x in (low, high):
        _check_value(name, int(x) if kind == "int" else float(x), where)
    return Param(name, kind, float(low), float(high), log, None if step is None else float(step))


def _check_value(name: str, value: Any, where: str) -> None:
    try:
        apply_overrides(RunConfig(), {name: value})
    except InputError as e:
        raise InputError(f"{where}: [{name}] value {value!r}: {e}") from None


def load_space(path: Path | None, model: str, fixed: dict[str, Any] | None = None) -> tuple[Path, list[Param]]:
    """The search space of ``--space FILE`` or the model's default; ``(file, params)``."""
    path = Path(path) if path is not None else default_space_file(model)
    data = read_toml(path, "search space")
    return path, parse_space(data, str(path), fixed)
