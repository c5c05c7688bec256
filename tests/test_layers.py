"""The house's import rules (README, "How it is built"): dependencies point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cml_cli"
_COMMANDS = ("cml_cli.ablate", "cml_cli.report", "cml_cli.tune", "cml_cli.cli")
_ABOVE_DATA = ("cml_cli.config", "cml_cli.registry", "cml_cli.layout", "cml_cli.evaluate", "cml_cli.tracking",
               "cml_cli.model", "cml_cli.train", *_COMMANDS)
# package or module -> what it must never import (the layers, top down: cli; tune, ablate, report;
# train; model; evaluate, tracking, layout; config; registry; data; errors and the small helpers)
FORBIDDEN = {
    "report": ("cml_cli.ablate", "cml_cli.tune", "cml_cli.cli"),
    "ablate": ("cml_cli.report", "cml_cli.tune", "cml_cli.cli"),
    "tune": ("cml_cli.ablate", "cml_cli.report", "cml_cli.cli"),
    "train": _COMMANDS,
    "model": ("cml_cli.train", "cml_cli.config", "cml_cli.tracking", "cml_cli.layout", *_COMMANDS),
    "evaluate": ("cml_cli.model", "cml_cli.train", "cml_cli.config", "cml_cli.tracking", "cml_cli.layout", *_COMMANDS),
    "tracking": ("cml_cli.model", "cml_cli.train", "cml_cli.evaluate", "cml_cli.layout", *_COMMANDS),
    "layout": ("cml_cli.config", "cml_cli.model", "cml_cli.train", "cml_cli.evaluate", "cml_cli.tracking",
               *_COMMANDS),
    "config": ("cml_cli.model", "cml_cli.train", "cml_cli.evaluate", "cml_cli.tracking", "cml_cli.layout",
               *_COMMANDS),
    "registry": ("cml_cli.data", *_ABOVE_DATA),
    "data": _ABOVE_DATA,
    "errors": ("cml_cli.data", *_ABOVE_DATA),
    "collapse": _COMMANDS,  # beside train: its check trains a popularity baseline
    "lifeline": ("cml_cli.data", *_ABOVE_DATA),
    "listing": ("cml_cli.data", *_ABOVE_DATA),
    "threads": ("cml_cli.data", *_ABOVE_DATA),
}
# The top of the house: the command line and its entry point may import anything.
TOP = {"cli", "__main__", "__init__"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _files(unit: str) -> list[Path]:
    """The source files of a package (a folder) or a module of ``cml_cli``."""
    folder = PACKAGE / unit
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{unit}.py"]


def test_every_package_and_module_has_a_rule():
    units = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/*.py")}
    assert units - TOP == set(FORBIDDEN)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package):
    bad = []
    for path in _files(package):
        for module in imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not bad, bad


def test_registry_imports_no_torch():
    """Reading the model registry (config validation, report grouping) imports no torch."""
    assert not {m for m in imports(PACKAGE / "registry.py") if m.split(".")[0] in ("torch", "torch_geometric")}
