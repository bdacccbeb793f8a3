"""Intervals and rollups: each interval's row, its statements' deltas, activity and gaps, read
back raw or from the 1-minute and 1-hour rollups (``querywatch.store.rollup``), and retention.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import (
    ActivitySummary,
    Counters,
    DatabaseCounters,
    FingerprintActivity,
    Gap,
    GapReason,
    Interval,
    IntervalSummary,
    Snapshot,
    StatementKey,
)
from . import outbox, replication, rollup, snapshots
from .db import Connection
from .schema import COUNTER_COLUMNS, DATABASE_COLUMNS, MICROSECOND_COLUMNS
from .snapshots import StoredSnapshot
from .statements import SELECT_TEXTS, StatementsMixin

_TIME_INDEXES = tuple(i for i, c in enumerate(COUNTER_COLUMNS) if c in MICROSECOND_COLUMNS)


_SUM_COUNTERS = ", ".join(f"sum(d.{c})" for c in COUNTER_COLUMNS)


@dataclass(frozen=True)
class TopRow:
    """One fingerprint's totals over a window."""

    fingerprint: str
    query: str
    queryids: tuple[int, ...]
    counters: Counters


def counters_to_row(c: Counters) -> list[int]:
    values = list(c.values())
    for i in _TIME_INDEXES:
        values[i] = values[i] * 1000.0
    return [round(v) for v in values]


def row_to_counters(values: Sequence[Any]) -> Counters:
    out = [float(v or 0) for v in values]
    for i in _TIME_INDEXES:
        out[i] = out[i] / 1000.0
    return Counters(*out)


INSERT_INTERVAL = f"""
INSERT INTO intervals (server_id, start, end, complete, dealloc, {", ".join(DATABASE_COLUMNS)},
    act_samples, act_sessions_mean, act_active_mean, act_idle_in_transaction_mean,
    act_lock_waiting_mean, act_sessions_max, act_max_connections, catch_up)
VALUES ({", ".join("?" * (5 + len(DATABASE_COLUMNS) + 8))})
RETURNING id
"""


INSERT_DELTA = f"""
INSERT INTO deltas (server_id, interval_id, statement_id, {", ".join(COUNTER_COLUMNS)})
VALUES ({", ".join("?" * (3 + len(COUNTER_COLUMNS)))})
"""


INSERT_ACTIVITY = """
INSERT INTO activity (server_id, interval_id, fingerprint, active, lock_waits, blocking,
    blocked_sessions, idle_in_transaction, running_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


INSERT_GAP = """
INSERT INTO gaps (server_id, start, end, reason, detail, partial) VALUES (?, ?, ?, ?, ?, ?)
"""


SELECT_INTERVALS = f"""
SELECT id, start, end, complete, {", ".join(DATABASE_COLUMNS)}, act_samples, act_sessions_mean,
    act_active_mean, act_idle_in_transaction_mean, act_lock_waiting_mean, act_sessions_max,
    act_max_connections, catch_up
FROM intervals WHERE server_id = ? AND end > ? AND start < ? ORDER BY start
"""


SELECT_INTERVAL_DELTAS = f"""
SELECT d.interval_id, s.fingerprint, {_SUM_COUNTERS}
FROM intervals i CROSS JOIN deltas d
    JOIN statements s ON s.server_id = d.server_id AND s.id = d.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.start < ? AND s.toplevel = 1 AND s.own = 0
    AND d.server_id = i.server_id AND d.interval_id = i.id
GROUP BY d.interval_id, s.fingerprint
"""


SELECT_INTERVAL_ACTIVITY = """
SELECT a.interval_id, a.fingerprint, a.active, a.lock_waits, a.blocking, a.blocked_sessions,
    a.idle_in_transaction, a.running_ms
FROM intervals i CROSS JOIN activity a
WHERE i.server_id = ? AND i.end > ? AND i.start < ?
    AND a.server_id = i.server_id AND a.interval_id = i.id
"""


SELECT_RAW_TOTALS = f"""
SELECT s.fingerprint, {_SUM_COUNTERS}
FROM intervals i CROSS JOIN deltas d
    JOIN statements s ON s.server_id = d.server_id AND s.id = d.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.end <= ? AND s.toplevel = 1 AND s.own = 0
    AND d.server_id = i.server_id AND d.interval_id = i.id
GROUP BY s.fingerprint
"""


SELECT_RAW_SECONDS = """
SELECT coalesce(sum(end - start), 0), min(start) FROM intervals
WHERE server_id = ? AND end > ? AND end <= ? AND complete = 1
"""


SELECT_OLDEST_RAW = "SELECT min(start) FROM intervals WHERE server_id = ?"


# Transactions (pg_stat_database) of the raw intervals Store.totals sums; NULL when any lacks them.
SELECT_RAW_XACTS = """
SELECT CASE WHEN count(*) = count(db_xact_commit) THEN sum(db_xact_commit + db_xact_rollback) END,
       coalesce(sum(end - start), 0)
FROM intervals WHERE server_id = ? AND end > ? AND end <= ?
"""


def interval_values(
    server_id: int, interval: Interval, activity: ActivitySummary | None
) -> list[Any]:
    """The values of INSERT_INTERVAL for one interval (both engines)."""
    database = interval.database
    db_values = (
        [round(v) for v in database.values()] if database else [None] * len(DATABASE_COLUMNS)
    )
    act: list[Any] = [0, None, None, None, None, None, None]
    if activity is not None:
        act = [
            activity.samples,
            activity.sessions_mean,
            activity.active_mean,
            activity.idle_in_transaction_mean,
            activity.lock_waiting_mean,
            activity.sessions_max,
            activity.max_connections,
        ]
    params = [server_id, interval.start, interval.end, int(interval.complete), interval.dealloc]
    return [*params, *db_values, *act, int(interval.catch_up)]


def _summary(
    row: Sequence[Any], by_fp: dict[str, Counters], acts: list[FingerprintActivity]
) -> IntervalSummary:
    n_db = len(DATABASE_COLUMNS)
    db_values = row[4 : 4 + n_db]
    database = None if db_values[0] is None else DatabaseCounters(*(float(v) for v in db_values))
    act = row[4 + n_db : 4 + n_db + 7]
    activity = None
    if act[0]:
        activity = ActivitySummary(
            samples=act[0],
            sessions_mean=act[1],
            active_mean=act[2],
            idle_in_transaction_mean=act[3],
            lock_waiting_mean=act[4],
            sessions_max=act[5],
            max_connections=act[6],
            by_fingerprint=tuple(acts),
        )
    return IntervalSummary(
        row[1], row[2], bool(row[3]), by_fp, database, activity, catch_up=bool(row[4 + n_db + 7])
    )


def _activity_rows(
    server_id: int, interval_id: int, activity: ActivitySummary
) -> list[tuple[Any, ...]]:
    return [
        (
            server_id,
            interval_id,
            a.fingerprint,
            a.active,
            a.lock_waits,
            a.blocking,
            a.blocked_sessions,
            a.idle_in_transaction,
            a.running_ms,
        )
        for a in activity.by_fingerprint
    ]


def _gap_row(server_id: int, gap: Gap) -> tuple[Any, ...]:
    return (server_id, gap.start, gap.end, gap.reason.value, gap.detail, int(gap.partial))


class IntervalsMixin(StatementsMixin):
    """The Store's intervals (engine-neutral SQL; see ``querywatch.store.base``)."""

    def record_interval(
        self,
        server_id: int,
        interval: Interval,
        fingerprints: Mapping[StatementKey, str],
        texts: Mapping[str, str],
        activity: ActivitySummary | None = None,
        own: frozenset[str] = frozenset(),
        snapshot: StoredSnapshot | None = None,
        snapshot_base: Snapshot | None = None,
    ) -> int:
        """Write one interval atomically: its row, its active statements, activity and gaps.

        ``fingerprints`` must hold every statement key of the interval not yet known to the store;
        ``texts`` the normalized text of fingerprints not stored yet; ``own`` the fingerprints of
        querywatch's own monitoring statements (kept, but left out of rankings and diagnosis).
        ``snapshot`` (the interval's later snapshot) becomes the server's last snapshot in the same
        transaction, written where it differs from ``snapshot_base`` (see ``save_snapshot``).
        """
        with self._errors(), self._transaction() as conn:
            ids = dict(self.known_keys(server_id))
            self._insert_statements(conn, server_id, interval, fingerprints, ids, own)
            self._insert_texts(conn, texts)
            interval_id = self._insert_interval(conn, server_id, interval, activity)
            rows = sorted(  # in key order, so the table's pages fill up
                [server_id, interval_id, ids[d.key], *counters_to_row(d.counters)]
                for d in interval.statements
            )
            self._insert_deltas(conn, rows)
            if activity is not None:
                conn.executemany(INSERT_ACTIVITY, _activity_rows(server_id, interval_id, activity))
            for gap in interval.gaps:
                conn.execute(INSERT_GAP, _gap_row(server_id, gap))
            if snapshot is not None:
                snapshots.save(conn, server_id, snapshot, snapshot_base)
        self._statement_ids[server_id] = ids
        self._known_texts.update(texts)
        return interval_id

    def _insert_interval(
        self,
        conn: Connection,
        server_id: int,
        interval: Interval,
        activity: ActivitySummary | None,
    ) -> int:
        values = interval_values(server_id, interval, activity)
        return int(conn.execute(INSERT_INTERVAL, values).fetchone()[0])

    def _insert_deltas(self, conn: Connection, rows: list[list[Any]]) -> None:
        conn.executemany(INSERT_DELTA, rows)

    def record_gap(self, server_id: int, gap: Gap) -> None:
        """A gap outside any interval (e.g. the server was down)."""
        with self._errors(), self._transaction() as conn:
            conn.execute(INSERT_GAP, _gap_row(server_id, gap))

    def summaries(self, server_id: int, start: float, end: float) -> list[IntervalSummary]:
        """Stored raw intervals overlapping [start, end), statement counters per fingerprint."""
        with self._errors():
            intervals = self._conn.execute(SELECT_INTERVALS, (server_id, start, end)).fetchall()
            deltas = self._conn.execute(SELECT_INTERVAL_DELTAS, (server_id, start, end)).fetchall()
            acts = self._conn.execute(SELECT_INTERVAL_ACTIVITY, (server_id, start, end)).fetchall()
        by_interval: dict[int, dict[str, Counters]] = defaultdict(dict)
        for row in deltas:
            by_interval[row[0]][row[1]] = row_to_counters(row[2:])
        activity: dict[int, list[FingerprintActivity]] = defaultdict(list)
        for row in acts:
            activity[row[0]].append(FingerprintActivity(*row[1:]))
        return [
            _summary(row, by_interval.get(row[0], {}), activity.get(row[0], []))
            for row in intervals
        ]

    def totals(self, server_id: int, start: float, end: float) -> tuple[list[TopRow], float]:
        """Per-fingerprint totals over (start, end] and the seconds of complete data covered."""
        with self._errors():
            oldest = self._conn.execute(SELECT_OLDEST_RAW, (server_id,)).fetchone()[0]
            if not self._needs_rollups(server_id, start, end, oldest):
                rows = self._conn.execute(SELECT_RAW_TOTALS, (server_id, start, end)).fetchall()
                seconds = self._conn.execute(
                    SELECT_RAW_SECONDS, (server_id, start, end)
                ).fetchone()[0]
            else:
                rows, seconds = rollup.totals(self._conn, server_id, start, end)
            texts = dict(self._conn.execute(SELECT_TEXTS).fetchall())
            queryids = self._queryids(server_id)
        result = [
            TopRow(
                r[0],
                texts.get(r[0], ""),
                tuple(sorted(queryids.get(r[0], ()))),
                row_to_counters(r[1:]),
            )
            for r in rows
        ]
        return result, float(seconds or 0.0)

    def xacts(self, server_id: int, start: float, end: float) -> tuple[float | None, float]:
        """Transactions committed and rolled back over the raw intervals ending in (start, end],
        and the seconds those intervals span (None: some interval has no database figures)."""
        with self._errors():
            row = self._conn.execute(SELECT_RAW_XACTS, (server_id, start, end)).fetchone()
        return (None if row[0] is None else float(row[0])), float(row[1])

    def _needs_rollups(
        self, server_id: int, start: float, end: float, oldest: float | None
    ) -> bool:
        """True when the window starts before the raw intervals kept and rollups cover it."""
        if oldest is not None and start >= oldest - 1:
            return False
        before = oldest if oldest is not None else end + rollup.MINUTE
        return rollup.covers(self._conn, server_id, start, before)

    def gaps(self, server_id: int, start: float, end: float) -> list[Gap]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT start, end, reason, detail, partial FROM gaps "
                "WHERE server_id = ? AND end > ? AND start < ? ORDER BY start",
                (server_id, start, end),
            ).fetchall()
        return [Gap(r[0], r[1], GapReason(r[2]), r[3], bool(r[4])) for r in rows]

    def last_interval_end(self, server_id: int) -> float | None:
        with self._errors():
            row = self._conn.execute(
                "SELECT max(end) FROM intervals WHERE server_id = ?", (server_id,)
            ).fetchone()
        return float(row[0]) if row[0] is not None else None

    def interval_count(self, server_id: int) -> int:
        with self._errors():
            row = self._conn.execute(
                "SELECT count(*) FROM intervals WHERE server_id = ?", (server_id,)
            ).fetchone()
        return int(row[0])

    def maintain(self, now: float | None = None) -> None:
        """Roll raw intervals up to 1-minute and 1-hour buckets, then apply retention."""
        now = self.clock() if now is None else now
        with self._errors(), self._transaction() as conn:
            self._exclusive_maintenance(conn)
            rollup.roll_up(conn, now)
            self._retain(conn, now)
            replication.prune(conn, now - self.retention.raw_s)
            outbox.prune(conn, now)

    def _exclusive_maintenance(self, conn: Connection) -> None:
        """Make concurrent maintenance (many watchers, one store) wait for each other, so each
        reads the rollup marks the previous one left. SQLite's write transaction does already."""

    def _retain(self, conn: Connection, now: float) -> None:
        """Drop raw intervals, rollups and gaps past retention (PostgreSQL drops partitions)."""
        rollup.apply_retention(conn, now, self.retention)
