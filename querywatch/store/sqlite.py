"""The Store and its SQLite engine: querywatch's history in one file (WAL mode).

``Store`` is assembled from one mixin per concept (see ``querywatch.store.base`` for the map) plus
the engine's hooks here; ``Store("postgresql://...")`` returns the PostgreSQL engine instead
(``querywatch.store.postgres.PgStore``). The only sqlite3 importer.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreCorrupt, StoreError, StoreUnwritable
from ..longrun import LongRun
from ..model import (
    Snapshot,
    StatementKey,
)
from ..replication import (
    NodeState,
    ReplicaState,
    SlotState,
    TopologyEvent,
    TopologyIncident,
)
from ..source.kcache import CpuUsage, KcacheUsage
from . import (
    dbtime,
    kcache,
    logevents,
    longrun,
    outbox,
    replication,
    schema,
    snapshots,
)
from .db import Connection
from .deploys import DeploysMixin
from .fleet import FleetMixin
from .incidents import IncidentsMixin
from .incidents import StoredIncident as StoredIncident
from .intervals import IntervalsMixin
from .intervals import TopRow as TopRow
from .intervals import counters_to_row as counters_to_row
from .intervals import interval_values as interval_values
from .intervals import row_to_counters as row_to_counters
from .leases import LeasesMixin
from .location import pg_target
from .outbox import OutboxEntry, OutboxRow, OutboxSummary
from .plans import PlansMixin
from .plans import StoredPlan as StoredPlan
from .rollup import Retention
from .series import (
    SeriesMixin,
)
from .snapshots import StoredSnapshot
from .statements import Server as Server
from .statements import StatementsMixin
from .status import StatusMixin

log = logging.getLogger("querywatch.store")


ENGINES: dict[str, type[Store]] = {}  # other engines, registered by their modules (postgres)
POOL_SIZE = 4  # connections of a PostgreSQL store's pool by default (setting store_pool_size)


class Store(
    IntervalsMixin,
    SeriesMixin,
    IncidentsMixin,
    DeploysMixin,
    PlansMixin,
    StatusMixin,
    LeasesMixin,
    StatementsMixin,
    FleetMixin,
):
    """All reads and writes of querywatch's history. Open one per process.

    ``Store(path)`` is the SQLite engine; a ``postgresql://`` location opens the PostgreSQL
    engine (``querywatch.store.postgres.PgStore``, a subclass overriding the engine's hooks).
    """

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> Store:
        if cls is Store and pg_target(path) is not None:
            if "postgresql" not in ENGINES:  # its module registers it, loaded when first opened
                importlib.import_module("querywatch.store.postgres")
            return super().__new__(ENGINES["postgresql"])
        return super().__new__(cls)

    def __init__(
        self,
        path: str | Path,
        *,
        retention: Retention | None = None,
        create: bool = True,
        clock: Any = time.time,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.path = Path(path)
        self.pool_size = pool_size  # connections of the PostgreSQL engine's pool (store_pool_size)
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

    # -- writing intervals ------------------------------------------------------------------------

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
            return kcache.save(conn, server_id, interval_id, usage, ids)

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

    def open_topology_incident(self, incident: TopologyIncident) -> TopologyIncident:
        """Open a failover, lag or unreachable page unless one with its key is open; returns
        the open one (``incident`` itself when this call opened it)."""
        with self._errors(), self._transaction() as conn:
            return replication.open_incident(conn, incident)

    def topology_incidents(
        self, server_id: int | None = None, *, open_only: bool = True
    ) -> list[TopologyIncident]:
        with self._errors():
            return replication.incidents(self._conn, server_id, open_only=open_only)

    def resolve_topology_incident(self, server_id: int, ident: str, at: float) -> bool:
        """Close an open topology incident; False when it was closed already."""
        with self._errors(), self._transaction() as conn:
            return replication.resolve_incident(conn, server_id, ident, at)

    # -- reading --------------------------------------------------------------------------------

    # -- deploys ---------------------------------------------------------------------------------

    # -- incidents --------------------------------------------------------------------------------

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

    # -- retention ----------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        with self._errors():
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    # -- plans (querywatch.advise) ------------------------------------------------------------

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
