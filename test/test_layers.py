"""The package's layers, checked on its import graph, and bench/ kept apart from test/.

Every module of ``vrs_node`` is read with ``ast``; every import in it counts, at module level or
inside a function (``import x``, ``from x import y``, relative imports resolved). A layer is the
first package below ``vrs_node``. The imports that run must make no cycle (one under
``if TYPE_CHECKING:`` never runs: it breaks a cycle, and counts only for the layers), and each
layer may import only:

=========  ==========================  =============================================
layer      may import (in vrs_node)    may be imported by
=========  ==========================  =============================================
models     models                      core, io, eval, ros
core       core, models                eval, ros
io         io, models                  eval, ros
eval       eval, core, io, models      (none)
ros        ros, core, io, models       (none)
=========  ==========================  =============================================

The root module (``vrs_node/__init__.py``) may be imported by every layer and imports none.
The bench scripts (``bench/*.py``) neither import ``conftest`` nor put ``test/`` on ``sys.path``:
their shared helpers live in ``bench/common.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vrs_node"
ROOT = ""
"""The layer name of the root module, ``vrs_node`` itself."""
ALLOWED = {
    ROOT: {ROOT},
    "models": {ROOT, "models"},
    "core": {ROOT, "core", "models"},
    "io": {ROOT, "io", "models"},
    "eval": {ROOT, "eval", "core", "io", "models"},
    "ros": {ROOT, "ros", "core", "io", "models"},
}
"""Layer -> the layers its modules may import (the table above)."""


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) body."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            ids.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return ids


def imported_names(module: str, path: Path, runtime_only: bool = False) -> set[str]:
    """Absolute dotted names a module imports, at any depth (``runtime_only``: leaving out those
    under ``if TYPE_CHECKING:``); ``from x import y`` gives ``x.y`` (a submodule, or a name in
    ``x``; :func:`import_graph` tells which)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree) if runtime_only else set()
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts[:len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def resolve(name: str, modules) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (None: none is)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(package_dir: Path, runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself left out; ``runtime_only``: as
    :func:`imported_names`)."""
    modules = module_names(package_dir)
    graph = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name in imported_names(module, path, runtime_only)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def layer_of(module: str) -> str:
    """``vrs_node.core.engine`` -> ``core``; the root module -> :data:`ROOT`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def upward_imports(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """``"a -> b (layer x may not import layer y)"`` for every edge the ``allowed`` table refuses
    (a layer missing from the table may import nothing)."""
    return [f"{source} -> {target} (layer {layer_of(source)!r} may not import layer {layer_of(target)!r})"
            for source, targets in sorted(graph.items()) for target in sorted(targets)
            if layer_of(target) not in allowed.get(layer_of(source), set())]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as ``[a, b, ..., a]`` (None: the graph has none); depth-first."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def bench_test_coupling(path: Path) -> list[str]:
    """What a bench script does that ties it to ``test/``, by line: an import of ``conftest``, or a
    ``sys.path`` insert/append whose argument mentions ``"test"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "conftest" for a in node.names):
            found.append((node.lineno, f"{path.name}:{node.lineno} imports conftest"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "conftest":
            found.append((node.lineno, f"{path.name}:{node.lineno} imports from conftest"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("insert", "append") and ast.unparse(node.func.value) == "sys.path"
              and any(isinstance(c, ast.Constant) and c.value == "test"
                      for arg in node.args for c in ast.walk(arg))):
            found.append((node.lineno, f"{path.name}:{node.lineno} puts test/ on sys.path"))
    return [message for _, message in sorted(found)]


# --- the checks on this repository ---------------------------------------------------------


def test_every_layer_is_known_and_the_graph_is_not_empty():
    graph = import_graph(REPO / PACKAGE)
    assert {layer_of(m) for m in graph} == set(ALLOWED)
    assert sum(len(targets) for targets in graph.values()) > 20


def test_no_import_cycle_between_vrs_node_modules():
    cycle = find_cycle(import_graph(REPO / PACKAGE, runtime_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_import_between_layers():
    violations = upward_imports(import_graph(REPO / PACKAGE), ALLOWED)
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_bench_scripts_do_not_reach_into_test():
    scripts = sorted((REPO / "bench").glob("*.py"))
    assert scripts
    found = [item for path in scripts for item in bench_test_coupling(path)]
    assert not found, "\n".join(found)


# --- the checker on synthetic graphs and files ---------------------------------------------


def test_checker_reports_a_cycle_and_an_upward_edge():
    graph = {
        "vrs_node.models.a": {"vrs_node.core.b"},  # upward
        "vrs_node.core.b": {"vrs_node.core.c"},
        "vrs_node.core.c": {"vrs_node.core.b", "vrs_node.models.a"},  # cycle b -> c -> b
        "vrs_node.eval.d": {"vrs_node.ros.e"},  # upward (sideways into ros)
        "vrs_node.ros.e": {"vrs_node.io.f", "vrs_node"},
        "vrs_node.io.f": set(),
        "vrs_node": set(),
    }
    assert find_cycle(graph) == ["vrs_node.core.b", "vrs_node.core.c", "vrs_node.core.b"]
    assert upward_imports(graph, ALLOWED) == [
        "vrs_node.eval.d -> vrs_node.ros.e (layer 'eval' may not import layer 'ros')",
        "vrs_node.models.a -> vrs_node.core.b (layer 'models' may not import layer 'core')",
    ]
    del graph["vrs_node.core.c"]
    assert find_cycle(graph) is None


def test_graph_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "vrs_node"
    for folder in ("models", "core", "io"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "m.py").write_text("def f():\n    from ..core import c\n")
    (pkg / "core" / "c.py").write_text("import vrs_node.io.i\nfrom . import d\nfrom .d import NAME\n")
    (pkg / "core" / "d.py").write_text("NAME = 1\n")
    (pkg / "core" / "__init__.py").write_text("from .c import x\n")
    (pkg / "io" / "i.py").write_text("import numpy\nif TYPE_CHECKING:\n    from vrs_node.core.c import x\n")
    assert import_graph(pkg, runtime_only=True)["vrs_node.io.i"] == set()
    graph = import_graph(pkg)
    assert graph["vrs_node.models.m"] == {"vrs_node.core.c"}
    assert graph["vrs_node.core.c"] == {"vrs_node.io.i", "vrs_node.core.d"}
    assert graph["vrs_node.core"] == {"vrs_node.core.c"}
    assert graph["vrs_node.io.i"] == {"vrs_node.core.c"}
    assert find_cycle(graph) == ["vrs_node.core.c", "vrs_node.io.i", "vrs_node.core.c"]
    assert upward_imports(graph, ALLOWED) == [
        "vrs_node.core.c -> vrs_node.io.i (layer 'core' may not import layer 'io')",
        "vrs_node.io.i -> vrs_node.core.c (layer 'io' may not import layer 'core')",
        "vrs_node.models.m -> vrs_node.core.c (layer 'models' may not import layer 'core')",
    ]


def test_bench_coupling_is_found(tmp_path):
    script = tmp_path / "bench_x.py"
    script.write_text('import sys\nsys.path.insert(0, str(REPO / "test"))\nfrom conftest import box_of\n'
                      'sys.path.append("elsewhere")\nfrom common import box_of\n')
    assert bench_test_coupling(script) == ["bench_x.py:2 puts test/ on sys.path",
                                           "bench_x.py:3 imports from conftest"]
