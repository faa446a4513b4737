"""No module of roofline/ takes part in an import cycle (issue 13): the layers stay one-way.

The graph has an edge for every import statement, at module level or inside a function: a lazy import
hides a cycle from the interpreter, not from the design. Importing `a.b.c` also runs package `a.b`'s
__init__, so that is an edge too, except to the importer's own ancestors (already running) and to the
root package (which only re-exports the API).
"""
from __future__ import annotations

import ast
from pathlib import Path

import roofline

ROOT = Path(roofline.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["roofline", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module an import statement names, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rsplit(".", 1)[0]
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        imported = _imports(ast.parse(path.read_text()), module, path.name == "__init__.py")
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for target in imported:
            if not target.startswith("roofline"):
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the target and the packages it runs on the way
                name = ".".join(parts[:i])
                if name in paths and name != module and name not in ancestors:
                    edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_the_known_layers():
    graph = import_graph()
    assert "roofline.predict" in graph["roofline.calibrate"]  # calibration sits above prediction
    assert "roofline.hardware" in graph["roofline.predict"]  # via roofline.hardware.profile's package
    assert not any(name.startswith("roofline.calibrate") for name in graph["roofline.hardware.microbench"])
    assert "roofline.hardware" in graph["roofline.cli"]  # a lazy import inside a handler is an edge too


def test_no_module_of_roofline_is_in_an_import_cycle():
    assert cycles(import_graph()) == []
