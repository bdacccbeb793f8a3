"""The advisor: one statement's plan, findings and verified index advice; the review of the most
resource-intensive statements of a server with its health checks.

``advise_statement`` is the entry point for the demo and other callers::

    advice = advise_statement(dsn, "SELECT id FROM users WHERE lower(email) = $1", db_ms_per_s=120)
    for fix in advice.indexes:
        print(fix.ddl, fix.verified, f"{fix.saving:.0%}")
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pglast import ast
from psycopg import sql

from ..errors import CapabilityError, InputError, SourceError
from ..fingerprint import shape
from ..model import Statement
from ..plans import statement_kind
from ..store.protocol import StoreProtocol
from . import findings, health, indexes, nodes, plans
from .records import Advice, HealthFinding, QueryStats, Review
from .session import Session

log = logging.getLogger("querywatch.advise")


@dataclass(frozen=True)
class Workload:
    """A statement and what it cost over a window (input of the review)."""

    fingerprint: str
    query: str
    queryids: tuple[int, ...]
    stats: QueryStats


def advise_statement(
    target: Any,
    statement: str | Statement,
    db_ms_per_s: float = 0.0,
    *,
    stats: QueryStats | None = None,
    timeout_ms: int = 2000,
    analyze: bool = False,
    params: Sequence[Any] | None = None,
) -> Advice:
    """Plan, findings and index advice for one statement.

    ``target`` is a DSN, a PostgresSource (the advisor opens its own connection from its DSN) or a
    psycopg connection. ``db_ms_per_s`` is the statement's database time per second (ranks the
    advice); ``stats`` its pg_stat_statements figures when known (rows per call, N+1 signature).
    """
    session = Session.of(target, timeout_ms=timeout_ms)
    try:
        return advise_with(session, _statement(statement), stats, db_ms_per_s, analyze, params)
    finally:
        if session is not target:
            session.close()


def _statement(statement: str | Statement) -> Statement:
    if isinstance(statement, Statement):
        return statement
    found = shape(statement)
    return Statement(found.fingerprint, statement)


def advise_with(
    session: Session,
    statement: Statement,
    stats: QueryStats | None = None,
    db_ms_per_s: float = 0.0,
    analyze: bool = False,
    params: Sequence[Any] | None = None,
) -> Advice:
    """:func:`advise_statement` over an open session."""
    base = Advice(statement.fingerprint, statement.query, statement.queryids, stats, db_ms_per_s)
    try:
        generic = plans.explain(session, statement.query)
        shown = (
            plans.explain(session, statement.query, analyze=True, params=params)
            if analyze
            else generic
        )
    except (InputError, SourceError) as exc:
        return replace(base, error=str(exc))
    found = tuple(findings.find(shown.document, stats))
    try:
        report = indexes.advise(session, statement.query, generic.document, stats, db_ms_per_s)
        fixes, notes = report.advice, report.notes
    except SourceError as exc:
        fixes, notes = (), (f"index advice failed: {exc}",)
    return replace(
        base,
        plan=shown.document,
        summary=nodes.summary(shown.document, generic=not shown.analyzed),
        findings=found,
        indexes=fixes,
        notes=(f"plan: {_method(shown.method)} in {shown.elapsed_ms:,.0f} ms", *notes),
    )


def _method(method: str) -> str:
    return {
        "generic_plan": "EXPLAIN (GENERIC_PLAN)",
        "prepare_generic": "PREPARE + EXPLAIN EXECUTE under plan_cache_mode=force_generic_plan",
        "analyze": "EXPLAIN ANALYZE (read-only transaction, rolled back)",
    }.get(method, method)


# -- where the statements come from ---------------------------------------------------------------
PGSS_SCHEMA = """
SELECT extnamespace::regnamespace::text AS schema FROM pg_extension
WHERE extname = 'pg_stat_statements'
"""
PGSS_TOP = """
SELECT queryid, query, calls, total_exec_time AS total_ms, rows, temp_blks_written
FROM {schema}.pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) {toplevel}
ORDER BY total_exec_time DESC
LIMIT %(limit)s
"""
PGSS_SINCE = """
SELECT extract(epoch FROM coalesce({reset}, pg_postmaster_start_time()))::float8 AS since,
       extract(epoch FROM now())::float8 AS now
"""

# Transactions of this database: the calls per transaction an N+1 finding needs. Counted since
# pg_stat_database's own reset, at least as long as pg_stat_statements' window: calls per
# transaction come out low rather than high when the two windows differ.
DATABASE_XACTS = """
SELECT (xact_commit + xact_rollback)::float8 AS xacts FROM pg_stat_database
WHERE datname = current_database()
"""


def server_workload(session: Session, limit: int) -> tuple[list[Workload], float, float]:
    """The top statements of this database by total time since pg_stat_statements started counting.

    Returns (workloads, window start, window end) as POSIX seconds.
    """
    with session.readonly() as cur:
        cur.execute(PGSS_SCHEMA)
        row = cur.fetchone()
        if row is None:
            raise CapabilityError(
                f"pg_stat_statements is not created in {session.database!r} "
                "(fix: CREATE EXTENSION pg_stat_statements)"
            )
        schema = sql.Identifier(row["schema"])
        toplevel = sql.SQL("AND toplevel" if session.major >= 14 else "")
        cur.execute(
            sql.SQL(PGSS_TOP).format(schema=schema, toplevel=toplevel), {"limit": limit * 4}
        )
        rows = cur.fetchall()
        reset = (
            sql.SQL("(SELECT stats_reset FROM {}.pg_stat_statements_info)").format(schema)
            if session.major >= 14
            else sql.SQL("NULL::timestamptz")
        )
        cur.execute(sql.SQL(PGSS_SINCE).format(reset=reset))
        clock = cur.fetchone()
        cur.execute(DATABASE_XACTS)
        found = cur.fetchone()
    assert clock is not None
    seconds = max(clock["now"] - clock["since"], 1.0)
    xacts = float(found["xacts"]) if found and found["xacts"] else None
    return _group(rows, seconds, limit, xacts), clock["since"], clock["now"]


def _group(
    rows: Sequence[dict[str, Any]], seconds: float, limit: int, xacts: float | None = None
) -> list[Workload]:
    by_fp: dict[str, list[dict[str, Any]]] = {}
    texts: dict[str, str] = {}
    for r in rows:
        found = shape(r["query"])
        if not _explainable(r["query"]):
            continue
        by_fp.setdefault(found.fingerprint, []).append(r)
        texts.setdefault(found.fingerprint, r["query"])
    loads = [
        Workload(
            fp,
            texts[fp],
            tuple(sorted(int(r["queryid"]) for r in group)),
            QueryStats(
                calls=sum(float(r["calls"]) for r in group),
                rows=sum(float(r["rows"]) for r in group),
                total_ms=sum(float(r["total_ms"]) for r in group),
                seconds=seconds,
                temp_blks_written=sum(float(r["temp_blks_written"]) for r in group),
                xacts=xacts,
            ),
        )
        for fp, group in by_fp.items()
    ]
    loads.sort(key=lambda w: -w.stats.total_ms)
    return loads[:limit]


_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _explainable(text: str) -> bool:
    """A SELECT/INSERT/UPDATE/DELETE/MERGE that reads at least one user table."""
    try:
        stmt = statement_kind(text)
    except InputError:
        return False
    return any(_user_relation(r) for r in stmt_ranges(stmt))


def stmt_ranges(node: object) -> list[ast.RangeVar]:
    """Every table reference in a parse tree, subqueries included."""
    if isinstance(node, ast.RangeVar):
        return [node]
    if isinstance(node, ast.Node):
        return [r for name in node for r in stmt_ranges(getattr(node, name))]
    if isinstance(node, tuple | list):
        return [r for item in node for r in stmt_ranges(item)]
    return []


def _user_relation(r: ast.RangeVar) -> bool:
    name = str(r.relname or "")
    return r.schemaname not in _SYSTEM_SCHEMAS and not name.startswith("pg_")


def store_workload(
    store: StoreProtocol, server_id: int, start: float, end: float, limit: int
) -> list[Workload]:
    """The top statements by DB time over [start, end) from querywatch's own history."""
    rows, covered = store.totals(server_id, start, end)
    seconds = covered or (end - start)
    xacts, spanned = store.xacts(server_id, start, end)
    if spanned < 0.95 * seconds:
        xacts = None  # part of the window is in rollups: no transactions to divide by
    loads = [
        Workload(
            r.fingerprint,
            r.query,
            r.queryids,
            QueryStats(
                r.counters.calls,
                r.counters.rows,
                r.counters.exec_ms,
                seconds,
                r.counters.temp_blks_written,
                xacts,
            ),
        )
        for r in rows
        if r.query and _explainable(r.query)
    ]
    loads.sort(key=lambda w: -w.stats.total_ms)
    return loads[:limit]


# -- the review -----------------------------------------------------------------------------------
def health_check(session: Session, today: dt.date | None = None) -> list[HealthFinding]:
    from . import catalog

    with session.readonly() as cur:
        existing = catalog.indexes(cur)
        tables = catalog.all_tables(cur)
    return health.check(existing, tables, session.version_num, today or dt.date.today())


def review(
    session: Session,
    workload: Sequence[Workload],
    *,
    server: str,
    window: tuple[float | None, float],
    stats_source: str,
    now: float | None = None,
) -> Review:
    """Advice for each statement (in the order given) and the server's health."""
    advice = tuple(
        advise_with(
            session, Statement(w.fingerprint, w.query, w.queryids), w.stats, w.stats.db_ms_per_s
        )
        for w in workload
    )
    return Review(
        server=server,
        version=session.version,
        generated_at=time.time() if now is None else now,
        window_start=window[0],
        window_end=window[1],
        stats_source=stats_source,
        hypopg=session.hypopg or indexes._hypopg_missing(session),
        statements=advice,
        health=tuple(health_check(session)),
    )


def remember(
    store: StoreProtocol, server_id: int, advice: Sequence[Advice], at: float | None = None
) -> int:
    """Store each advice's plan under its fingerprint and plan hash; returns how many."""
    count = 0
    for a in advice:
        if a.plan is not None and a.summary is not None:
            store.record_plan(
                server_id, a.fingerprint, a.summary.plan_hash, a.plan, a.summary.total_cost, at
            )
            count += 1
    return count
