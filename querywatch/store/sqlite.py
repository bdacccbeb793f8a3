"""The Store: querywatch's history in one SQLite file (WAL mode). The only sqlite3 importer."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreCorrupt, StoreError, StoreUnwritable
from ..longrun import LongRun
from ..model import (
    ActivitySummary,
    Counters,
    DatabaseCounters,
    Deploy,
    FingerprintActivity,
    Gap,
    GapReason,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    IntervalSummary,
    Snapshot,
    Statement,
    StatementKey,
)
from ..replication import NodeState, ReplicaState, SlotState, TopologyEvent
from ..source.kcache import CpuUsage, KcacheUsage
from . import (
    dbtime,
    kcache,
    leases,
    logevents,
    longrun,
    outbox,
    replication,
    rollup,
    schema,
    snapshots,
)
from .db import Connection
from .leases import Lease
from .outbox import OutboxEntry, OutboxRow, OutboxSummary
from .rollup import Retention
from .schema import COUNTER_COLUMNS, DATABASE_COLUMNS, MICROSECOND_COLUMNS
from .series import (
    WEB_CACHE,
    WEB_MARK,
    WEB_RAW_BUCKETS,
    WEB_RAW_PICKED,
    WEB_RAW_SECONDS,
    WEB_RAW_TOTALS,
    WEB_ROLLUP_BUCKETS,
    WEB_ROLLUP_PICKED,
    WEB_ROLLUP_SECONDS,
    WEB_ROLLUP_TOTALS,
    WEB_STATEMENTS,
    Series,
    _accumulate,
    _add,
    _counters,
    _floor,
    _Segment,
    _web_params,
)
from .snapshots import StoredSnapshot

log = logging.getLogger("querywatch.store")

_TIME_INDEXES = tuple(i for i, c in enumerate(COUNTER_COLUMNS) if c in MICROSECOND_COLUMNS)
_SUM_COUNTERS = ", ".join(f"sum(d.{c})" for c in COUNTER_COLUMNS)


@dataclass(frozen=True)
class Server:
    id: int
    name: str
    target: str
    version: str


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
INSERT INTO deltas (interval_id, statement_id, {", ".join(COUNTER_COLUMNS)})
VALUES ({", ".join("?" * (2 + len(COUNTER_COLUMNS)))})
"""
INSERT_ACTIVITY = """
INSERT INTO activity (interval_id, fingerprint, active, lock_waits, blocking, blocked_sessions,
    idle_in_transaction, running_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
INSERT_STATEMENT = """
INSERT INTO statements (server_id, dbid, userid, queryid, toplevel, fingerprint, own, first_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, dbid, userid, queryid, toplevel) DO UPDATE SET fingerprint = excluded.fingerprint
RETURNING id
"""
INSERT_TEXT = """
INSERT INTO texts (fingerprint, query, first_seen) VALUES (?, ?, ?)
ON CONFLICT (fingerprint) DO NOTHING
"""
INSERT_GAP = """
INSERT INTO gaps (server_id, start, end, reason, detail, partial) VALUES (?, ?, ?, ?, ?, ?)
"""
SELECT_STATEMENT_IDS = """
SELECT id, dbid, userid, queryid, toplevel, fingerprint FROM statements WHERE server_id = ?
"""
SELECT_INTERVALS = f"""
SELECT id, start, end, complete, {", ".join(DATABASE_COLUMNS)}, act_samples, act_sessions_mean,
    act_active_mean, act_idle_in_transaction_mean, act_lock_waiting_mean, act_sessions_max,
    act_max_connections, catch_up
FROM intervals WHERE server_id = ? AND end > ? AND start < ? ORDER BY start
"""
SELECT_INTERVAL_DELTAS = f"""
SELECT d.interval_id, s.fingerprint, {_SUM_COUNTERS}
FROM deltas d JOIN intervals i ON i.id = d.interval_id JOIN statements s ON s.id = d.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.start < ? AND s.toplevel = 1 AND s.own = 0
GROUP BY d.interval_id, s.fingerprint
"""
SELECT_INTERVAL_ACTIVITY = """
SELECT a.interval_id, a.fingerprint, a.active, a.lock_waits, a.blocking, a.blocked_sessions,
    a.idle_in_transaction, a.running_ms
FROM activity a JOIN intervals i ON i.id = a.interval_id
WHERE i.server_id = ? AND i.end > ? AND i.start < ?
"""
SELECT_RAW_TOTALS = f"""
SELECT s.fingerprint, {_SUM_COUNTERS}
FROM deltas d JOIN intervals i ON i.id = d.interval_id JOIN statements s ON s.id = d.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.end <= ? AND s.toplevel = 1 AND s.own = 0
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
SELECT_TEXTS = "SELECT fingerprint, query FROM texts"
SELECT_QUERYIDS = (  # log statements have no queryid (querywatch.store.logevents)
    "SELECT fingerprint, queryid FROM statements WHERE server_id = ? AND source <> 'logs'"
)


class Store:
    """All reads and writes of querywatch's history. Open one per process.

    ``Store(path)`` is the SQLite engine; a ``postgresql://`` location opens the PostgreSQL
    engine (``querywatch.store.postgres.PgStore``, a subclass overriding the engine's hooks).
    """

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> Store:
        if cls is Store:
            from .postgres import PgStore, pg_target

            if pg_target(path) is not None:
                return super().__new__(PgStore)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | Path,
        *,
        retention: Retention | None = None,
        create: bool = True,
        clock: Any = time.time,
    ) -> None:
        self.path = Path(path)
        self.retention = retention or Retention()
        self.clock = clock
        self._statement_ids: dict[int, dict[StatementKey, int]] = {}
        self._known_texts: set[str] = set()
        self._lock = threading.RLock()
        self.location = str(path)
        self._db: sqlite3.Connection = self._open(create)

    @property
    def _conn(self) -> Connection:
        """The connection of this thread's store operation (the one SQLite connection here)."""
        return self._db

    @property
    def engine(self) -> str:
        return "sqlite"

    # -- opening ------------------------------------------------------------------------------
    def _open(self, create: bool) -> sqlite3.Connection:
        if not self.path.exists():
            if not create:
                raise StoreError(
                    f"no store at {str(self.path)!r} (fix: run `querywatch collect` first, "
                    "or pass --store)"
                )
            self._check_folder()
        try:
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnwritable(f"cannot open store {str(self.path)!r}: {exc}") from None
        try:
            self._check_identity(conn)
            self._configure(conn)
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._translate(exc) from None
        return conn

    def _check_folder(self) -> None:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise StoreUnwritable(
                f"cannot create store {str(self.path)!r}: folder {str(folder)!r} does not exist"
            )

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not ours before anything (even WAL mode) writes to it."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != schema.APPLICATION_ID and tables:
            raise StoreCorrupt(
                f"{str(self.path)!r} is not a querywatch store (fix: pass another --store path)"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > schema.LATEST:
            raise StoreCorrupt(
                f"store {str(self.path)!r} has schema version {version}, newer than this "
                f"querywatch knows ({schema.LATEST}) (fix: upgrade querywatch)"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, schema.LATEST):
            with self._transaction(conn):
                self._apply(conn, schema.MIGRATIONS[number])
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")

    @staticmethod
    def _apply(conn: sqlite3.Connection, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        where = str(self.path)
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return StoreUnwritable(f"cannot write store {where!r}: {text} (fix: check permissions)")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreCorrupt(
                f"store {where!r} is damaged: {text} (fix: move the file aside; querywatch "
                "then starts a new store, and `sqlite3 FILE .recover` may save the history)"
            )
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"store {where!r}: {text}")

    @contextmanager
    def _transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        conn = conn or self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Serialize access (one connection shared by threads) and translate sqlite3 errors."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise self._translate(exc) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- servers --------------------------------------------------------------------------------
    def server(self, name: str, target: str = "", version: str = "") -> Server:
        """The server of that name, created on first use."""
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO servers (name, target, version, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET target = excluded.target, "
                "version = CASE WHEN excluded.version = '' THEN servers.version "
                "ELSE excluded.version END",
                (name, target, version, self.clock()),
            )
            row = conn.execute(
                "SELECT id, name, target, version FROM servers WHERE name = ?", (name,)
            ).fetchone()
        return Server(*row)

    def servers(self) -> list[Server]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT s.id, s.name, s.target, s.version FROM servers s "
                "LEFT JOIN intervals i ON i.server_id = s.id "
                "GROUP BY s.id ORDER BY max(i.end) DESC NULLS LAST, s.id"
            ).fetchall()
        return [Server(*r) for r in rows]

    # -- writing intervals ------------------------------------------------------------------------
    def set_fingerprint(
        self, server_id: int, key: StatementKey, fingerprint: str, text: str
    ) -> None:
        """Give a statement stored under a placeholder its real fingerprint and text."""
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "UPDATE statements SET fingerprint = ? WHERE server_id = ? AND dbid = ? "
                "AND userid = ? AND queryid = ? AND toplevel = ?",
                (fingerprint, server_id, key.dbid, key.userid, key.queryid, int(key.toplevel)),
            )
            conn.execute(INSERT_TEXT, (fingerprint, text, self.clock()))
        self._known_texts.add(fingerprint)

    def known_keys(self, server_id: int) -> Mapping[StatementKey, int]:
        ids = self._statement_ids.get(server_id)
        if ids is None:
            with self._errors():
                rows = self._conn.execute(SELECT_STATEMENT_IDS, (server_id,)).fetchall()
            ids = {StatementKey(r[1], r[2], r[3], bool(r[4])): r[0] for r in rows}
            self._statement_ids[server_id] = ids
        return ids

    def has_text(self, fingerprint: str) -> bool:
        if not self._known_texts:
            with self._errors():
                rows = self._conn.execute("SELECT fingerprint FROM texts").fetchall()
            self._known_texts = {r[0] for r in rows}
        return fingerprint in self._known_texts

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
                [interval_id, ids[d.key], *counters_to_row(d.counters)] for d in interval.statements
            )
            self._insert_deltas(conn, rows)
            if activity is not None:
                conn.executemany(INSERT_ACTIVITY, _activity_rows(interval_id, activity))
            for gap in interval.gaps:
                conn.execute(INSERT_GAP, _gap_row(server_id, gap))
            if snapshot is not None:
                snapshots.save(conn, server_id, snapshot, snapshot_base)
        self._statement_ids[server_id] = ids
        self._known_texts.update(texts)
        return interval_id

    def _insert_statements(
        self,
        conn: Connection,
        server_id: int,
        interval: Interval,
        fingerprints: Mapping[StatementKey, str],
        ids: dict[StatementKey, int],
        own: frozenset[str],
    ) -> None:
        for d in interval.statements:
            if d.key in ids:
                continue
            key = d.key
            fp = fingerprints.get(key)
            if fp is None:
                raise StoreError(f"store: no fingerprint given for queryid {key.queryid}")
            row = conn.execute(
                INSERT_STATEMENT,
                (
                    server_id,
                    key.dbid,
                    key.userid,
                    key.queryid,
                    int(key.toplevel),
                    fp,
                    int(fp in own),
                    interval.end,
                ),
            ).fetchone()
            ids[key] = row[0]

    def _insert_texts(self, conn: Connection, texts: Mapping[str, str]) -> None:
        now = self.clock()
        conn.executemany(INSERT_TEXT, [(fp, q, now) for fp, q in texts.items()])

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

    # -- the last snapshot of each server (querywatch.store.snapshots) -----------------------------
    def save_snapshot(
        self, server_id: int, snapshot: StoredSnapshot, base: Snapshot | None = None
    ) -> None:
        """Keep ``snapshot`` as the server's last one; ``base`` is the snapshot the store is
        believed to hold (only the differences are written), or None to write it all."""
        with self._errors(), self._transaction() as conn:
            snapshots.save(conn, server_id, snapshot, base)

    def last_snapshot(self, server_id: int) -> StoredSnapshot | None:
        """The server's last stored snapshot, for a restarted collector to continue from."""
        with self._errors():
            return snapshots.load(self._conn, server_id)

    # -- long-run baselines (querywatch.store.longrun) ----------------------------------------------
    def save_long_run(self, server_id: int, long_run: LongRun) -> None:
        """Keep the long-run baseline read from pg_stat_statements on first contact."""
        with self._errors(), self._transaction() as conn:
            longrun.save(conn, server_id, long_run)

    def long_run(self, server_id: int, at: float) -> LongRun | None:
        """The long-run baseline taken last at or before ``at`` (else the first after it)."""
        with self._errors():
            return longrun.load(self._conn, server_id, at)

    # -- calls and execution time per bucket, lean (querywatch.store.dbtime) -----------------------
    def db_time(
        self,
        server_id: int,
        start: float,
        end: float,
        step: float,
        fingerprints: Sequence[str] | None = None,
        group: float | None = None,
    ) -> tuple[dbtime.Sums, dict[float, float]]:
        """Calls and exec ms per ``group`` bucket (default ``step``) and fingerprint over
        [start, end), and complete seconds per bucket: for diagnosing long windows."""
        with self._errors():
            return dbtime.sums(self._conn, server_id, start, end, step, fingerprints, group)

    # -- pg_stat_kcache's usage per statement (querywatch.store.kcache) ----------------------------
    def record_kcache(self, server_id: int, interval_id: int, usage: KcacheUsage) -> int:
        """Keep the interval's CPU time, reads, writes and faults per statement; returns the rows
        written (statements the store does not know are left out)."""
        ids = self.known_keys(server_id)
        with self._errors(), self._transaction() as conn:
            return kcache.save(conn, interval_id, usage, ids)

    def cpu_usage(self, server_id: int, start: float, end: float) -> CpuUsage | None:
        """pg_stat_kcache's figures per fingerprint over [start, end), None when none exist."""
        with self._errors():
            return kcache.load(self._conn, server_id, start, end)

    # -- replication: node states, replica lag, slots, topology events (store.replication) -------
    def record_replication(
        self,
        server_id: int,
        node: NodeState,
        replicas: Sequence[ReplicaState] = (),
        slots: Sequence[SlotState] | None = None,
        events: Sequence[TopologyEvent] = (),
    ) -> None:
        """One replication sample of a server (its state, its replicas' lag, its slots) and the
        topology events found, in one transaction."""
        with self._errors(), self._transaction() as conn:
            replication.save(conn, server_id, node, replicas, slots, events)

    def add_topology_events(self, server_id: int, events: Sequence[TopologyEvent]) -> None:
        with self._errors(), self._transaction() as conn:
            replication.add_events(conn, server_id, events)

    def replicas(self, server_id: int, at: float | None = None) -> list[ReplicaState]:
        """The replicas the server (a primary) listed in its last sample at or before ``at``
        (default: now), with their replay lag."""
        at = self.clock() if at is None else at
        with self._errors():
            return replication.replicas(self._conn, server_id, at)

    def replica_lag(
        self, server_id: int, start: float, end: float, name: str = ""
    ) -> list[ReplicaState]:
        """The lag history the server recorded for its replicas (or the one named) in [start, end)."""
        with self._errors():
            return replication.lag_history(self._conn, server_id, start, end, name)

    def node_state(
        self, server_id: int, at: float | None = None, *, reachable: bool = False
    ) -> NodeState | None:
        """The server's last sample at or before ``at`` (its last reachable one with ``reachable``)."""
        at = self.clock() if at is None else at
        name = self._server_name(server_id)
        with self._errors():
            return replication.last_node(self._conn, server_id, name, at, reachable=reachable)

    def node_states(self, server_id: int, start: float, end: float) -> list[NodeState]:
        name = self._server_name(server_id)
        with self._errors():
            return replication.nodes(self._conn, server_id, name, start, end)

    def unreachable_since(self, server_id: int, after: float, at: float) -> float | None:
        with self._errors():
            return replication.unreachable_since(self._conn, server_id, after, at)

    def replication_slots(self, server_id: int) -> list[SlotState]:
        with self._errors():
            return replication.slots(self._conn, server_id)

    def topology_events(
        self, server_id: int | None = None, start: float = 0.0, end: float = float("inf")
    ) -> list[TopologyEvent]:
        """Topology events (promotions, unreachable servers, lag...) in [start, end)."""
        with self._errors():
            return replication.events(self._conn, server_id, start, min(end, 1e18))

    def _server_name(self, server_id: int) -> str:
        with self._errors():
            row = self._conn.execute(
                "SELECT name FROM servers WHERE id = ?", (server_id,)
            ).fetchone()
        return str(row[0]) if row else ""

    # -- reading --------------------------------------------------------------------------------
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

    def _queryids(self, server_id: int) -> dict[str, set[int]]:
        out: dict[str, set[int]] = defaultdict(set)
        for fp, queryid in self._conn.execute(SELECT_QUERYIDS, (server_id,)):
            out[fp].add(queryid)
        return out

    def statements(
        self, fingerprints: Sequence[str] | None = None, server_id: int | None = None
    ) -> dict[str, Statement]:
        """Normalized text and queryids of the given fingerprints (all when None); queryids of
        one server when ``server_id`` is given (queryids differ between servers)."""
        with self._errors():
            texts = dict(self._conn.execute(SELECT_TEXTS).fetchall())
            rows = self._conn.execute(
                "SELECT fingerprint, queryid FROM statements WHERE (? IS NULL OR server_id = ?)"
                " AND source <> 'logs'",
                (server_id, server_id),
            ).fetchall()
        queryids: dict[str, set[int]] = defaultdict(set)
        for fp, qid in rows:
            queryids[fp].add(qid)
        wanted = set(fingerprints) if fingerprints is not None else set(texts) | set(queryids)
        return {
            fp: Statement(fp, texts.get(fp, ""), tuple(sorted(queryids.get(fp, ()))))
            for fp in wanted
            if fp in texts or fp in queryids
        }

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

    # -- deploys ---------------------------------------------------------------------------------
    def add_deploy(self, version: str, at: float, note: str = "") -> Deploy:
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO deploys (version, at, note) VALUES (?, ?, ?)", (version, at, note)
            )
        return Deploy(version, at, note)

    def deploys(self, start: float = 0.0, end: float = float("inf")) -> list[Deploy]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT version, at, note FROM deploys WHERE at >= ? AND at <= ? ORDER BY at",
                (start, min(end, 1e18)),
            ).fetchall()
        return [Deploy(*r) for r in rows]

    # -- incidents --------------------------------------------------------------------------------
    def save_incident(
        self,
        server_id: int,
        incident: Incident,
        diagnosis: Mapping[str, object] | None = None,
        notify: Sequence[OutboxEntry] = (),
    ) -> None:
        """Keep ``incident``; ``notify`` are its alert outbox rows, written in the same
        transaction so a crash cannot keep the incident and lose its notification."""
        with self._errors(), self._transaction() as conn:
            outbox.add(conn, notify)
            conn.execute(
                "INSERT INTO incidents (id, server_id, key, state, opened_at, fired_at, resolved_at,"
                " rules, diagnosis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " state = excluded.state, fired_at = excluded.fired_at,"
                " resolved_at = excluded.resolved_at, rules = excluded.rules,"
                " diagnosis = coalesce(excluded.diagnosis, incidents.diagnosis)",
                (
                    incident.id,
                    server_id,
                    incident.key,
                    incident.state.value,
                    incident.opened_at,
                    incident.fired_at,
                    incident.resolved_at,
                    ",".join(incident.rules),
                    json.dumps(diagnosis) if diagnosis is not None else None,
                ),
            )
            conn.execute("DELETE FROM incident_events WHERE incident_id = ?", (incident.id,))
            conn.executemany(
                "INSERT INTO incident_events (incident_id, at, state, detail) VALUES (?, ?, ?, ?)",
                [(incident.id, e.at, e.state.value, e.detail) for e in incident.timeline],
            )

    def incidents(self, server_id: int | None = None, limit: int = 100) -> list[StoredIncident]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT id, server_id, key, state, opened_at, fired_at, resolved_at, rules, diagnosis"
                " FROM incidents WHERE (? IS NULL OR server_id = ?) ORDER BY opened_at DESC LIMIT ?",
                (server_id, server_id, limit),
            ).fetchall()
            events = self._conn.execute(
                "SELECT incident_id, at, state, detail FROM incident_events ORDER BY at"
            ).fetchall()
        timeline: dict[str, list[IncidentEvent]] = defaultdict(list)
        for e in events:
            timeline[e[0]].append(IncidentEvent(e[1], IncidentState(e[2]), e[3]))
        return [_stored_incident(r, timeline.get(r[0], [])) for r in rows]

    # -- the alert outbox (querywatch.store.outbox) ---------------------------------------------
    def add_outbox(self, entries: Sequence[OutboxEntry]) -> int:
        """Write notifications to deliver; a repeat of a stored one is ignored. Returns new rows."""
        with self._errors(), self._transaction() as conn:
            return outbox.add(conn, entries)

    def outbox_head(self, channel: str) -> OutboxRow | None:
        """The channel's oldest pending notification."""
        with self._errors():
            return outbox.head(self._conn, channel)

    def outbox_rows(self, channel: str) -> list[OutboxRow]:
        with self._errors():
            return outbox.rows(self._conn, channel)

    def outbox_stale(self, created_before: float) -> list[OutboxRow]:
        """Pending notifications of any channel written before ``created_before``."""
        with self._errors():
            return outbox.stale(self._conn, created_before)

    def outbox_done(
        self, row_id: int, state: str, at: float, tried: bool = True, error: str | None = None
    ) -> bool:
        """Close a pending row (sent, failed or expired); False when it was not pending."""
        with self._errors(), self._transaction() as conn:
            return outbox.done(conn, row_id, state, at, tried, error)

    def outbox_retry(self, row_id: int, next_at: float, error: str) -> None:
        with self._errors(), self._transaction() as conn:
            outbox.retry(conn, row_id, next_at, error)

    def outbox_summary(self) -> list[OutboxSummary]:
        """Each channel's notifications by state: what is pending, since when, the last error."""
        with self._errors():
            return outbox.summary(self._conn)

    # -- status -------------------------------------------------------------------------------------
    def set_status(self, key: str, value: Mapping[str, object]) -> None:
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO status (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, json.dumps(value), self.clock()),
            )

    def status(self) -> dict[str, dict[str, Any]]:
        with self._errors():
            rows = self._conn.execute("SELECT key, value, updated_at FROM status").fetchall()
        return {k: {**json.loads(v), "updated_at": at} for k, v, at in rows}

    # -- owner leases (querywatch.store.leases) -----------------------------------------------------
    def claim_server(
        self, server_name: str, owner: str, ttl_s: float, *, host: str | None = None
    ) -> Lease:
        """Take the lease of ``server_name`` (created on first use) for ``owner``; ServerLeased
        (a one-line message naming the holder) when another watcher's lease is live."""
        server_id = self.server(server_name).id
        with self._errors(), self._transaction() as conn:
            return leases.claim(conn, server_id, owner, ttl_s, self.clock(), host=host)

    def renew(self, lease: Lease) -> Lease:
        """Extend ``lease`` by its ttl from now; ServerLeased when another watcher took it over."""
        with self._errors(), self._transaction() as conn:
            return leases.renew(conn, lease, self.clock())

    def release(self, lease: Lease) -> bool:
        """Give ``lease`` up so another watcher may claim at once; False when it was not ours."""
        with self._errors(), self._transaction() as conn:
            return leases.release(conn, lease)

    def leases(self) -> list[Lease]:
        """Every server's lease, live or expired (see ``Lease.live``)."""
        with self._errors():
            return leases.all_leases(self._conn)

    # -- retention ----------------------------------------------------------------------------------
    def maintain(self, now: float | None = None) -> None:
        """Roll raw intervals up to 1-minute and 1-hour buckets, then apply retention."""
        now = self.clock() if now is None else now
        with self._errors(), self._transaction() as conn:
            rollup.roll_up(conn, now)
            self._retain(conn, now)
            replication.prune(conn, now - self.retention.raw_s)
            outbox.prune(conn, now)

    def _retain(self, conn: Connection, now: float) -> None:
        """Drop raw intervals, rollups and gaps past retention (PostgreSQL drops partitions)."""
        rollup.apply_retention(conn, now, self.retention)

    def size_bytes(self) -> int:
        with self._errors():
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    # -- plans (querywatch.advise) ------------------------------------------------------------
    def record_plan(
        self,
        server_id: int,
        fingerprint: str,
        plan_hash: str,
        plan: Mapping[str, Any],
        total_cost: float,
        at: float | None = None,
    ) -> None:
        """Remember a plan: a new shape gets a row, a known one its last_seen (and latest JSON)."""
        at = self.clock() if at is None else at
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO plans (server_id, fingerprint, plan_hash, first_seen, last_seen, plan,"
                " total_cost) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server_id, fingerprint,"
                " plan_hash) DO UPDATE SET last_seen = excluded.last_seen, plan = excluded.plan,"
                " total_cost = excluded.total_cost",
                (server_id, fingerprint, plan_hash, at, at, json.dumps(plan), total_cost),
            )

    def plans(self, fingerprint: str, server_id: int | None = None) -> list[StoredPlan]:
        """The plans seen for a fingerprint, oldest first: a new hash means the plan changed."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT server_id, fingerprint, plan_hash, first_seen, last_seen, plan, total_cost"
                " FROM plans WHERE fingerprint = ? AND (? IS NULL OR server_id = ?)"
                " ORDER BY first_seen",
                (fingerprint, server_id, server_id),
            ).fetchall()
        return [StoredPlan(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    # -- server logs as a second source (querywatch.store.logevents) -----------------------------
    def record_log_batch(self, server_id: int, batch: logevents.Batch) -> logevents.Written:
        """Write durations (as intervals of source 'logs'), events and spans of log read."""
        with self._errors(), self._transaction() as conn:
            return logevents.save(conn, server_id, batch, self.clock())

    def log_ranges(self, server_id: int) -> list[tuple[float, float]]:
        """The spans of server log already loaded for the server, oldest first."""
        with self._errors():
            return logevents.ranges(self._conn, server_id)

    def log_events(
        self, server_id: int, kind: str, start: float, end: float, limit: int = 1000
    ) -> list[logevents.EventRow]:
        """Stored log events of one kind (lock_wait, deadlock, temp_file, error...) in [start, end)."""
        with self._errors():
            return logevents.events(self._conn, server_id, kind, start, end, limit)

    def log_event_counts(self, server_id: int, start: float, end: float) -> dict[str, int]:
        with self._errors():
            return logevents.counts(self._conn, server_id, start, end)

    # -- time series for the web dashboard (SQL and helpers at the end of this module) ----------
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


@dataclass(frozen=True)
class StoredIncident:
    incident: Incident
    server_id: int
    diagnosis: dict[str, Any] | None


def _stored_incident(row: Sequence[Any], events: list[IncidentEvent]) -> StoredIncident:
    incident = Incident(
        id=row[0],
        key=row[2],
        state=IncidentState(row[3]),
        opened_at=row[4],
        fired_at=row[5],
        resolved_at=row[6],
        rules=tuple(r for r in row[7].split(",") if r),
        timeline=tuple(events),
    )
    return StoredIncident(incident, row[1], json.loads(row[8]) if row[8] else None)


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


def _activity_rows(interval_id: int, activity: ActivitySummary) -> list[tuple[Any, ...]]:
    return [
        (
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


@dataclass(frozen=True)
class StoredPlan:
    """One plan shape of a fingerprint on a server, and when it was first and last seen."""

    server_id: int
    fingerprint: str
    plan_hash: str
    first_seen: float
    last_seen: float
    plan: dict[str, Any]
    total_cost: float


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
