"""What every reader returns: raw splits, before validation hold-out and candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cml_cli.data.dataset import Interactions
from cml_cli.errors import InputError

# Funnel order of the behavior names the published formats use (a dataset has only one of
# pv / click / view): behaviors found in files are ordered by it, unknown names first.
FUNNEL_ORDER = ("pv", "click", "view", "fav", "cart", "buy")


def funnel_sorted(names) -> list[str]:
    """Behavior names in :data:`FUNNEL_ORDER` (names it does not know first, alphabetically)."""
    return sorted(names, key=lambda b: (FUNNEL_ORDER.index(b) if b in FUNNEL_ORDER else -1, b))


@dataclass
class RawData:
    """Behaviors in order (target last), per-behavior training interactions, and the
    leave-one-out test split as parallel arrays ``test_user``/``test_item``."""

    behaviors: list[str]
    n_users: int
    n_items: int
    train: dict[str, Interactions]
    test_user: np.ndarray
    test_item: np.ndarray
    meta_users: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def require_path(path: Path, kind: str = "path") -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {kind}")
    return path
