"""Imports point down only: the module graph of ``src/lowrank`` has no cycle.

Every ``import`` / ``from ... import`` counts, also those inside functions (a lazy import is a
dependency that only runs later). A module importing ``pkg.sub`` depends on ``pkg.sub``; a
module importing a name defined in a package's ``__init__`` depends on the package;
``from pkg import sub`` of a submodule depends on that submodule only (every submodule needs
its package initialised first, which is no layering edge).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "lowrank"
PACKAGE = "lowrank"


def _module_names() -> dict[str, Path]:
    """``lowrank.compress.svd`` -> its file; a package is named by its ``__init__``."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (relative) import ``from <level dots><target> import ...``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``lowrank`` modules that ``module`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # 'lowrank.nn.LowRankLinear' -> 'lowrank.nn'
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # 'from . import svd' imports the submodule only
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                components.append(sorted(component))
    return components


def _cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One import cycle through the component's first module (breadth-first, shortest)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start \
                        else [start, start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "lowrank.compress.factorize" in graph["lowrank.compress.svd"]  # relative
    assert "lowrank.report" in graph["lowrank.jobs.compress"]  # inside a function
    assert "lowrank.compress" in graph["lowrank"]  # a name from a package
    assert "lowrank.errors" in graph["lowrank.registry"]


def test_tarjan_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d"]] or \
        sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"]]
    assert _cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    message = "\n".join(f"{len(c)} modules: {' -> '.join(_cycle(graph, c))}\n  all: {c}"
                        for c in cycles)
    assert not cycles, f"import cycles in src/lowrank:\n{message}"
