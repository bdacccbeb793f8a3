"""Plans without parameter values, read safely.

* PostgreSQL 16+: ``EXPLAIN (GENERIC_PLAN, FORMAT JSON) <statement>``: ``$1`` stays a parameter.
* PostgreSQL 13-15: ``PREPARE`` under ``plan_cache_mode = force_generic_plan`` and ``EXPLAIN
  EXECUTE`` with NULL arguments. The generic plan keeps ``$1`` symbolic (checked on 15: the filter
  reads ``lower(email) = $1`` and no "One-Time Filter: false" appears), so NULLs change nothing.
  A fresh name is prepared each time, so a hypothetical index created since is seen.

Always inside a read-only transaction that is rolled back, under ``statement_timeout``. EXPLAIN
ANALYZE runs only when asked, only for a plain SELECT, and only with the parameter values given.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from psycopg import sql

from ..errors import InputError
from . import catalog, nodes
from .session import Session

EXPLAINABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
GENERIC_PLAN = "EXPLAIN (GENERIC_PLAN, FORMAT JSON) "
FORCE_GENERIC = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"
PARAMETER_COUNT = """
SELECT coalesce(cardinality(parameter_types), 0) AS n FROM pg_prepared_statements WHERE name = %s
"""
_names = itertools.count(1)


@dataclass(frozen=True)
class Plan:
    """One EXPLAIN document (annotated with "Query Text" and "Relations") and how it was got."""

    document: Mapping[str, Any]
    method: str  # "generic_plan" | "prepare_generic" | "analyze"
    elapsed_ms: float

    @property
    def analyzed(self) -> bool:
        return self.method == "analyze"


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
    return stmt  # type: ignore[no-any-return]


def _plain_select(stmt: ast.Node) -> bool:
    """A SELECT without FOR UPDATE/SHARE and without data-modifying WITH clauses."""
    if not isinstance(stmt, ast.SelectStmt) or stmt.lockingClause:
        return False
    ctes = (stmt.withClause.ctes if stmt.withClause else None) or ()
    return all(isinstance(c.ctequery, ast.SelectStmt) for c in ctes)


def explain(
    session: Session,
    text: str,
    *,
    analyze: bool = False,
    params: Sequence[Any] | None = None,
    timeout_ms: int | None = None,
) -> Plan:
    """The statement's plan (generic unless ``analyze``), in a read-only rolled-back transaction."""
    stmt = statement_kind(text)
    if analyze and not _plain_select(stmt):
        raise InputError("explain: ANALYZE runs the statement, so it is allowed for SELECT only")
    started = time.perf_counter()
    with session.readonly(timeout_ms) as cur:
        doc, method = explain_in(cur, session, text, analyze=analyze, params=params)
        doc = annotate(cur, doc, text)
    return Plan(doc, method, (time.perf_counter() - started) * 1000)


def explain_in(
    cur: psycopg.Cursor[Any],
    session: Session,
    text: str,
    *,
    analyze: bool = False,
    params: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """EXPLAIN inside the caller's read-only transaction; returns (document, method)."""
    if session.generic_plan_option and not analyze:
        cur.execute(sql.SQL(GENERIC_PLAN) + sql.SQL(text))  # type: ignore[operator]
        return _document(cur), "generic_plan"
    name = f"querywatch_plan_{next(_names)}"
    cur.execute(FORCE_GENERIC)
    cur.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(text))
    try:
        return _explain_execute(cur, name, analyze, params)
    finally:
        if cur.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            session.leftovers.append(name)  # deallocated once the transaction is rolled back
        else:
            cur.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))


def _explain_execute(
    cur: psycopg.Cursor[Any], name: str, analyze: bool, params: Sequence[Any] | None
) -> tuple[dict[str, Any], str]:
    cur.execute(PARAMETER_COUNT, (name,))
    row = cur.fetchone()
    count = int(_value(row, "n")) if row else 0
    if analyze:
        if count and (params is None or len(params) != count):
            raise InputError(f"explain: ANALYZE needs the values of the {count} parameters")
        args: list[sql.Composable] = [sql.Literal(p) for p in params or ()]
    else:
        args = [sql.NULL] * count
    options = "FORMAT JSON, ANALYZE, BUFFERS" if analyze else "FORMAT JSON"
    query = sql.SQL("EXPLAIN ({}) EXECUTE {}").format(sql.SQL(options), sql.Identifier(name))
    if args:
        query += sql.SQL("({})").format(sql.SQL(", ").join(args))
    cur.execute(query)
    return _document(cur), "analyze" if analyze else "prepare_generic"


def _value(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else row[0]


def _document(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:
        raise InputError("explain: the server returned no plan")
    raw = _value(row, "QUERY PLAN")
    return dict(nodes.document(raw))


def annotate(cur: psycopg.Cursor[Any], doc: Mapping[str, Any], text: str) -> dict[str, Any]:
    """A copy of ``doc`` with "Query Text" and the "Relations" it reads (rows, pages, columns)."""
    names = sorted({str(n["Relation Name"]) for n in nodes.nodes(doc) if "Relation Name" in n})
    facts = catalog.tables(cur, names)
    relations = {
        f.key: {"rows": f.rows, "pages": f.pages, "columns": len(f.columns)} for f in facts
    }
    return {**doc, "Query Text": text, "Relations": relations}
