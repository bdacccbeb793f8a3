"""The generic plan of a captured statement: its cost and the tables it scans sequentially.

The statement is prepared (never executed) on a separate connection and explained as the shared
generic plan of :mod:`querywatch.plans`, so the plan is the one valid for any parameter values
(PostgreSQL 12+; ``EXPLAIN (GENERIC_PLAN)`` needs 16). A sequentially scanned table's size is
counted up to the budget's ``large_rows`` (cheap, exact below it, right for unanalyzed tables).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import plans as generic
from .baseline import Plan, SeqScan

log = logging.getLogger("querywatch.gate")

APPLICATION_NAME = "querywatch-gate"
SESSION = (
    "SET statement_timeout = '5s'",
    "SET lock_timeout = '1s'",
    "SET plan_cache_mode = force_generic_plan",
)


class Explainer:
    """One connection per conninfo, opened on first use; ``close()`` at the end of the session."""

    def __init__(self, large_rows: int) -> None:
        self.large_rows = large_rows
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def plan(self, conninfo: str, query: str) -> Plan | None:
        """The generic plan's facts, or None (logged) when it cannot be had."""
        if not generic.explainable(query):
            return None
        try:
            conn = self._connection(conninfo)
            doc = _explain(conn, query)
            return Plan(float(doc["Total Cost"]), tuple(self._seq_scans(conn, doc)))
        except psycopg.Error as exc:
            log.info("gate: no plan for %.60s: %s", " ".join(query.split()), exc)
            return None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _connection(self, conninfo: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(conninfo)
        if conn is None or conn.closed or conn.broken:
            info = make_conninfo(conninfo, application_name=APPLICATION_NAME)
            conn = self._conns[conninfo] = psycopg.connect(info, autocommit=True)
            for statement in SESSION:
                conn.execute(statement)
        return conn

    def _seq_scans(
        self, conn: psycopg.Connection[Any], doc: Mapping[str, Any]
    ) -> Iterator[SeqScan]:
        seen = set()
        for node in _nodes(doc):
            if node.get("Node Type") != "Seq Scan" or "Relation Name" not in node:
                continue
            schema, table = node.get("Schema", "public"), node["Relation Name"]
            if (schema, table) not in seen:
                seen.add((schema, table))
                yield SeqScan(f"{schema}.{table}", self._rows(conn, schema, table))

    def _rows(self, conn: psycopg.Connection[Any], schema: str, table: str) -> int:
        query = sql.SQL("SELECT count(*) FROM (SELECT FROM {}.{} LIMIT {}) s").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Literal(self.large_rows)
        )
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def _explain(conn: psycopg.Connection[Any], query: str) -> Mapping[str, Any]:
    name = generic.fresh_name("qw_gate")
    with conn.cursor() as cur:
        generic.prepare(cur, name, query)
        try:
            count = generic.parameter_count(cur, name)
            cur.execute(generic.explain_execute(name, "FORMAT JSON, VERBOSE", [sql.NULL] * count))
            result = cur.fetchone()
        finally:
            generic.deallocate(cur, name)
    doc = result[0] if result else [{}]
    plan: Mapping[str, Any] = doc[0]["Plan"]
    return plan


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
