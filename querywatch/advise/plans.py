"""Plans without parameter values, read safely.

* PostgreSQL 16+: ``EXPLAIN (GENERIC_PLAN, FORMAT JSON) <statement>``: ``$1`` stays a parameter.
* PostgreSQL 13-15: the shared generic plan of :mod:`querywatch.plans` (``PREPARE`` under
  ``plan_cache_mode = force_generic_plan`` and ``EXPLAIN EXECUTE`` with NULL arguments).

Always inside a read-only transaction that is rolled back, under ``statement_timeout``. EXPLAIN
ANALYZE runs only when asked, only for a plain SELECT, and only with the parameter values given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast
from psycopg import sql

from .. import plans as generic
from ..errors import InputError
from ..plans import statement_kind
from . import catalog, nodes
from .session import Session

GENERIC_PLAN = "EXPLAIN (GENERIC_PLAN, FORMAT JSON) "


@dataclass(frozen=True)
class Plan:
    """One EXPLAIN document (annotated with "Query Text" and "Relations") and how it was got."""

    document: Mapping[str, Any]
    method: str  # "generic_plan" | "prepare_generic" | "analyze"
    elapsed_ms: float

    @property
    def analyzed(self) -> bool:
        return self.method == "analyze"


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
        cur.execute(sql.SQL(GENERIC_PLAN) + sql.SQL(text))
        return _document(cur), "generic_plan"
    name = generic.fresh_name("querywatch_plan")
    cur.execute(generic.FORCE_GENERIC)
    generic.prepare(cur, name, text)
    try:
        return _explain_execute(cur, name, analyze, params)
    finally:
        if cur.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            session.leftovers.append(name)  # deallocated once the transaction is rolled back
        else:
            generic.deallocate(cur, name)


def _explain_execute(
    cur: psycopg.Cursor[Any], name: str, analyze: bool, params: Sequence[Any] | None
) -> tuple[dict[str, Any], str]:
    count = generic.parameter_count(cur, name)
    if analyze:
        if count and (params is None or len(params) != count):
            raise InputError(f"explain: ANALYZE needs the values of the {count} parameters")
        args: list[sql.Composable] = [sql.Literal(p) for p in params or ()]
    else:
        args = [sql.NULL] * count
    options = "FORMAT JSON, ANALYZE, BUFFERS" if analyze else "FORMAT JSON"
    cur.execute(generic.explain_execute(name, options, args))
    return _document(cur), "analyze" if analyze else "prepare_generic"


def _document(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:
        raise InputError("explain: the server returned no plan")
    raw = generic.value(row, "QUERY PLAN")
    return dict(nodes.document(raw))


def annotate(cur: psycopg.Cursor[Any], doc: Mapping[str, Any], text: str) -> dict[str, Any]:
    """A copy of ``doc`` with "Query Text" and the "Relations" it reads (rows, pages, columns)."""
    names = sorted({str(n["Relation Name"]) for n in nodes.nodes(doc) if "Relation Name" in n})
    facts = catalog.tables(cur, names)
    relations = {
        f.key: {"rows": f.rows, "pages": f.pages, "columns": len(f.columns)} for f in facts
    }
    return {**doc, "Query Text": text, "Relations": relations}
