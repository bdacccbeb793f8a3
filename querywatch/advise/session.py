"""The advisor's own short-lived connection, and the read-only, rolled-back, time-limited
transaction every advisor query runs in.

The advisor never uses the monitoring connection of ``watch``: it opens its own
(``application_name=querywatch``) and closes it when done. Each unit of work runs inside
``BEGIN; SET TRANSACTION READ ONLY; SET LOCAL statement_timeout ...; ...; ROLLBACK``.
hypopg's hypothetical indexes live in the backend's memory, outside transactions: they are dropped
explicitly (and vanish with the connection anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from ..errors import ConnectError, InputError, QueryTimeout, SourceError
from ..source.postgres import APPLICATION_NAME, PostgresSource, describe_dsn

log = logging.getLogger("querywatch.advise")

DEFAULT_TIMEOUT_MS = 2000
DEFAULT_LOCK_TIMEOUT_MS = 500

SERVER = """
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       current_database() AS database,
       (SELECT extversion FROM pg_extension WHERE extname = 'hypopg') AS hypopg,
       (SELECT extnamespace::regnamespace::text FROM pg_extension
         WHERE extname = 'hypopg') AS hypopg_schema,
       (SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'hypopg') AS hypopg_available
"""
LOCAL_LIMITS = """
SELECT set_config('statement_timeout', %(timeout)s, true),
       set_config('lock_timeout', %(lock_timeout)s, true)
"""


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Session:
    """One connection the advisor reads plans and the catalog through."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        owned: bool = False,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    ) -> None:
        self.conn = conn
        self.owned = owned
        self.timeout_ms = timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.leftovers: list[str] = []  # prepared statements to DEALLOCATE after an aborted block
        with self.readonly() as cur:
            cur.execute(SERVER)
            row = cur.fetchone()
        assert row is not None
        self.version_num: int = row["version_num"]
        self.version: str = row["version"]
        self.database: str = row["database"]
        self.hypopg: str | None = row["hypopg"]
        self.hypopg_schema: str | None = row["hypopg_schema"]
        self.hypopg_available: bool = row["hypopg_available"]

    @classmethod
    def open(cls, dsn: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Session:
        """A dedicated connection to ``dsn`` (application_name=querywatch), closed by close()."""
        try:
            conninfo = make_conninfo(dsn, application_name=APPLICATION_NAME, connect_timeout="5")
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.ProgrammingError as exc:
            raise ConnectError(f"invalid dsn {dsn!r}: {first_line(exc)}") from None
        except psycopg.Error as exc:
            raise ConnectError(
                f"cannot connect to {describe_dsn(dsn)}: {first_line(exc)}"
            ) from None
        try:
            return cls(conn, owned=True, timeout_ms=timeout_ms)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def of(cls, target: Any, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Session:
        """A session for a DSN, a PostgresSource (its DSN, not its connection) or a connection."""
        if isinstance(target, Session):
            return target
        if isinstance(target, PostgresSource):
            return cls.open(target.dsn, timeout_ms=timeout_ms)
        if isinstance(target, str):
            return cls.open(target, timeout_ms=timeout_ms)
        if isinstance(target, psycopg.Connection):
            return cls(target, timeout_ms=timeout_ms)
        raise InputError(
            f"advise: cannot connect through {type(target).__name__!r}"
            " (give a DSN, a PostgresSource or a psycopg connection)"
        )

    @property
    def major(self) -> int:
        return self.version_num // 10000

    @property
    def generic_plan_option(self) -> bool:
        """EXPLAIN (GENERIC_PLAN) exists from PostgreSQL 16."""
        return self.version_num >= 160000

    @contextmanager
    def readonly(self, timeout_ms: int | None = None) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A cursor in a read-only transaction that is always rolled back, under timeouts."""
        limits = {
            "timeout": f"{timeout_ms or self.timeout_ms}ms",
            "lock_timeout": f"{self.lock_timeout_ms}ms",
        }
        try:
            with (
                self.conn.transaction(force_rollback=True),
                self.conn.cursor(row_factory=dict_row) as cur,
            ):
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(LOCAL_LIMITS, limits)
                yield cur
        except (pgerrors.QueryCanceled, pgerrors.LockNotAvailable) as exc:
            raise QueryTimeout(
                f"advisor query stopped after {limits['timeout']}: {first_line(exc)}"
            ) from None
        except psycopg.OperationalError as exc:
            raise ConnectError(f"lost the advisor connection: {first_line(exc)}") from None
        except psycopg.Error as exc:
            raise SourceError(f"advisor query failed: {first_line(exc)}") from None
        finally:
            self._deallocate_leftovers()

    def _deallocate_leftovers(self) -> None:
        """Prepared statements outlive a rollback: drop those an aborted transaction left."""
        while self.leftovers and not self.conn.closed:
            name = self.leftovers.pop()
            try:
                with self.conn.transaction(force_rollback=True):
                    self.conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                log.debug("could not deallocate %s: %s", name, first_line(exc))

    def close(self) -> None:
        if self.owned and not self.conn.closed:
            self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
