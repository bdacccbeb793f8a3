"""Generic plans: a statement prepared (never executed) and explained for any parameter values.

The one way querywatch plans a statement without its values, shared by the advisor
(:mod:`querywatch.advise.plans`) and the query gate (:mod:`querywatch.gate.plans`):
``PREPARE`` under ``plan_cache_mode = force_generic_plan`` (PostgreSQL 12+), then ``EXPLAIN
EXECUTE`` with NULL arguments. The generic plan keeps ``$1`` symbolic (checked on 15: the filter
reads ``lower(email) = $1`` and no "One-Time Filter: false" appears), so NULLs change nothing.
A fresh name is prepared each time, so a hypothetical index created since is seen.

>>> explainable("VALUES (1)"), explainable("SET work_mem = '1GB'"), explainable("SELECT 1; SELECT 2")
(True, False, False)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from psycopg import sql

from .errors import InputError

EXPLAINABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
FORCE_GENERIC = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"
PARAMETER_COUNT = """
SELECT coalesce(cardinality(parameter_types), 0) AS n FROM pg_prepared_statements WHERE name = %s
"""
_names = itertools.count(1)


def statement_kind(text: str) -> ast.Node:
    """The one explainable statement in ``text``; InputError for anything else."""
    try:
        parsed = parse_sql(text)
    except ParseError as exc:
        raise InputError(f"explain: the statement does not parse: {exc}") from None
    if len(parsed) != 1:
        raise InputError(f"explain: expected one statement, got {len(parsed)}")
    stmt = parsed[0].stmt
    if not isinstance(stmt, EXPLAINABLE):
        raise InputError(
            f"explain: {type(stmt).__name__} is not a SELECT, INSERT, UPDATE, DELETE or MERGE"
        )
    return stmt


def explainable(text: str) -> bool:
    """True for one SELECT (VALUES, TABLE), INSERT, UPDATE, DELETE or MERGE, WITH or not."""
    try:
        statement_kind(text)
    except InputError:
        return False
    return True


def fresh_name(prefix: str) -> str:
    """A prepared statement name not used before in this process."""
    return f"{prefix}_{next(_names)}"


def prepare(cur: psycopg.Cursor[Any], name: str, text: str) -> None:
    """Plan ``text`` as the prepared statement ``name``; nothing is executed."""
    # The statement is the application's own (captured as it ran, or given by the user).
    cur.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(text))


def parameter_count(cur: psycopg.Cursor[Any], name: str) -> int:
    """How many parameters (``$n``) the prepared statement ``name`` takes."""
    cur.execute(PARAMETER_COUNT, (name,))
    row = cur.fetchone()
    return int(value(row, "n")) if row else 0


def explain_execute(name: str, options: str, args: Sequence[sql.Composable]) -> sql.Composed:
    """``EXPLAIN (options) EXECUTE name(args...)``; ``options`` is querywatch's own constant."""
    query = sql.SQL("EXPLAIN ({}) EXECUTE {}").format(sql.SQL(options), sql.Identifier(name))
    if args:
        query += sql.SQL("({})").format(sql.SQL(", ").join(args))
    return query


def deallocate(cur: psycopg.Cursor[Any], name: str) -> None:
    cur.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))


def value(row: Any, key: str) -> Any:
    """A one-column result's value, whether the cursor returns tuples or dicts."""
    return row[key] if isinstance(row, Mapping) else row[0]
