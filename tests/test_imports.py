"""No import cycle among querywatch's modules.

Every import counts: module-level, inside functions and under ``TYPE_CHECKING``; relative imports
are resolved against the importing module's package. ``from pkg import name`` points at the
submodule ``pkg.name`` when one exists, else at ``pkg`` itself. Importing ``pkg.mod`` counts as an
edge to ``pkg.mod`` only, not to ``pkg/__init__`` (else every package whose ``__init__`` re-exports
its modules would be a cycle with each module that imports a sibling).

And what the CLI loads: ``querywatch.cli`` and ``--help`` import no web stack, PostgreSQL driver,
store engine or SQL parser (each command imports what it runs), checked in a fresh interpreter;
the packages that re-export names lazily give the same objects as their modules.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
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


# what `querywatch --help` must not load: each costs from 50 ms to most of a second at start-up
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "psycopg",
    "psycopg_pool",
    "pglast",
    "httpx",
    "prometheus_client",
    "playwright",
    "querywatch.store.postgres",
)


def heavy_loaded(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after ``code`` ran in a fresh interpreter (and the
    web package's modules beyond ``querywatch.web.commands``)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    web = {"querywatch.web", "querywatch.web.commands"}
    return [
        m
        for m in loaded
        if m.split(".")[0] in HEAVY
        or m in HEAVY
        or (m.startswith("querywatch.web.") and m not in web)
    ]


def cli_run(*args: str) -> str:
    """Code running the CLI with ``args`` in-process (its exit caught), for heavy_loaded."""
    return (
        "from querywatch.cli import app\n"
        "try:\n"
        f"    app({list(args)!r}, prog_name='querywatch')\n"
        "except SystemExit:\n"
        "    pass"
    )


@pytest.mark.parametrize(
    "code",
    [
        "import querywatch.cli",
        cli_run("--help"),
        cli_run("status", "--help"),
        cli_run("logs", "--help"),
    ],
    ids=["import", "help", "status-help", "logs-help"],
)
def test_the_cli_loads_no_heavy_dependency_until_a_command_runs(code: str) -> None:
    assert heavy_loaded(code) == []


def test_the_heavy_check_sees_what_a_command_loads() -> None:
    """The same check fails once a command's own imports run (here serve's web app)."""
    loaded = heavy_loaded("import querywatch.cli\nfrom querywatch.web import create_app")
    assert {"fastapi", "querywatch.web.app"} <= set(loaded)


LAZY_PACKAGES = (
    "querywatch.advise",
    "querywatch.alerts",
    "querywatch.audit",
    "querywatch.loadtest",
    "querywatch.store",
    "querywatch.web",
)


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_packages_export_their_modules_objects(name: str) -> None:
    package = importlib.import_module(name)
    for exported in package.__all__:
        value = getattr(package, exported)
        home = importlib.import_module(value.__module__)
        assert getattr(home, exported) is value, f"{name}.{exported}"
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018
