"""What the readers share: :class:`~cml_cli.data.dataset.RawData` (what every reader returns: raw
splits, before validation hold-out and candidates), the funnel order of behavior names, path checks."""

from __future__ import annotations

from pathlib import Path

from cml_cli.data.dataset import RawData
from cml_cli.errors import InputError

__all__ = ["FUNNEL_ORDER", "RawData", "funnel_sorted", "require_path"]

# Funnel order of the behavior names the published formats use (a dataset has only one of
# pv / click / view): behaviors found in files are ordered by it, unknown names first.
FUNNEL_ORDER = ("pv", "click", "view", "fav", "cart", "buy")


def funnel_sorted(names) -> list[str]:
    """Behavior names in :data:`FUNNEL_ORDER` (names it does not know first, alphabetically)."""
    return sorted(names, key=lambda b: (FUNNEL_ORDER.index(b) if b in FUNNEL_ORDER else -1, b))


def require_path(path: Path, kind: str = "path") -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {kind}")
    return path
