"""The house's import rules (README, "How it is built"): dependencies point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cml_cli"
# package -> packages it must never import
FORBIDDEN = {
    "report": ("cml_cli.ablate", "cml_cli.tune", "cml_cli.cli"),
    "ablate": ("cml_cli.report", "cml_cli.tune", "cml_cli.cli"),
    "tune": ("cml_cli.ablate", "cml_cli.report", "cml_cli.cli"),
    "model": ("cml_cli.train", "cml_cli.ablate", "cml_cli.report", "cml_cli.tune", "cml_cli.cli"),
    "data": ("cml_cli.model", "cml_cli.train", "cml_cli.ablate", "cml_cli.report", "cml_cli.tune", "cml_cli.cli"),
}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package):
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not bad, bad


def test_registry_imports_no_torch():
    """Reading the model registry (config validation, report grouping) imports no torch."""
    assert not {m for m in imports(PACKAGE / "registry.py") if m.split(".")[0] in ("torch", "torch_geometric")}
