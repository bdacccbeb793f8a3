"""Time series for the web dashboard and /metrics: the SQL and the pure helpers behind
``Store.fingerprint_totals``, ``Store.series`` and ``Store.seconds_covered`` (no sqlite3 here).

A window is read from the coarsest source its step allows: 1-hour rollups (step >= 1 h), then
1-minute rollups (step >= 1 min) up to the minute rollup mark, then raw intervals not rolled up
yet. Each raw interval is counted once: rollups hold exactly the intervals ending at or before
their mark. Calls, execution time and rows are summed (what the charts show), and totals also sum
the blocks read (what the io ranking needs), over top-level statements that are not querywatch's
own (as rankings and diagnosis do).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import Counters
from . import rollup
from .base import StoreBase
from .db import Connection

# A window is read from the coarsest source its step allows: 1-hour rollups (step >= 1 h), then
# 1-minute rollups (step >= 1 min) up to the minute rollup mark, then raw intervals not rolled up
# yet. Each raw interval is counted once: rollups hold exactly the intervals ending at or before
# their mark. Calls, execution time and rows are summed (what the charts show), and totals also
# sum the blocks read, over top-level statements that are not querywatch's own.

WEB_STATEMENTS = (
    "SELECT id, fingerprint FROM statements WHERE server_id = ? AND toplevel = 1 AND own = 0"
)
WEB_MARK = "SELECT value FROM meta WHERE key = ?"
WEB_ROLLUP_TOTALS = """
SELECT statement_id, sum(calls), sum(exec_us), sum(rows),
    sum(shared_blks_read), sum(local_blks_read), sum(temp_blks_read)
FROM rollups
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ? GROUP BY statement_id
"""
WEB_RAW_TOTALS = """
SELECT d.statement_id, sum(d.calls), sum(d.exec_us), sum(d.rows),
    sum(d.shared_blks_read), sum(d.local_blks_read), sum(d.temp_blks_read)
FROM intervals i CROSS JOIN deltas d
WHERE i.server_id = ? AND i.end > ? AND i.start >= ? AND i.start < ?
    AND d.server_id = i.server_id AND d.interval_id = i.id
GROUP BY d.statement_id
"""
# Per-bucket sums over every top-level statement; rows come in bucket order, so they stream.
WEB_ROLLUP_BUCKETS = """
SELECT bucket, sum(calls), sum(exec_us), sum(rows) FROM rollups
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ?
    AND statement_id NOT IN (SELECT id FROM statements WHERE toplevel = 0 OR own = 1)
GROUP BY bucket
"""
WEB_RAW_BUCKETS = """
SELECT i.start, sum(d.calls), sum(d.exec_us), sum(d.rows)
FROM intervals i CROSS JOIN deltas d
WHERE i.server_id = ? AND i.end > ? AND i.start >= ? AND i.start < ?
    AND d.server_id = i.server_id AND d.interval_id = i.id
    AND d.statement_id NOT IN (SELECT id FROM statements WHERE toplevel = 0 OR own = 1)
GROUP BY d.interval_id, i.start
"""
# The rows of a few chosen statements; {picked} is one "?" mark per statement id bound.
WEB_ROLLUP_PICKED = """
SELECT bucket, statement_id, calls, exec_us, rows FROM rollups
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ?
    AND statement_id IN ({picked})
"""
WEB_RAW_PICKED = """
SELECT i.start, d.statement_id, d.calls, d.exec_us, d.rows
FROM intervals i CROSS JOIN deltas d
WHERE i.server_id = ? AND i.end > ? AND i.start >= ? AND i.start < ?
    AND d.server_id = i.server_id AND d.interval_id = i.id
    AND d.statement_id IN ({picked})
"""
WEB_ROLLUP_SECONDS = """
SELECT CAST(bucket / ? AS INTEGER) * ? AS b, sum(seconds) FROM rollup_buckets
WHERE resolution = ? AND server_id = ? AND bucket >= ? AND bucket < ? GROUP BY b
"""
WEB_RAW_SECONDS = """
SELECT CAST(start / ? AS INTEGER) * ? AS b, sum(CASE WHEN complete = 1 THEN end - start ELSE 0 END)
FROM intervals WHERE server_id = ? AND end > ? AND start >= ? AND start < ? GROUP BY b
"""


@dataclass(frozen=True)
class Series:
    """Per-bucket sums: ``points[bucket][fingerprint]`` ("" = all other statements), and the
    seconds of complete data each bucket holds (a bucket without data is absent)."""

    step: float
    points: Mapping[float, Mapping[str, Counters]]
    seconds: Mapping[float, float]


@dataclass(frozen=True)
class _Segment:
    resolution: int | None  # None: raw intervals
    start: float
    end: float
    after: float  # raw only: intervals ending after this (not rolled up yet)
    marks: tuple[float, ...] = ()  # rollup marks its rows depend on (the cache key)


class RowCache:
    """Rows of queries over rollup buckets, keyed by the query, its parameters and the rollup
    marks: rolled-up buckets only change when a mark moves, so an entry never goes stale. It saves
    rescanning a week of hourly rows on every refresh of a dashboard. Bounded, thread-safe."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._rows: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], read: Callable[[], list[Any]]) -> list[Any]:
        with self._lock:
            rows = self._rows.get(key)
        if rows is None:
            rows = read()
            with self._lock:
                self._rows[key] = rows
                while len(self._rows) > self.size:
                    del self._rows[next(iter(self._rows))]
        return rows

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


WEB_CACHE = RowCache()


def _web_params(server_id: int, s: _Segment) -> tuple[Any, ...]:
    if s.resolution is None:
        return (server_id, s.after, s.start, s.end)
    return (s.resolution, server_id, s.start, s.end)


def _add(target: dict[Any, Counters], key: Any, row: Sequence[Any]) -> None:
    """Add (calls, exec_us, rows, shared, local and temp blocks read) to ``target[key]``."""
    calls, exec_us, rows, shared, local, temp = (float(v or 0) for v in row[:6])
    added = Counters(
        calls=calls,
        exec_ms=exec_us / 1000.0,
        rows=rows,
        shared_blks_read=shared,
        local_blks_read=local,
        temp_blks_read=temp,
    )
    old = target.get(key)
    target[key] = added if old is None else old.plus(added)


def _floor(t: float, step: float) -> float:
    return float(int(t // step) * step)


def _accumulate(target: dict[str, list[float]], key: str, values: Sequence[Any], sign: int) -> None:
    """Add (calls, exec_us, rows) times ``sign`` to ``target[key]``."""
    sums = target.setdefault(key, [0.0, 0.0, 0.0])
    for n in range(3):
        sums[n] += sign * float(values[n] or 0)


def _counters(by_fp: Mapping[str, list[float]]) -> dict[str, Counters]:
    """Counters of each key; the rest ("") is left out when nothing else ran."""
    return {
        fp: Counters(calls=v[0], exec_ms=v[1] / 1000.0, rows=v[2])
        for fp, v in by_fp.items()
        if fp or v[0] > 0 or v[1] > 0
    }


def _web_segments(conn: Connection, start: float, end: float, step: float) -> list[_Segment]:
    minute_mark = float((conn.execute(WEB_MARK, ("rollup_minute",)).fetchone() or (0,))[0])
    hour_mark = float((conn.execute(WEB_MARK, ("rollup_hour",)).fetchone() or (0,))[0])
    marks = (minute_mark, hour_mark)  # hour buckets below the hour mark never change again
    if step < rollup.MINUTE:
        return [_Segment(None, start, end, start)]
    segments = [_Segment(None, start, end, minute_mark)]
    low = start
    if step >= rollup.HOUR:
        segments.append(_Segment(rollup.HOUR, start, min(end, hour_mark), 0.0, (hour_mark,)))
        low = max(start, hour_mark)
    segments.append(_Segment(rollup.MINUTE, low, min(end, minute_mark), 0.0, marks))
    return [s for s in segments if s.end > s.start]


class SeriesMixin(StoreBase):
    """The Store's dashboard time series (the SQL and helpers above)."""

    def fingerprint_totals(
        self, server_id: int, start: float, end: float, step: float
    ) -> dict[str, Counters]:
        """Calls, execution time and rows per fingerprint over [start, end), read from the
        source ``step`` selects (see ``series``)."""
        totals: dict[str, Counters] = {}
        with self._errors():
            fps = dict(self._conn.execute(WEB_STATEMENTS, (server_id,)).fetchall())
            for seg in _web_segments(self._conn, start, end, step):
                sql = WEB_RAW_TOTALS if seg.resolution is None else WEB_ROLLUP_TOTALS
                for row in self._web_rows(seg, sql, _web_params(server_id, seg)):
                    if row[0] in fps:
                        _add(totals, fps[row[0]], row[1:])
        return totals

    def series(
        self, server_id: int, start: float, end: float, step: float, fingerprints: Sequence[str]
    ) -> Series:
        """Sums per ``step``-long bucket of [start, end) for each given fingerprint and for all
        the others together (key ""). ``step`` picks the source: raw intervals below a minute,
        1-minute rollups from a minute, 1-hour rollups from an hour (each completed by finer
        data not rolled up yet). ``step`` should be a multiple of the source's resolution."""
        sums: dict[float, dict[str, list[float]]] = defaultdict(dict)
        with self._errors():
            fps = dict(self._conn.execute(WEB_STATEMENTS, (server_id,)).fetchall())
            wanted = set(fingerprints)
            picked = [sid for sid, fp in fps.items() if fp in wanted] or [-1]
            marks = ", ".join("?" * len(picked))
            for seg in _web_segments(self._conn, start, end, step):
                raw = seg.resolution is None
                params = _web_params(server_id, seg)
                sql = WEB_RAW_BUCKETS if raw else WEB_ROLLUP_BUCKETS
                for t, *values in self._web_rows(seg, sql, params):
                    _accumulate(sums[_floor(t, step)], "", values, 1)
                sql = (WEB_RAW_PICKED if raw else WEB_ROLLUP_PICKED).format(picked=marks)
                for t, sid, *values in self._web_rows(seg, sql, (*params, *picked)):
                    bucket = sums[_floor(t, step)]
                    _accumulate(bucket, fps[sid], values, 1)
                    _accumulate(bucket, "", values, -1)
        points = {t: _counters(by_fp) for t, by_fp in sums.items()}
        return Series(step, points, self.seconds_covered(server_id, start, end, step))

    def seconds_covered(
        self, server_id: int, start: float, end: float, step: float
    ) -> dict[float, float]:
        """Seconds of complete data per ``step``-long bucket of [start, end) (as ``series``)."""
        seconds: dict[float, float] = defaultdict(float)
        with self._errors():
            for seg in _web_segments(self._conn, start, end, step):
                sql = WEB_RAW_SECONDS if seg.resolution is None else WEB_ROLLUP_SECONDS
                params = (step, step, *_web_params(server_id, seg))
                for b, secs in self._web_rows(seg, sql, params):
                    seconds[float(b)] += float(secs or 0)
        return dict(seconds)

    def _web_rows(self, seg: _Segment, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """A dashboard query's rows; those of rollup segments come from ``WEB_CACHE``."""
        if seg.resolution is None:
            return self._conn.execute(sql, params).fetchall()
        key = (str(self.path), id(self), sql, params, seg.marks)
        return WEB_CACHE.get(key, lambda: self._conn.execute(sql, params).fetchall())
