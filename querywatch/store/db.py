"""The DB-API subset every store module uses, so the same SQL runs on SQLite and PostgreSQL.

``sqlite3.Connection`` satisfies it as is; ``querywatch.store.postgres.PgConnection`` adapts a
psycopg connection to it (``?`` placeholders and the few dialect differences translated).
Store modules type their ``conn`` parameter as ``Connection`` and write portable SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ..., /) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor: ...
