"""The house's size rules (README, "How it is built"), checked on the source with ``ast``:
short functions, short signatures, no private name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cml_cli"
MAX_LINES = 60
MAX_PARAMS = 8


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_command(node: ast.FunctionDef) -> bool:
    """A Typer command of the command line (``@app.command(...)``): Typer needs a parameter per option."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in node.decorator_list)


def _params(node: ast.FunctionDef) -> int:
    """Parameters a caller passes (``self`` and ``cls`` not counted)."""
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return len(names) - (names[:1] in (["self"], ["cls"])) + (a.vararg is not None) + (a.kwarg is not None)


def test_no_long_function_and_no_long_signature():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _functions(path):
            if path.name == "cli.py" and _is_command(node):
                continue
            lines = node.end_lineno - node.lineno + 1
            where = f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"
            if lines > MAX_LINES:
                bad.append(f"{where}: {lines} lines (at most {MAX_LINES})")
            if _params(node) > MAX_PARAMS:
                bad.append(f"{where}: {_params(node)} parameters (at most {MAX_PARAMS}; pass a frozen dataclass)")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cml_cli"):
                bad += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def test_the_code_reads_on_its_own():
    """No docstring or comment points into a specification outside the repository."""
    assert not [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "spec §" in p.read_text()]
