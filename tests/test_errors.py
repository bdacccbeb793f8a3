"""The one error tree: every error is drawn in errors.py's docstring, and library code raises
querywatch errors, never a bare ValueError or TypeError, to its users."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import querywatch
from querywatch import errors
from querywatch.advise import nodes
from querywatch.advise.session import Session

PACKAGE = Path(querywatch.__file__).parent
BARE = frozenset({"ValueError", "TypeError", "RuntimeError", "Exception"})


def test_every_error_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.QuerywatchError)
        assert f"── {cls.__name__} " in doc or cls is errors.QuerywatchError, cls.__name__


def bare_raises(path: Path) -> list[str]:
    """``line: Name`` for each ``raise`` of a bare builtin error in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BARE:
                found.append((node.lineno, exc.id))
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_no_bare_builtin_errors_are_raised() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in bare_raises(path)
    ]
    assert not found, "raise a querywatch error instead:\n" + "\n".join(found)


def test_bare_raises_are_seen(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from querywatch.errors import InputError\n"
        "def f(x):\n"
        "    if x:\n"
        "        raise ValueError('no')\n"
        "    if x is None:\n"
        "        raise InputError('x: missing')\n"
        "    raise TypeError\n"
    )
    assert bare_raises(probe) == ["4: ValueError", "7: TypeError"]


def test_a_plan_that_is_not_explain_json_is_an_input_error() -> None:
    with pytest.raises(errors.InputError, match="plan: not an EXPLAIN"):
        nodes.document([])
    with pytest.raises(errors.InputError, match="plan: not an EXPLAIN"):
        nodes.document(["Seq Scan"])


def test_the_advisor_says_what_it_cannot_connect_through() -> None:
    with pytest.raises(errors.InputError, match="advise: cannot connect through 'int'"):
        Session.of(42)


def test_demo_errors_are_querywatch_errors() -> None:
    assert issubclass(errors.DemoError, errors.QuerywatchError)
    assert errors.DemoError("demo: no alert arrived").exit_code == 1
