"""The live source: one monitoring connection to one server, with timeouts on every query."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from ..errors import CapabilityError, ConnectError, QueryTimeout, SourceError
from ..fingerprint import Shape, shape
from ..model import (
    ActivitySample,
    Counters,
    DatabaseCounters,
    SessionSample,
    Snapshot,
    StatementKey,
    StatementStats,
)
from . import queries
from .capabilities import Capabilities, from_row
from .kcache import KcacheCounters, KcacheReading, KcacheStatus, KcacheTracker, KcacheUsage

log = logging.getLogger("querywatch.source")

APPLICATION_NAME = "querywatch"
SHAPE_CACHE_SIZE = 10_000


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    params.pop("password", None)
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    return shown or "(libpq defaults: PGHOST, PGPORT, PGUSER, PGDATABASE)"


def server_label(dsn: str) -> str:
    """A short name for a server: host:port/dbname (libpq defaults where missing)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "default"
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "local"))
    port = str(params.get("port") or os.environ.get("PGPORT", "5432"))
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or ""
    if host.startswith("/"):
        host = "local"
    return f"{host}:{port}/{dbname}" if dbname else f"{host}:{port}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class PostgresSource:
    """Reads pg_stat_statements, pg_stat_database and pg_stat_activity over one connection."""

    def __init__(
        self,
        dsn: str,
        *,
        statement_timeout_ms: int = 2000,
        lock_timeout_ms: int = 1000,
        connect_timeout_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dsn = dsn
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self._conn: psycopg.Connection[Any] | None = None
        self._caps: Capabilities | None = None
        self._max_connections: int | None = None
        self._shapes: dict[str, Shape] = {}
        self._rows: dict[tuple[Any, ...], tuple[tuple[Any, ...], StatementStats]] = {}
        self.kcache_status: KcacheStatus | None = None  # read on connect
        self.kcache_usage: KcacheUsage | None = None  # between the last two snapshots
        self._kcache = KcacheTracker()
        self._kcache_failed = False

    # -- connection -----------------------------------------------------------------------
    def connect(self) -> Capabilities:
        self.close()
        try:
            conninfo = make_conninfo(
                self.dsn,
                application_name=APPLICATION_NAME,
                connect_timeout=str(self.connect_timeout_s),
            )
            self._conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.ProgrammingError as exc:
            raise ConnectError(f"invalid dsn {self.dsn!r}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            where = describe_dsn(self.dsn)
            raise ConnectError(f"cannot connect to {where}: {_first_line(exc)}") from None
        self._setup_session()
        self._caps = self._read_capabilities()
        self.kcache_status = self._read_kcache_status(self._caps)
        return self._caps

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            return self.connect()
        return self._caps

    def _setup_session(self) -> None:
        params = {
            "statement_timeout": f"{self.statement_timeout_ms}ms",
            "lock_timeout": f"{self.lock_timeout_ms}ms",
            "idle_timeout": "60s",
        }
        self._fetch(queries.SESSION_SETUP, params)

    def _read_capabilities(self) -> Capabilities:
        rows = self._fetch(queries.SERVER_FACTS)
        return from_row(rows[0])

    # -- running monitoring queries ---------------------------------------------------------
    @contextmanager
    def _cursor(self, *, dicts: bool = True) -> Iterator[psycopg.Cursor[Any]]:
        if self._conn is None or self._conn.closed:
            raise ConnectError(f"not connected to {describe_dsn(self.dsn)}")
        try:
            cursor = self._conn.cursor(row_factory=dict_row) if dicts else self._conn.cursor()
            with cursor as cur:
                yield cur
        except (pgerrors.QueryCanceled, pgerrors.LockNotAvailable) as exc:
            raise QueryTimeout(f"monitoring query timed out: {_first_line(exc)}") from None
        except pgerrors.InsufficientPrivilege as exc:
            raise CapabilityError(
                f"permission denied: {_first_line(exc)} "
                f"(fix: GRANT pg_monitor TO {self._role_hint()})"
            ) from None
        except (pgerrors.UndefinedTable, pgerrors.UndefinedFunction) as exc:
            raise CapabilityError(
                f"pg_stat_statements is not available: {_first_line(exc)} "
                "(fix: run `querywatch check` for the exact steps)"
            ) from None
        except pgerrors.ObjectNotInPrerequisiteState as exc:
            raise CapabilityError(
                f"pg_stat_statements is not loaded: {_first_line(exc)} (fix: add "
                "shared_preload_libraries = 'pg_stat_statements' to postgresql.conf and restart)"
            ) from None
        except psycopg.OperationalError as exc:
            self.close()
            where = describe_dsn(self.dsn)
            raise ConnectError(f"lost connection to {where}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise SourceError(f"monitoring query failed: {_first_line(exc)}") from None

    def _role_hint(self) -> str:
        return self._caps.role if self._caps else "<monitoring role>"

    def fetch(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """Run one monitoring query (a named constant, bound ``params``) with this session's
        timeouts and error translation (e.g. querywatch.source.cores)."""
        return self._fetch(query, params)

    def _fetch(self, query: str | sql.Composed, params: Any = None) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _fetch_tuples(self, query: sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        with self._cursor(dicts=False) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _with_schema(self, template: str) -> sql.Composed:
        caps = self.capabilities
        if caps.pgss_schema is None:
            raise CapabilityError(
                f"pg_stat_statements is not created in database {caps.database!r} "
                "(fix: CREATE EXTENSION pg_stat_statements;)"
            )
        return sql.SQL(template).format(schema=sql.Identifier(caps.pgss_schema))

    # -- reads ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """One consistent read of the cumulative counters (no query texts)."""
        caps = self.capabilities
        clock = self._fetch(queries.SERVER_CLOCK)[0]
        started = clock["started"]
        dealloc, stats_reset = self._info(caps)
        rows = self._fetch_tuples(self._with_schema(caps.statements_query()))
        kcache = self._kcache_entries()
        taken_at = self.clock()
        database = self._database()
        snapshot = Snapshot(
            taken_at=taken_at,
            server_started=started.timestamp(),
            server_taken_at=clock["now"].timestamp(),
            stats_reset=stats_reset,
            dealloc=dealloc,
            statements=self._statement_stats(rows),
            database=database,
        )
        reading = (
            None if kcache is None else KcacheReading(taken_at, snapshot.server_started, kcache)
        )
        self.kcache_usage = self._kcache.observe(reading)
        return snapshot

    # -- pg_stat_kcache (optional: CPU time, reads, writes and faults per statement) ---------------
    def _read_kcache_status(self, caps: Capabilities) -> KcacheStatus:
        self._kcache_failed = False
        try:
            row = self._fetch(queries.KCACHE_FACTS)[0]
        except ConnectError:
            raise
        except SourceError as exc:
            log.warning("pg_stat_kcache state not read: %s", exc)
            return KcacheStatus(None, None, False, None)
        preloaded = None if caps.preload is None else "pg_stat_kcache" in caps.preload
        return KcacheStatus(row["version"], row["schema"], bool(row["available"]), preloaded)

    def _kcache_entries(self) -> dict[StatementKey, KcacheCounters] | None:
        """pg_stat_kcache's counters when it is usable; a failed read leaves it out (until the
        next connection when it is not a timeout), never the snapshot."""
        status = self.kcache_status
        if status is None or not status.usable or status.schema is None or self._kcache_failed:
            return None
        query = sql.SQL(queries.KCACHE_STATEMENTS).format(schema=sql.Identifier(status.schema))
        try:
            rows = self._fetch_tuples(query)
        except ConnectError:
            raise
        except SourceError as exc:
            self._kcache_failed = not isinstance(exc, QueryTimeout)
            log.warning("pg_stat_kcache not read: %s", exc)
            return None
        return {StatementKey(r[0], r[1], r[2], bool(r[3])): KcacheCounters(*r[4:10]) for r in rows}

    def system_identifier(self) -> int | None:
        """The cluster's system identifier (``pg_control_system()``), or None when the role may
        not read it: then a swapped server is still told apart by its postmaster start time."""
        try:
            row = self._fetch(queries.SYSTEM_IDENTIFIER)[0]
        except CapabilityError as exc:
            log.info("system identifier not readable, comparing start times only: %s", exc)
            return None
        return int(row["system_identifier"])

    def _statement_stats(self, rows: list[tuple[Any, ...]]) -> dict[StatementKey, StatementStats]:
        """Records for the rows, reusing last snapshot's for rows that did not change."""
        previous, current = self._rows, {}
        stats: dict[StatementKey, StatementStats] = {}
        for row in rows:
            ident = (row[0], row[1], row[2], row[21])
            cached = previous.get(ident)
            if cached is None or cached[0] != row:
                key = StatementKey(row[0], row[1], row[2], bool(row[21]))
                cached = (row, StatementStats(key, Counters(*row[3:21]), _ts(row[22])))
            current[ident] = cached
            stats[cached[1].key] = cached[1]
        self._rows = current
        return stats

    def _info(self, caps: Capabilities) -> tuple[int | None, float | None]:
        if not caps.has_info:
            return None, None
        row = self._fetch(self._with_schema(queries.STATEMENTS_INFO))[0]
        return int(row["dealloc"]), _ts(row["stats_reset"])

    def _database(self) -> DatabaseCounters:
        row = self._fetch(queries.DATABASE_TOTALS)[0]
        return DatabaseCounters(**{k: float(v) for k, v in row.items()})

    def plain_statements(self) -> int:
        """The reference read for benchmarks: all columns, no texts."""
        return len(self._fetch_tuples(self._with_schema(queries.PLAIN_STATEMENTS)))

    def _shape(self, text: str) -> Shape | None:
        """Fingerprint and normalized text of an activity query, cached by its raw text."""
        if not text.strip():
            return None
        found = self._shapes.get(text)
        if found is None:
            if len(self._shapes) >= SHAPE_CACHE_SIZE:
                self._shapes.clear()
            found = self._shapes[text] = shape(text)
        return found

    def texts(self, queryids: Iterable[int]) -> dict[int, str]:
        """Query texts of the given queryids (normalized by pg_stat_statements)."""
        wanted = sorted(set(queryids))
        if not wanted:
            return {}
        query = self._with_schema(queries.STATEMENT_TEXTS)
        rows = self._fetch(query, {"queryids": wanted})
        return {int(r["queryid"]): str(r["query"]) for r in rows if r["query"] is not None}

    def sample_activity(self) -> ActivitySample:
        caps = self.capabilities
        rows = self._fetch(caps.activity_query())
        if self._max_connections is None:
            row = self._fetch(queries.MAX_CONNECTIONS)[0]
            self._max_connections = int(row["max_connections"])
        sessions = tuple(_session(r, self._shape(r["query"] or "")) for r in rows)
        return ActivitySample(self.clock(), sessions, self._max_connections)


def _session(row: dict[str, Any], found: Shape | None) -> SessionSample:
    return SessionSample(
        pid=int(row["pid"]),
        state=str(row["state"]),
        wait_event_type=row["wait_event_type"],
        wait_event=row["wait_event"],
        queryid=row["query_id"],
        fingerprint=found.fingerprint if found else None,
        blocking_pids=tuple(row["blocking_pids"] or ()),
        xact_seconds=row["xact_seconds"],
        query=found.query if found else "",
        query_start=row.get("query_start"),
        query_seconds=row.get("query_seconds"),
    )
