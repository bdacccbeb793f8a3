"""Lean reads for diagnosing long windows: calls and execution ms per fingerprint and bucket.

A day of 1,000 fingerprints is 8.6 million raw rows; diagnosis (querywatch.anywindow) reads it
from the coarsest source that covers each part: hour rollups (``step`` >= 1 hour, up to the hour
mark), minute rollups (up to the minute mark), then the raw intervals not rolled up yet. Rows
stay (calls, exec ms) pairs: no Counters record per row, which is what makes a day cheap.
Top-level statements only, querywatch's own left out (as everywhere in diagnosis).
"""

from __future__ import annotations

from collections.abc import Sequence

from .db import Connection, Cursor
from .rollup import HOUR, MINUTE

Sums = dict[float, dict[str, list[float]]]  # bucket -> fingerprint -> [calls, exec ms]

GET_MARK = "SELECT value FROM meta WHERE key = ?"
ROLLUP_SUMS = """
SELECT CAST(r.bucket / ? AS INTEGER) AS b, s.fingerprint, sum(r.calls), sum(r.exec_us)
FROM rollups r JOIN statements s ON s.server_id = r.server_id AND s.id = r.statement_id
WHERE r.resolution = ? AND r.server_id = ? AND r.bucket >= ? AND r.bucket < ?
    AND s.toplevel = 1 AND s.own = 0 {only}
GROUP BY b, s.fingerprint
"""
RAW_SUMS = """
SELECT CAST(i.start / ? AS INTEGER) AS b, s.fingerprint, sum(d.calls), sum(d.exec_us)
FROM intervals i CROSS JOIN deltas d
    JOIN statements s ON s.server_id = d.server_id AND s.id = d.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.start >= ? AND i.start < ?
    AND d.server_id = i.server_id AND d.interval_id = i.id
    AND s.toplevel = 1 AND s.own = 0 {only}
GROUP BY b, s.fingerprint
"""
ROLLUP_SECONDS = """
SELECT CAST(bucket / ? AS INTEGER) AS b, sum(seconds) FROM rollup_buckets
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ? GROUP BY b
"""
RAW_SECONDS = """
SELECT CAST(start / ? AS INTEGER) AS b, sum(CASE WHEN complete = 1 THEN end - start ELSE 0 END)
FROM intervals WHERE server_id = ? AND end > ? AND start >= ? AND start < ? GROUP BY b
"""


def sums(
    conn: Connection,
    server_id: int,
    start: float,
    end: float,
    step: float,
    fingerprints: Sequence[str] | None = None,
    group: float | None = None,
) -> tuple[Sums, dict[float, float]]:
    """Calls and exec ms per ``group``-long bucket (``step`` by default) of [start, end) and
    fingerprint (only ``fingerprints`` when given), and the seconds of complete data per bucket,
    summed by SQLite. ``step`` picks the source: hour rollups from an hour; ``start`` and ``end``
    should be multiples of the source's resolution (a minute; an hour for hour steps)."""
    size = group or step
    minute_mark = _mark(conn, "rollup_minute")
    hour_mark = _mark(conn, "rollup_hour")
    only, extra = "", tuple(fingerprints or ())
    if fingerprints is not None:
        only = f"AND s.fingerprint IN ({', '.join('?' * len(extra)) or 'NULL'})"
    out: Sums = {}
    seconds: dict[float, float] = {}
    low = start
    parts: list[tuple[int, float, float]] = []
    if step >= HOUR:
        parts.append((HOUR, start, min(end, hour_mark)))
        low = max(start, hour_mark)
    parts.append((MINUTE, low, min(end, minute_mark)))
    for resolution, lo, hi in parts:
        if hi <= lo:
            continue
        params = (size, resolution, server_id, lo, hi)
        _add(out, conn.execute(ROLLUP_SUMS.format(only=only), (*params, *extra)), size)
        _add_seconds(seconds, conn.execute(ROLLUP_SECONDS, params), size)
    raw = (size, server_id, minute_mark, start, end)
    _add(out, conn.execute(RAW_SUMS.format(only=only), (*raw, *extra)), size)
    _add_seconds(seconds, conn.execute(RAW_SECONDS, raw), size)
    return out, seconds


def _mark(conn: Connection, key: str) -> float:
    row = conn.execute(GET_MARK, (key,)).fetchone()
    return float(row[0]) if row else 0.0


def _add(out: Sums, rows: Cursor, step: float) -> None:
    for b, fp, calls, exec_us in rows:
        by_fp = out.setdefault(b * step, {})
        known = by_fp.get(fp)
        if known is None:
            by_fp[fp] = [float(calls or 0), (exec_us or 0) / 1000.0]
        else:
            known[0] += calls or 0
            known[1] += (exec_us or 0) / 1000.0


def _add_seconds(seconds: dict[float, float], rows: Cursor, step: float) -> None:
    for b, secs in rows:
        bucket = b * step
        seconds[bucket] = seconds.get(bucket, 0.0) + float(secs or 0)
