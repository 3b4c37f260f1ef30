#!/usr/bin/env python3
"""Fail on any import cycle among the modules of the given packages, naming the cycle.

Usage: ``python tools/check_import_cycles.py [--root DIR] [PACKAGE ...]``, where a PACKAGE is a
directory under the root, or ``DIR=NAME`` for a directory installed under another import name
(default: ``harness=abtest_harness`` and ``fixtures=abtest_harness_pytest``). Exit 0 when the
import graph has no cycle, 1 with one line per cycle (``a -> b -> a`` and where each import is
written) when it has, 2 for bad arguments.

Every ``import`` and ``from ... import`` statement counts, wherever it is written: at module
level, inside a function or method, under ``try``: a function-level import hides a cycle from
the interpreter until the function runs, but the two modules still depend on each other. Only
imports under ``if TYPE_CHECKING:`` are left out, since they never run. Imports of modules
outside the given packages are ignored. ``from pkg import name`` depends on ``pkg.name`` when
that is a module of the tree, else on ``pkg`` itself.

Standard library only, so it runs before any install.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `path`:`line`."""

    source: str
    target: str
    path: str
    line: int


def discover(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Module name -> file for every ``.py`` file under each package directory (``DIR`` or ``DIR=NAME``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        directory, _, name = package.partition("=")
        base = root / directory
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: no such package directory")
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([name or directory, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, except the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names, resolving leading dots."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
    return ".".join([*anchor, *([node.module] if node.module else [])])


def edges(modules: Mapping[str, Path], root: Path) -> list[Edge]:
    """Every import from one module of the tree to another."""
    found: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        shown = str(path.relative_to(root))
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    # `import a.b.c` binds `a` but runs a.b.c: depend on the deepest module known.
                    name = alias.name
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    targets.append(name)
            else:
                base = _absolute(module, is_package, node)
                for alias in node.names:
                    child = f"{base}.{alias.name}" if base else alias.name
                    targets.append(child if child in modules else base)
            for target in targets:
                if target in modules and target != module:
                    found.append(Edge(module, target, shown, node.lineno))
    return found


def cycles(modules: Sequence[str], graph_edges: Sequence[Edge]) -> list[list[Edge]]:
    """One cycle (as the edges that close it) per strongly connected component with more than one module."""
    graph: dict[str, list[Edge]] = {m: [] for m in modules}
    for edge in graph_edges:
        graph[edge.source].append(edge)
    found = []
    for component in _components(graph):
        if len(component) > 1:
            found.append(_cycle_in(component, graph))
    return found


def _components(graph: Mapping[str, Sequence[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to hit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            out = graph[node]
            if i < len(out):
                work.append((node, i + 1))
                nxt = out[i].target
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return result


def _cycle_in(component: Sequence[str], graph: Mapping[str, Sequence[Edge]]) -> list[Edge]:
    """A shortest cycle through the component's first module, by breadth-first search."""
    members = set(component)
    start = component[0]
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target not in members:
                    continue
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if edge.target not in came:
                    came[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in a strongly connected component")


def describe(cycle: Sequence[Edge]) -> str:
    """``a -> b -> a (a: path:line; b: path:line)``."""
    names = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
    where = "; ".join(f"{e.source} imports {e.target} at {e.path}:{e.line}" for e in cycle)
    return f"import cycle: {names} ({where})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="directory holding the packages (default: the repository root)")
    parser.add_argument("packages", nargs="*", default=["harness=abtest_harness", "fixtures=abtest_harness_pytest"])
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        modules = discover(root, args.packages)
        graph_edges = edges(modules, root)
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        print(f"check_import_cycles: {exc}", file=sys.stderr)
        return 2
    found = cycles(sorted(modules), graph_edges)
    for cycle in found:
        print(describe(cycle))
    if found:
        print(f"{len(found)} import cycle(s) among {len(modules)} modules of {', '.join(args.packages)}")
        return 1
    print(f"no import cycle among {len(modules)} modules of {', '.join(args.packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
