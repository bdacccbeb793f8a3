"""Rollups and retention: raw intervals -> 1-minute buckets -> 1-hour buckets.

An interval belongs to the bucket its start falls in. A bucket is rolled up once it is complete
(its end is in the past); ``meta`` remembers how far each resolution got, so each raw interval is
counted exactly once. Only complete intervals (no full gap)
add to a bucket's covered seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import bucket_time
from .db import Connection
from .schema import COUNTER_COLUMNS

MINUTE = 60
HOUR = 3600
SETTLE_S = 900  # longest interval assumed (15 min) before an hour is folded

_COLS = ", ".join(COUNTER_COLUMNS)
_SUMS_D = ", ".join(f"sum(d.{c})" for c in COUNTER_COLUMNS)
_SUMS_R = ", ".join(f"sum(r.{c})" for c in COUNTER_COLUMNS)
_UPSERT = ", ".join(f"{c} = rollups.{c} + excluded.{c}" for c in COUNTER_COLUMNS)

ROLL_RAW = f"""
INSERT INTO rollups (resolution, server_id, bucket, statement_id, {_COLS})
SELECT {MINUTE}, i.server_id, CAST(i.start / {MINUTE} AS INTEGER) * {MINUTE}, d.statement_id, {_SUMS_D}
FROM intervals i CROSS JOIN deltas d
WHERE i.end > ? AND i.end <= ?
    AND d.server_id = i.server_id AND d.interval_id = i.id
GROUP BY i.server_id, CAST(i.start / {MINUTE} AS INTEGER), d.statement_id
ON CONFLICT (server_id, resolution, bucket, statement_id) DO UPDATE SET {_UPSERT}
"""
ROLL_RAW_SECONDS = f"""
INSERT INTO rollup_buckets (resolution, server_id, bucket, seconds)
SELECT {MINUTE}, server_id, CAST(start / {MINUTE} AS INTEGER) * {MINUTE},
    sum(CASE WHEN complete = 1 THEN end - start ELSE 0 END)
FROM intervals WHERE end > ? AND end <= ?
GROUP BY server_id, CAST(start / {MINUTE} AS INTEGER)
ON CONFLICT (server_id, resolution, bucket)
DO UPDATE SET seconds = rollup_buckets.seconds + excluded.seconds
"""
ROLL_MINUTES = f"""
INSERT INTO rollups (resolution, server_id, bucket, statement_id, {_COLS})
SELECT {HOUR}, r.server_id, CAST(r.bucket / {HOUR} AS INTEGER) * {HOUR}, r.statement_id, {_SUMS_R}
FROM rollups r
WHERE r.server_id IN (SELECT id FROM servers) AND r.resolution = {MINUTE}
    AND r.bucket >= ? AND r.bucket < ?
GROUP BY r.server_id, CAST(r.bucket / {HOUR} AS INTEGER), r.statement_id
ON CONFLICT (server_id, resolution, bucket, statement_id) DO UPDATE SET {_UPSERT}
"""
ROLL_MINUTE_SECONDS = f"""
INSERT INTO rollup_buckets (resolution, server_id, bucket, seconds)
SELECT {HOUR}, server_id, CAST(bucket / {HOUR} AS INTEGER) * {HOUR}, sum(seconds)
FROM rollup_buckets
WHERE server_id IN (SELECT id FROM servers) AND resolution = {MINUTE}
    AND bucket >= ? AND bucket < ?
GROUP BY server_id, CAST(bucket / {HOUR} AS INTEGER)
ON CONFLICT (server_id, resolution, bucket)
DO UPDATE SET seconds = rollup_buckets.seconds + excluded.seconds
"""
GET_MARK = "SELECT value FROM meta WHERE key = ?"
SET_MARK = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
# Keys lead with server_id: a statement over every server names them, so the key is used.
_EVERY_SERVER = "server_id IN (SELECT id FROM servers)"
TOTALS = f"""
SELECT s.fingerprint, {_SUMS_R}
FROM rollups r JOIN statements s ON s.server_id = r.server_id AND s.id = r.statement_id
WHERE r.resolution = ? AND r.server_id = ? AND r.bucket >= ? AND r.bucket < ? AND s.toplevel = 1 AND s.own = 0
GROUP BY s.fingerprint
"""
TOTAL_SECONDS = """
SELECT coalesce(sum(seconds), 0) FROM rollup_buckets
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ?
"""


@dataclass(frozen=True)
class Retention:
    """How long each resolution is kept (seconds)."""

    raw_s: float = 48 * 3600
    minute_s: float = 14 * 86400
    hour_s: float = 90 * 86400


def mark(conn: Connection, key: str) -> float:
    """How far the resolution ``key`` (rollup_minute, rollup_hour) was rolled up."""
    row = conn.execute(GET_MARK, (key,)).fetchone()
    return float(row[0]) if row else 0.0


def roll_up(conn: Connection, now: float) -> None:
    """Fold every complete minute and hour not yet rolled up (inside the caller's transaction)."""
    minute_end = (now // MINUTE) * MINUTE
    done = mark(conn, "rollup_minute")
    if minute_end > done:
        conn.execute(ROLL_RAW, (done, minute_end))
        conn.execute(ROLL_RAW_SECONDS, (done, minute_end))
        bucket_time.refresh_rolled(conn, MINUTE, done, minute_end)
        conn.execute(SET_MARK, ("rollup_minute", repr(minute_end)))
    # An interval is in the minute bucket its start falls in, but is rolled up once it has ended:
    # fold an hour only when no interval that started in it can still arrive.
    hour_end = ((minute_end - SETTLE_S) // HOUR) * HOUR
    done_h = mark(conn, "rollup_hour")
    if hour_end > done_h:
        conn.execute(ROLL_MINUTES, (done_h, hour_end))
        conn.execute(ROLL_MINUTE_SECONDS, (done_h, hour_end))
        bucket_time.refresh(conn, HOUR, done_h, hour_end)
        conn.execute(SET_MARK, ("rollup_hour", repr(hour_end)))


def apply_retention(conn: Connection, now: float, retention: Retention, raw: bool = True) -> None:
    """Delete what is past retention; ``raw=False`` leaves raw intervals to the caller (the
    PostgreSQL store drops their daily partitions instead)."""
    if raw:
        raw_cut = min(now - retention.raw_s, mark(conn, "rollup_minute"))
        old = "SELECT server_id, id FROM intervals WHERE end <= ?"
        for table in ("deltas", "activity", "kcache"):
            conn.execute(
                f"DELETE FROM {table} WHERE (server_id, interval_id) IN ({old})", (raw_cut,)
            )
        conn.execute("DELETE FROM intervals WHERE end <= ?", (raw_cut,))
    minute_cut = min(now - retention.minute_s, mark(conn, "rollup_hour"))
    for table in ("rollups", "rollup_buckets"):
        conn.execute(
            f"DELETE FROM {table} WHERE {_EVERY_SERVER} AND resolution = ? AND bucket < ?",
            (MINUTE, minute_cut),
        )
        conn.execute(
            f"DELETE FROM {table} WHERE {_EVERY_SERVER} AND resolution = ? AND bucket < ?",
            (HOUR, now - retention.hour_s),
        )
    conn.execute("DELETE FROM gaps WHERE end < ?", (now - retention.hour_s,))


def totals(conn: Connection, server_id: int, start: float, end: float) -> tuple[list[Any], float]:
    """Per-fingerprint sums from the finest rollup that still covers ``start``."""
    oldest_minute = conn.execute(
        "SELECT min(bucket) FROM rollup_buckets WHERE resolution = ? AND server_id = ?",
        (MINUTE, server_id),
    ).fetchone()[0]
    resolution = MINUTE if oldest_minute is not None and start >= oldest_minute else HOUR
    params = (resolution, server_id, start, end)
    rows = conn.execute(TOTALS, params).fetchall()
    seconds = conn.execute(TOTAL_SECONDS, params).fetchone()[0]
    return rows, float(seconds)


def covers(conn: Connection, server_id: int, start: float, before: float) -> bool:
    """True when rollups hold data between ``start`` and ``before`` (older than raw intervals)."""
    row = conn.execute(
        "SELECT count(*) FROM rollup_buckets WHERE server_id = ? AND bucket < ? AND bucket >= ?",
        (server_id, before - MINUTE, start - HOUR),
    ).fetchone()
    return bool(row[0])


_ONE_SERVER_RAW = ROLL_RAW.replace(
    "WHERE i.end > ? AND i.end <= ?",
    "WHERE i.end > ? AND i.end <= ? AND i.server_id = ? AND i.start >= ?",
)
_ONE_SERVER_RAW_SECONDS = ROLL_RAW_SECONDS.replace(
    "WHERE end > ? AND end <= ?",
    "WHERE end > ? AND end <= ? AND server_id = ? AND start >= ?",
)
_ONE_SERVER_MINUTES = ROLL_MINUTES.replace(
    "AND r.bucket >= ? AND r.bucket < ?", "AND r.bucket >= ? AND r.bucket < ? AND r.server_id = ?"
)
_ONE_SERVER_MINUTE_SECONDS = ROLL_MINUTE_SECONDS.replace(
    "AND bucket >= ? AND bucket < ?", "AND bucket >= ? AND bucket < ? AND server_id = ?"
)
_FORGET = "DELETE FROM {table} WHERE server_id = ? AND resolution = ? AND bucket >= ?"


def roll_server(
    conn: Connection,
    server_id: int,
    src_minute: float,
    dst_minute: float,
    src_hour: float,
    dst_hour: float,
) -> None:
    """Make one copied server's rollups agree with the target store's marks (``store copy``):
    roll what the target's marks passed, forget what they have not reached yet."""
    since = 0.0
    if dst_minute < src_minute:  # the target rolls these intervals up itself later
        since = (dst_minute // MINUTE) * MINUTE - SETTLE_S
        for table in ("rollups", "rollup_buckets"):
            conn.execute(_FORGET.format(table=table), (server_id, MINUTE, since))
        src_minute = since
    conn.execute(_ONE_SERVER_RAW, (src_minute, dst_minute, server_id, since))
    conn.execute(_ONE_SERVER_RAW_SECONDS, (src_minute, dst_minute, server_id, since))
    if dst_hour < src_hour:
        for table in ("rollups", "rollup_buckets"):
            conn.execute(_FORGET.format(table=table), (server_id, HOUR, dst_hour))
        src_hour = dst_hour
    conn.execute(_ONE_SERVER_MINUTES, (src_hour, dst_hour, server_id))
    conn.execute(_ONE_SERVER_MINUTE_SECONDS, (src_hour, dst_hour, server_id))
    bucket_time.refresh_server(conn, server_id)
