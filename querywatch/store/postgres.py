"""The PostgreSQL store engine: a shared store for many watchers (``store = "postgresql://..."``).

``PgStore`` is the ``Store`` with the engine's hooks replaced: a psycopg connection pool (one
connection per thread for the duration of a store operation), the same migrations translated to
PostgreSQL (``querywatch.store.pgschema``) with the version in ``qw_schema``, interval rows written
with COPY, and retention that drops whole daily partitions of the raw tables instead of DELETE.
Every other query is the engine-neutral SQL of the concept modules, run through ``PgConnection``,
which translates SQLite's dialect (``?`` placeholders, ``CAST(x AS INTEGER)`` truncation, the
``end`` column) on the fly.

The location is a libpq URI; its ``search_path`` option names the schema (created on first use),
else ``public``. ``QW_TEST_PG_STORE`` (tests only) maps every file store to a schema of
that database named after the file's path, so the whole test suite can run on PostgreSQL.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool

from ..errors import StoreError, StoreUnreachable
from ..source.queries import MARKER
from . import pgschema, rollup
from .db import Connection
from .dialect import translate
from .location import TEST_STORE_ENV as TEST_STORE_ENV
from .location import pg_target as pg_target
from .location import redact
from .sqlite import ENGINES, Store

log = logging.getLogger("querywatch.store.postgres")

CONNECT_TIMEOUT_S = 5


class _Number(Loader):
    """numeric (what sum() of bigint gives) as int or float, as SQLite returns them."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        if "." in text or "e" in text or "N" in text:
            return float(text)
        return int(text)


_INSERT_INTERVAL = re.compile(r"\s*INSERT INTO intervals \(([^)]*)\)\s*VALUES \(", re.I)


class PgConnection:
    """A psycopg connection that speaks the DB-API subset of ``querywatch.store.db``.

    Every statement carries querywatch's marker comment: a store on a watched server (the same
    cluster, another database) must not show up as that server's workload in rankings and
    diagnoses. An INSERT into ``intervals`` (from any store module) gets its id here:
    ``day << 32`` plus a sequence, ``day`` being the day of its start, after ``on_day(day)`` made
    that day's partitions.
    """

    def __init__(
        self, raw: psycopg.Connection[Any], on_day: Callable[[int], None] | None = None
    ) -> None:
        self.raw = raw
        self.on_day = on_day

    def execute(self, query: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        found = _INSERT_INTERVAL.match(query)
        if found and parameters:
            query, parameters = self._with_interval_id(query, parameters, found)
        if parameters:
            cur.execute(MARKER + translate(query), tuple(parameters))
        else:
            cur.execute(MARKER + translate(query, bound=False))
        return cur

    def _with_interval_id(
        self, query: str, parameters: Sequence[Any], found: re.Match[str]
    ) -> tuple[str, Sequence[Any]]:
        columns = [c.strip().strip('"') for c in found.group(1).split(",")]
        if "id" in columns or "start" not in columns:
            return query, parameters
        day = pgschema.day_of(float(parameters[columns.index("start")]))
        if self.on_day is not None:
            self.on_day(day)
        head, tail = query[: found.end()], query[found.end() :]
        head = head.replace("INSERT INTO intervals (", "INSERT INTO intervals (id, ", 1)
        return f"{head}{pgschema.INTERVAL_ID}, {tail}", (day, *parameters)

    def executemany(
        self, query: str, seq_of_parameters: Iterable[Sequence[Any]], /
    ) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        rows = [tuple(p) for p in seq_of_parameters]
        if _INSERT_INTERVAL.match(query):
            for row in rows:
                cur = self.execute(query, row)
            return cur
        if rows:
            cur.executemany(MARKER + translate(query), rows)
        return cur


def _configure(raw: psycopg.Connection[Any]) -> None:
    raw.adapters.register_loader("numeric", _Number)


class PgStore(Store):
    """The Store on PostgreSQL; see the module docstring."""

    def _open(self, create: bool) -> Any:
        target = pg_target(self.location)
        assert target is not None
        self.dsn, self._schema = target
        self.location = redact(self.dsn) if self._schema is None else str(self.path)
        self.path = Path(self.location)
        self._local = threading.local()
        self._known_days: set[int] = set()
        try:
            first = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                cursor_factory=psycopg.ClientCursor,
            )
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        with first:
            _configure(first)
            try:
                schema = self._use_schema(first, create)
                pgschema.migrate(first, self.location, create)
            except psycopg.Error as exc:
                raise self._failed(exc) from None
        options = f"-csearch_path={schema}"
        self._pool: ConnectionPool[Any] = ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            kwargs={
                "autocommit": True,
                "cursor_factory": psycopg.ClientCursor,
                "options": options,
                "connect_timeout": CONNECT_TIMEOUT_S,
            },
            configure=_configure,
            open=True,
            name="querywatch-store",
        )
        return None

    def _unreachable(self, exc: psycopg.Error) -> StoreError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = redact(self.dsn)
        if isinstance(exc, psycopg.OperationalError):
            return StoreUnreachable(
                f"cannot reach store {where!r}: {first} (fix: check the store DSN, that the "
                "server is up and the role may connect)"
            )
        return StoreError(f"bad store location {where!r}: {first} (fix: a postgresql:// URI)")

    def _failed(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.OperationalError):
            return self._unreachable(exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return StoreError(f"store {self.location!r}: {first}")

    def _use_schema(self, raw: psycopg.Connection[Any], create: bool) -> str:
        """Select (and create when allowed) the store's schema; returns its name."""
        name = self._schema
        if name is None:
            row = raw.execute("SELECT (current_schemas(false))[1], current_setting('search_path')")
            found = row.fetchone()
            assert found is not None
            path = [p.strip().strip('"') for p in str(found[1]).split(",") if p.strip()]
            name = found[0] or (path[0] if path and path[0] != "$user" else "public")
        exists = raw.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone()
        if not exists:
            if not create:
                raise StoreError(
                    f"no store at {self.location!r} (fix: run `querywatch collect` first, "
                    "or pass --store)"
                )
            raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))
        raw.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        return name

    # -- the engine's hooks ---------------------------------------------------------------------
    @property
    def _conn(self) -> Connection:
        held: PgConnection | None = getattr(self._local, "conn", None)
        if held is None:
            raise StoreError("store: used outside a store operation (internal error)")
        return held

    @property
    def engine(self) -> str:
        return "postgresql"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Hold one pooled connection for this thread's operation; translate psycopg errors."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        try:
            with self._pool.connection() as raw:
                self._local.conn = PgConnection(raw, self._ensure_day)
                try:
                    yield
                finally:
                    self._local.conn = None
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreUnreachable(
                    f"cannot reach store {self.location!r}: {exc} (fix: check that the store "
                    "server is up)"
                ) from None
            raise

    @contextmanager
    def _transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """BEGIN ... COMMIT with querywatch's marker (psycopg's own BEGIN and COMMIT would count
        as the watched server's workload when the store lives there)."""
        held = conn or self._conn
        assert isinstance(held, PgConnection)
        held.raw.execute(MARKER + "BEGIN")
        try:
            yield held
        except BaseException:
            with suppress(psycopg.Error):  # a broken connection: the pool discards it
                held.raw.execute(MARKER + "ROLLBACK")
            raise
        held.raw.execute(MARKER + "COMMIT")

    def close(self) -> None:
        self._pool.close()

    def size_bytes(self) -> int:
        with self._errors():
            row = self._conn.execute(pgschema.SIZE).fetchone()
        return int(row[0] or 0)

    def _insert_deltas(self, conn: Connection, rows: list[list[Any]]) -> None:
        assert isinstance(conn, PgConnection)
        with conn.raw.cursor().copy(MARKER + pgschema.COPY_DELTAS) as copy:
            for row in rows:
                copy.write_row(row)

    def _ensure_day(self, day: int) -> None:
        if day in self._known_days:
            return
        conn = self._conn
        assert isinstance(conn, PgConnection)
        pgschema.ensure_partitions(conn.raw, day)
        self._known_days.add(day)

    def _exclusive_maintenance(self, conn: Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (pgschema.LOCK_ID + 1,))

    def _retain(self, conn: Connection, now: float) -> None:
        assert isinstance(conn, PgConnection)
        raw_cut = min(now - self.retention.raw_s, rollup.mark(conn, "rollup_minute"))
        pgschema.drop_partitions_before(conn.raw, raw_cut)
        self._known_days = {d for d in self._known_days if pgschema.day_end(d) > raw_cut}
        rollup.apply_retention(conn, now, self.retention, raw=False)


def store_exists(location: str | Path) -> bool:
    """True when a store is at ``location``: the file exists, or the PostgreSQL schema holds a
    querywatch store (an unreachable server counts as existing: opening it says why it fails)."""
    target = pg_target(location)
    if target is None:
        return Path(location).exists()
    dsn, schema = target
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            if schema is None:
                row = conn.execute("SELECT to_regclass('qw_schema') IS NOT NULL").fetchone()
            else:
                row = conn.execute(
                    "SELECT to_regclass(format('%%I.qw_schema', %s::text)) IS NOT NULL", (schema,)
                ).fetchone()
    except psycopg.Error:
        return True
    return bool(row and row[0])


ENGINES["postgresql"] = PgStore
