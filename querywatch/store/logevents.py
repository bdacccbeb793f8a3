"""Server-log events in the store: the SQL behind ``Store.record_log_batch`` and ``Store.log_*``.

A server log is a second source of statement statistics beside pg_stat_statements. Statement
durations become intervals and deltas of the same shape the pg_stat_statements collector writes
(one interval per bucket, calls and execution time per fingerprint), marked ``source = 'logs'``
on the interval and on its statements, so ``top``, ``diagnose``, the dashboard and incidents read
them unchanged. Rules that keep the two sources from counting a statement twice:

* a bucket that overlaps an interval of pg_stat_statements of the same server is not written
  (pg_stat_statements holds every call; a log only those it was asked to log);
* ``log_ranges`` keeps the spans of log already loaded per server: the loader skips durations
  inside them, so loading a file again adds nothing;
* a bucket already written (a later run, a log that goes on) is added to (upsert), and buckets
  behind the rollup marks are folded into the rollups at once, as ``maintain`` would have.

Log statements have no queryid: their statement rows carry ``dbid = 0, userid = 0`` (no real
database has oid 0) and a queryid derived from the fingerprint, never shown as a queryid.

Other events (lock waits, deadlocks, temp files, errors, checkpoints, autovacuum) are rows of
``log_events``, keyed by server, time, pid, kind and what tells two events of one instant apart,
so a repeat is ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import bucket_time
from .db import Connection
from .rollup import HOUR, MINUTE

LOGS = "logs"  # the value of intervals.source and statements.source for a server log

INSERT_TEXT = """
INSERT INTO texts (fingerprint, query, first_seen) VALUES (?, ?, ?)
ON CONFLICT (fingerprint) DO NOTHING
"""
INSERT_EVENT = """
INSERT INTO log_events (server_id, at, pid, kind, ident, fingerprint, value, database, user_name,
    detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, at, pid, kind, ident) DO NOTHING
"""
SELECT_PGSS_OVERLAP = """
SELECT count(*) FROM intervals WHERE server_id = ? AND source <> 'logs' AND "end" > ? AND start < ?
"""
SELECT_LOG_INTERVAL = """
SELECT id FROM intervals WHERE server_id = ? AND source = 'logs' AND start = ?
"""
EXTEND_LOG_INTERVAL = 'UPDATE intervals SET "end" = ? WHERE id = ? AND "end" < ?'
INSERT_LOG_INTERVAL = """
INSERT INTO intervals (server_id, start, "end", complete, dealloc, source)
VALUES (?, ?, ?, 1, 0, 'logs') RETURNING id
"""
INSERT_LOG_STATEMENT = """
INSERT INTO statements (server_id, dbid, userid, queryid, toplevel, fingerprint, own, first_seen,
    source)
VALUES (?, 0, 0, ?, 1, ?, ?, ?, 'logs')
ON CONFLICT (server_id, dbid, userid, queryid, toplevel) DO UPDATE SET fingerprint = excluded.fingerprint
RETURNING id
"""
UPSERT_DELTA = """
INSERT INTO deltas (server_id, interval_id, statement_id, calls, exec_us) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (server_id, interval_id, statement_id) DO UPDATE SET calls = deltas.calls + excluded.calls,
    exec_us = deltas.exec_us + excluded.exec_us
"""
UPSERT_ROLLUP = """
INSERT INTO rollups (resolution, server_id, bucket, statement_id, calls, exec_us)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, resolution, bucket, statement_id) DO UPDATE SET
    calls = rollups.calls + excluded.calls, exec_us = rollups.exec_us + excluded.exec_us
"""
UPSERT_ROLLUP_SECONDS = """
INSERT INTO rollup_buckets (resolution, server_id, bucket, seconds) VALUES (?, ?, ?, ?)
ON CONFLICT (server_id, resolution, bucket) DO UPDATE SET
    seconds = rollup_buckets.seconds + excluded.seconds
"""
GET_MARK = "SELECT value FROM meta WHERE key = ?"
SELECT_RANGES = "SELECT first_at, last_at FROM log_ranges WHERE server_id = ? ORDER BY first_at"
INSERT_RANGE = """
INSERT INTO log_ranges (server_id, first_at, last_at) VALUES (?, ?, ?)
ON CONFLICT (server_id, first_at) DO UPDATE SET last_at = excluded.last_at
"""
DELETE_RANGES = "DELETE FROM log_ranges WHERE server_id = ?"
SELECT_EVENTS = """
SELECT at, pid, kind, ident, fingerprint, value, database, user_name, detail FROM log_events
WHERE server_id = ? AND kind = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?
"""
COUNT_EVENTS = """
SELECT kind, count(*) FROM log_events WHERE server_id = ? AND at >= ? AND at < ? GROUP BY kind
"""


@dataclass(frozen=True)
class Bucket:
    """Statement durations of one bucket [start, end): per (fingerprint, own) calls and ms.

    ``end`` is the bucket's end, or the time of the log's last line for the last bucket of a
    log read up to now (a later load extends it)."""

    start: float
    end: float
    sums: Mapping[tuple[str, bool], tuple[int, float]]


@dataclass(frozen=True)
class EventRow:
    """One stored log event; ``ident`` tells apart two events of one kind, pid and instant."""

    at: float
    pid: int
    kind: str
    ident: str
    fingerprint: str | None
    value: float | None
    database: str | None
    user: str | None
    detail: str


@dataclass(frozen=True)
class Batch:
    """What a loader writes in one transaction."""

    buckets: Sequence[Bucket] = ()
    texts: Mapping[str, str] = field(default_factory=dict)
    events: Sequence[EventRow] = ()
    ranges: Sequence[tuple[float, float]] = ()  # spans of log read, to merge into log_ranges


@dataclass(frozen=True)
class Written:
    """What a batch changed: buckets written and skipped (pg_stat_statements has them), events."""

    buckets: int = 0
    skipped_buckets: int = 0
    events: int = 0


def log_queryid(fingerprint: str) -> int:
    """A stable signed 64-bit id for a log statement's row (never a pg_stat_statements id)."""
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def save(conn: Connection, server_id: int, batch: Batch, now: float) -> Written:
    """Write ``batch`` inside the caller's transaction."""
    conn.executemany(INSERT_TEXT, [(fp, q, now) for fp, q in batch.texts.items()])
    events = 0
    for e in batch.events:
        row = (server_id, e.at, e.pid, e.kind, e.ident, e.fingerprint, e.value)
        cur = conn.execute(INSERT_EVENT, (*row, e.database, e.user, e.detail))
        events += max(cur.rowcount, 0)
    written = skipped = 0
    marks = (_mark(conn, "rollup_minute"), _mark(conn, "rollup_hour"))
    for bucket in batch.buckets:
        if _overlaps_pgss(conn, server_id, bucket):
            skipped += 1
            continue
        _save_bucket(conn, server_id, bucket, marks)
        written += 1
    if written:  # buckets folded behind the marks: their DB time (store.bucket_time)
        starts = [b.start for b in batch.buckets]
        bucket_time.refresh_server(conn, server_id, (min(starts) // HOUR) * HOUR, max(starts) + 1)
    if batch.ranges:
        _merge_ranges(conn, server_id, batch.ranges)
    return Written(written, skipped, events)


def _overlaps_pgss(conn: Connection, server_id: int, bucket: Bucket) -> bool:
    row = conn.execute(SELECT_PGSS_OVERLAP, (server_id, bucket.start, bucket.end)).fetchone()
    return bool(row[0])


def _mark(conn: Connection, key: str) -> float:
    row = conn.execute(GET_MARK, (key,)).fetchone()
    return float(row[0]) if row else 0.0


def _save_bucket(
    conn: Connection, server_id: int, bucket: Bucket, marks: tuple[float, float]
) -> None:
    found = conn.execute(SELECT_LOG_INTERVAL, (server_id, bucket.start)).fetchone()
    created = found is None
    if found is None:
        found = conn.execute(INSERT_LOG_INTERVAL, (server_id, bucket.start, bucket.end)).fetchone()
    interval_id = int(found[0])
    if not created:  # the log went on: the bucket's interval covers it up to its new end
        conn.execute(EXTEND_LOG_INTERVAL, (bucket.end, interval_id, bucket.end))
    minute_mark, hour_mark = marks
    folded = [  # rollups that maintain() has already made past this bucket: add to them too
        (res, (bucket.start // res) * res)
        for res, mark in ((MINUTE, minute_mark), (HOUR, hour_mark))
        if (bucket.end <= mark if res == MINUTE else bucket.start < mark)
    ]
    if created:
        for res, start in folded:
            seconds = bucket.end - bucket.start
            conn.execute(UPSERT_ROLLUP_SECONDS, (res, server_id, start, seconds))
    for (fp, own), (calls, ms) in sorted(bucket.sums.items()):
        sid = conn.execute(
            INSERT_LOG_STATEMENT, (server_id, log_queryid(fp), fp, int(own), bucket.start)
        ).fetchone()[0]
        us = round(ms * 1000)
        conn.execute(UPSERT_DELTA, (server_id, interval_id, sid, calls, us))
        for res, start in folded:
            conn.execute(UPSERT_ROLLUP, (res, server_id, start, sid, calls, us))


def ranges(conn: Connection, server_id: int) -> list[tuple[float, float]]:
    """The spans of log already loaded for the server, oldest first."""
    return [(float(a), float(b)) for a, b in conn.execute(SELECT_RANGES, (server_id,))]


def _merge_ranges(conn: Connection, server_id: int, new: Sequence[tuple[float, float]]) -> None:
    merged = merge([*ranges(conn, server_id), *new])
    conn.execute(DELETE_RANGES, (server_id,))
    conn.executemany(INSERT_RANGE, [(server_id, a, b) for a, b in merged])


def merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching spans joined.

    >>> merge([(5, 6), (1, 2), (2, 3)])
    [(1, 3), (5, 6)]
    """
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def events(
    conn: Connection, server_id: int, kind: str, start: float, end: float, limit: int
) -> list[EventRow]:
    """Stored events of one kind in [start, end), oldest first."""
    rows = conn.execute(SELECT_EVENTS, (server_id, kind, start, end, limit)).fetchall()
    return [EventRow(*r) for r in rows]


def counts(conn: Connection, server_id: int, start: float, end: float) -> dict[str, int]:
    """Stored events per kind in [start, end)."""
    return {k: int(n) for k, n in conn.execute(COUNT_EVENTS, (server_id, start, end))}
