"""The long-run baselines read from pg_stat_statements on first contact (querywatch.longrun).

One row per server and snapshot time, with per-fingerprint counters in querywatch.model units, so
``diagnose`` can compare a window that has no history before it with the long run.
"""

from __future__ import annotations

from types import MappingProxyType

from ..longrun import LongRun
from ..model import COUNTER_FIELDS, Counters
from .db import Connection

_COLS = ", ".join(COUNTER_FIELDS)

INSERT_LONG_RUN = """
INSERT INTO long_runs (server_id, taken_at, since, trusted, reason) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (server_id, taken_at) DO UPDATE SET since = excluded.since,
    trusted = excluded.trusted, reason = excluded.reason
"""
DELETE_STATEMENTS = "DELETE FROM long_run_statements WHERE server_id = ? AND taken_at = ?"
INSERT_STATEMENT = f"""
INSERT INTO long_run_statements (server_id, taken_at, fingerprint, {_COLS})
VALUES ({", ".join("?" * (3 + len(COUNTER_FIELDS)))})
"""
# the latest long run taken before ``at`` (with a slack), else the earliest one
SELECT_LONG_RUN = """
SELECT taken_at, since, trusted, reason FROM long_runs WHERE server_id = ?
ORDER BY CASE WHEN taken_at <= ? THEN 0 ELSE 1 END,
    CASE WHEN taken_at <= ? THEN -taken_at ELSE taken_at END
LIMIT 1
"""
SELECT_STATEMENTS = f"""
SELECT fingerprint, {_COLS} FROM long_run_statements WHERE server_id = ? AND taken_at = ?
"""


def save(conn: Connection, server_id: int, long_run: LongRun) -> None:
    """Keep ``long_run`` (within the caller's transaction)."""
    key = (server_id, long_run.taken_at)
    conn.execute(INSERT_LONG_RUN, (*key, long_run.since, int(long_run.trusted), long_run.reason))
    conn.execute(DELETE_STATEMENTS, key)
    conn.executemany(
        INSERT_STATEMENT, [(*key, fp, *c.values()) for fp, c in long_run.by_fingerprint.items()]
    )


def load(conn: Connection, server_id: int, at: float) -> LongRun | None:
    """The long run taken last at or before ``at``, else the first one after it."""
    row = conn.execute(SELECT_LONG_RUN, (server_id, at, at)).fetchone()
    if row is None:
        return None
    taken_at, since, trusted, reason = row
    rows = conn.execute(SELECT_STATEMENTS, (server_id, taken_at)).fetchall()
    counters = {r[0]: Counters.from_values([float(v) for v in r[1:]]) for r in rows}
    return LongRun(since, taken_at, MappingProxyType(counters), bool(trusted), reason)
