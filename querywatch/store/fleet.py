"""The fleet's figures for every server at once: the SQL behind ``Store.fleet_servers``,
``Store.open_incidents`` and ``Store.fleet_db_time`` (querywatch.status.facts, the /fleet page).

Each is one set-based statement over all servers (a few for DB time), never a statement per
server or per bucket, so the fleet page costs a handful of queries whatever the fleet's size.
DB time per bucket comes from each rollup bucket's total (querywatch.store.bucket_time: a row per
server and bucket, not per statement), then the raw intervals not rolled up yet, read as
``Store.db_time`` reads them (1-hour rollups from a step of an hour, 1-minute rollups up to the
minute mark, raw intervals ending after it; top-level statements, querywatch's own left out).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import StoreBase
from .db import Connection, Cursor
from .rollup import HOUR, MINUTE, mark

# Per server, a count on its key and a max read at the index's end (a join and GROUP BY would
# walk every raw interval twice: 5x the time at 48 h of 10 s intervals).
FLEET_SERVERS = """
SELECT s.id, s.name,
    (SELECT count(*) FROM intervals i WHERE i.server_id = s.id),
    (SELECT max(i.end) FROM intervals i WHERE i.server_id = s.id)
FROM servers s ORDER BY s.id
"""
OPEN_INCIDENTS = """
SELECT server_id, id, state, key, opened_at, fired_at, diagnosis FROM incidents
WHERE server_id IN (SELECT id FROM servers) AND state IN ('pending', 'firing')
ORDER BY opened_at DESC, id
"""
BUCKET_DB_TIME = """
SELECT server_id, CAST(bucket / ? AS INTEGER) AS b, sum(exec_us), sum(seconds)
FROM rollup_buckets
WHERE server_id IN (SELECT id FROM servers) AND resolution = ? AND bucket >= ? AND bucket < ?
GROUP BY server_id, b
"""
# Raw intervals: every statement's DB time per interval, then that of the statements left out
# (nested, querywatch's own: few, read by key) to subtract; grouped in the index's order. CROSS
# JOIN: SQLite reads the few raw intervals first, then their deltas by key.
_RAW = """
SELECT i.server_id, i.start, sum(d.exec_us)
FROM intervals i CROSS JOIN deltas d
WHERE i.server_id IN (SELECT id FROM servers) AND i.end > ? AND i.start >= ? AND i.start < ?
    AND d.server_id = i.server_id AND d.interval_id = i.id {only}
GROUP BY i.server_id, i.end, i.id, i.start
"""
RAW_DB_TIME = _RAW.format(only="")
RAW_LEFT_OUT = _RAW.format(
    only="AND d.statement_id IN (SELECT id FROM statements WHERE toplevel = 0 OR own = 1)"
)
RAW_SECONDS = """
SELECT server_id, CAST(start / ? AS INTEGER) AS b,
    sum(CASE WHEN complete = 1 THEN end - start ELSE 0 END)
FROM intervals
WHERE server_id IN (SELECT id FROM servers) AND end > ? AND start >= ? AND start < ?
GROUP BY server_id, b
"""

# server id -> bucket start -> [DB time in ms, seconds of complete data]
DbTime = dict[int, dict[float, list[float]]]


@dataclass(frozen=True)
class FleetServer:
    """A server with the raw intervals the store holds of it."""

    id: int
    name: str
    intervals: int
    last_end: float | None  # the end of its latest interval


@dataclass(frozen=True)
class OpenIncident:
    """An incident still pending or firing, with its diagnosis' one-line summary."""

    server_id: int
    id: str
    state: str
    key: str
    opened_at: float
    fired_at: float | None
    summary: str


class FleetMixin(StoreBase):
    """The Store's fleet reads (the SQL above)."""

    def fleet_servers(self) -> list[FleetServer]:
        """Every server with its interval count and latest interval end, by id."""
        with self._errors():
            rows = self._conn.execute(FLEET_SERVERS).fetchall()
        return [FleetServer(int(r[0]), r[1], int(r[2]), _float(r[3])) for r in rows]

    def open_incidents(self) -> list[OpenIncident]:
        """Every server's pending and firing incidents, newest first."""
        with self._errors():
            rows = self._conn.execute(OPEN_INCIDENTS).fetchall()
        return [_incident(r) for r in rows]

    def fleet_db_time(self, start: float, end: float, step: float) -> DbTime:
        """Every server's DB time (ms) and seconds of complete data per ``step``-long bucket of
        [start, end) (``start`` a multiple of ``step``; a bucket without data is absent)."""
        with self._errors():
            return db_time(self._conn, start, end, step)


def db_time(conn: Connection, start: float, end: float, step: float) -> DbTime:
    """``FleetMixin.fleet_db_time`` on an open connection."""
    minute_mark, hour_mark = mark(conn, "rollup_minute"), mark(conn, "rollup_hour")
    parts: list[tuple[int, float, float]] = []
    low = start
    if step >= HOUR:
        parts.append((HOUR, start, min(end, hour_mark)))
        low = max(start, hour_mark)
    parts.append((MINUTE, low, min(end, minute_mark)))
    out: DbTime = {}
    for resolution, lo, hi in parts:
        if hi > lo:
            rows = conn.execute(BUCKET_DB_TIME, (step, resolution, lo, hi))
            _add(out, rows, step, 0, 1000.0)
    raw = (minute_mark, start, end)
    _add(out, _per_bucket(conn.execute(RAW_DB_TIME, raw), step, 1), step, 0, 1000.0)
    _add(out, _per_bucket(conn.execute(RAW_LEFT_OUT, raw), step, -1), step, 0, 1000.0)
    _add(out, conn.execute(RAW_SECONDS, (step, *raw)), step, 1, 1.0)
    return out


def _per_bucket(rows: Cursor, step: float, sign: int) -> list[tuple[int, int, float]]:
    """(server, start, value) rows as (server, bucket number, value times ``sign``)."""
    return [(server, int(start // step), sign * float(v or 0)) for server, start, v in rows]


def _add(out: DbTime, rows: Iterable[Sequence[Any]], step: float, at: int, scale: float) -> None:
    """Add each row's figures (server, bucket number, value[, seconds]) into ``out``: the value
    divided by ``scale`` at position ``at``, the seconds (when the row has them) at 1."""
    for row in rows:
        sums = out.setdefault(int(row[0]), {}).setdefault(float(row[1]) * step, [0.0, 0.0])
        sums[at] += float(row[2] or 0) / scale
        if len(row) > 3:
            sums[1] += float(row[3] or 0)


def _incident(row: Sequence[Any]) -> OpenIncident:
    server_id, incident_id, state, key, opened_at, fired_at, diagnosis = row
    doc = json.loads(diagnosis) if diagnosis else {}
    summary = str(doc.get("summary", "")) if isinstance(doc, dict) else ""
    return OpenIncident(
        int(server_id), incident_id, state, key, float(opened_at), _float(fired_at), summary
    )


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
