"""No import cycle among querywatch's modules.

Every import counts: module-level, inside functions and under ``TYPE_CHECKING``; relative imports
are resolved against the importing module's package. ``from pkg import name`` points at the
submodule ``pkg.name`` when one exists, else at ``pkg`` itself. Importing ``pkg.mod`` counts as an
edge to ``pkg.mod`` only, not to ``pkg/__init__`` (else every package whose ``__init__`` re-exports
its modules would be a cycle with each module that imports a sibling).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import querywatch

PACKAGE = Path(querywatch.__file__).parent
Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The querywatch modules that the module ``name`` imports anywhere in its body."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_of(name, path).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def import_graph() -> Graph:
    known = modules()
    return {
        name: {target for target in imported(name, path, known) if target in known} - {name}
        for name, path in known.items()
    }


def cycles(graph: Graph) -> list[list[str]]:
    """The cycles inside each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.extend(cycles_in(graph, component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycles_in(graph: Graph, component: set[str]) -> list[list[str]]:
    """A shortest cycle through each module of the component, each cycle once."""
    found: list[list[str]] = []
    for start in sorted(component):
        cycle = shortest_cycle(graph, component, start)
        turn = cycle.index(min(cycle))
        rotated = [*cycle[turn:-1], *cycle[:turn], cycle[turn]]
        if rotated not in found:
            found.append(rotated)
    return found


def shortest_cycle(graph: Graph, component: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside the component."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_walk_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert "querywatch.errors" in graph["querywatch.settings"]  # module-level, absolute or relative
    assert graph["querywatch.detect"] >= {"querywatch.detect.rules", "querywatch.detect.incidents"}
    assert "querywatch.plans" in graph["querywatch.gate.plans"]  # from .. import plans


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}, [["a", "b", "c", "a"]]),
        ({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["c", "d", "c"], ["a", "b", "a"]]),
        ({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}, [["a", "b", "a"], ["a", "c", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a", "b"}}, [["a", "b", "c", "a"], ["b", "c", "b"]]),
    ],
)
def test_cycles_are_found_and_spelled_out(graph: Graph, expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_the_resolver_follows_relative_function_level_and_type_checking_imports(
    tmp_path: Path,
) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..top import name\n"
        "if TYPE_CHECKING:\n"
        "    from querywatch.pkg.hinted import Hint\n"
        "def late() -> None:\n"
        "    import querywatch.other\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = dict.fromkeys(
        ["querywatch.pkg.sibling", "querywatch.top", "querywatch.pkg.hinted", "querywatch.other"],
        path,
    )
    assert set(imported("querywatch.pkg.mod", path, known)) >= set(known)


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)
