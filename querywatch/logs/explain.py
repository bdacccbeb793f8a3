"""EXPLAIN of a logged execution with the values it ran with (``logs --keep-params --dsn``).

The statement comes from the server's own log: with its bind parameters (extended protocol) it is
prepared and explained with those values (``EXPLAIN (FORMAT JSON) EXECUTE name('v1', ...)``); a
simple-protocol statement already holds its values and is explained as logged. Only one SELECT,
INSERT, UPDATE, DELETE or MERGE is explained, never ANALYZEd (nothing is executed), in a read-only
transaction that is rolled back, under querywatch's statement and lock timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from .. import plans
from ..errors import ConnectError, InputError, QuerywatchError

log = logging.getLogger("querywatch.logs")

OPTIONS = "FORMAT JSON"
SESSION = "-c statement_timeout={ms} -c lock_timeout=1000 -c default_transaction_read_only=on"


def param_value(logged: str) -> str | None:
    """A parameter as the log quotes it -> its value (NULL -> None).

    >>> param_value("'O''Brien'"), param_value("NULL"), param_value("42")
    ("O'Brien", None, '42')
    """
    if logged == "NULL":
        return None
    if len(logged) >= 2 and logged[0] == logged[-1] == "'":
        return logged[1:-1].replace("''", "'")
    return logged


class Explainer:
    """One connection to ``dsn`` for explaining several logged statements."""

    def __init__(self, dsn: str, timeout_ms: int = 2000) -> None:
        try:
            self.conn = psycopg.connect(
                dsn,
                application_name="querywatch",
                options=SESSION.format(ms=int(timeout_ms)),
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConnectError(f"logs --dsn: cannot connect: {first}") from None

    def explain(self, text: str, params: Sequence[str] | None) -> dict[str, Any] | None:
        """The plan document, or None when the statement cannot be explained (said in the log)."""
        try:
            plans.statement_kind(text)
        except InputError:
            return None
        try:
            with self.conn.cursor() as cur:
                if params:
                    doc = self._with_params(cur, text, params)
                else:
                    cur.execute(sql.SQL("EXPLAIN (" + OPTIONS + ") ") + sql.SQL(text))
                    doc = _document(cur)
            return doc
        except (psycopg.Error, QuerywatchError) as exc:
            log.info("cannot explain %r: %s", text[:80], str(exc).strip().splitlines()[:1])
            return None
        finally:
            self.conn.rollback()

    def _with_params(
        self, cur: psycopg.Cursor[Any], text: str, params: Sequence[str]
    ) -> dict[str, Any] | None:
        name = plans.fresh_name("qw_logs")
        plans.prepare(cur, name, text)
        args = [sql.Literal(param_value(p)) for p in params]
        cur.execute(plans.explain_execute(name, OPTIONS, args))
        return _document(cur)

    def close(self) -> None:
        self.conn.close()


def _document(cur: psycopg.Cursor[Any]) -> dict[str, Any] | None:
    row = cur.fetchone()
    if row is None:
        return None
    found = row[0]
    if isinstance(found, list) and found and isinstance(found[0], dict):
        return dict(found[0])
    return None
