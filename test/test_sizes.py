"""Module and function sizes in ``vrs_node/``: no module over :data:`MAX_MODULE_LINES` lines and no
function (or method) over :data:`MAX_FUNCTION_LINES`, counted with ``ast`` from the ``def`` line
(decorators excluded) to the last line of the body, docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vrs_node"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def long_functions(source: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function in ``source`` longer than :data:`MAX_FUNCTION_LINES`."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        found.append((name, lines))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_size_rule_catches_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"class A:\n  def f(self):\n{body}\n") == [("A.f", MAX_FUNCTION_LINES + 1)]
    assert long_functions("def g():\n    return 1\n") == []


def test_no_module_over_the_limit():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 20
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_over_the_limit():
    found = {str(p.relative_to(PACKAGE.parent)): long_functions(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {name: funcs for name, funcs in found.items() if funcs} == {}
