"""``querywatch store copy``: move a store's history into another store (any engine to any).

Servers are matched by name, statements by their key, texts by fingerprint; ids are given anew by
the target (interval ids are day-encoded on PostgreSQL), so a single-host SQLite history can join a
shared PostgreSQL store that already holds other servers. Every other table is copied generically
(columns both sides have; ``server_id``, ``statement_id`` and ``interval_id`` mapped), so tables
added by later migrations come along. A server that already has intervals in the target is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from . import rollup
from .db import Connection
from .sqlite import Store

FIRST = ("servers", "statements", "texts", "intervals")
SKIPPED = frozenset({"leases", "meta", "qw_schema"})  # leases belong to live watchers
MAPPED = ("server_id", "statement_id", "interval_id")
BATCH = 2000

SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid"
SQLITE_COLUMNS = "SELECT name, type, pk FROM pragma_table_info(?)"
PG_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.oid
"""
PG_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod),
    a.attidentity <> '' OR coalesce(a.attnum = ANY (i.indkey) AND i.indnatts = 1, false)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = current_schema() AND c.relname = ? AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
COUNT_INTERVALS = "SELECT count(*) FROM intervals WHERE server_id = ?"
STATEMENT_UPSERT = """
INSERT INTO statements ({columns}) VALUES ({marks})
ON CONFLICT (server_id, dbid, userid, queryid, toplevel) DO UPDATE SET fingerprint = excluded.fingerprint
RETURNING id
"""


@dataclass(frozen=True)
class Column:
    name: str
    generated_id: bool  # an integer primary key the target gives anew


@dataclass(frozen=True)
class CopyResult:
    servers: tuple[str, ...]
    rows: dict[str, int]  # rows copied per table

    def line(self) -> str:
        total = sum(self.rows.values())
        intervals = self.rows.get("intervals", 0)
        names = ", ".join(self.servers) or "none"
        return (
            f"copied {total} rows ({intervals} intervals) of {len(self.servers)} server(s): {names}"
        )


def tables(store: Store) -> list[str]:
    sql = PG_TABLES if store.engine == "postgresql" else SQLITE_TABLES
    return [r[0] for r in store._conn.execute(sql).fetchall()]


def columns(store: Store, table: str) -> list[Column]:
    sql = PG_COLUMNS if store.engine == "postgresql" else SQLITE_COLUMNS
    out = []
    for name, kind, pk in store._conn.execute(sql, (table,)).fetchall():
        integer = "int" in str(kind).lower()
        out.append(Column(name, bool(pk) and integer and name == "id"))
    return out


class _Copy:
    def __init__(self, source: Store, target: Store) -> None:
        self.source, self.target = source, target
        self.ids: dict[str, dict[int, int]] = {c: {} for c in MAPPED}
        self.rows: dict[str, int] = {}

    def run(self) -> CopyResult:
        with self.source._errors(), self.target._errors():
            names = self._servers()
            wanted = tables(self.target)
            order = [*FIRST, *(t for t in tables(self.source) if t not in FIRST)]
            for table in order:
                if table in SKIPPED or table not in wanted:
                    continue
                with self.target._transaction() as conn:
                    self.rows[table] = self._table(conn, table)
            self._roll_up_copied()
        return CopyResult(tuple(names), self.rows)

    def _servers(self) -> list[str]:
        rows = self.source._conn.execute("SELECT id, name, target, version FROM servers")
        names = []
        for sid, name, target, version in rows.fetchall():
            server = self.target.server(name, target, version)
            busy = self.target._conn.execute(COUNT_INTERVALS, (server.id,)).fetchone()[0]
            if busy:
                raise StoreError(
                    f"store copy: server {name!r} already has {busy} intervals in the target "
                    "(fix: copy into a store without that server's history)"
                )
            self.ids["server_id"][int(sid)] = server.id
            names.append(name)
        self.rows["servers"] = len(names)
        return names

    def _table(self, conn: Connection, table: str) -> int:
        if table == "servers":
            return self.rows["servers"]
        src = columns(self.source, table)
        dst = {c.name: c for c in columns(self.target, table)}
        new_ids = table in ("statements", "intervals")
        keep = [
            c.name
            for c in src
            if c.name in dst and not dst[c.name].generated_id and not (new_ids and c.name == "id")
        ]
        select = f"SELECT {', '.join(_q(c) for c in (['id'] if new_ids else []) + keep)}"
        count = 0
        for batch in self._batches(f"{select} FROM {table}"):
            count += self._write(conn, table, keep, batch, new_ids)
        return count

    def _batches(self, query: str) -> Iterator[list[Any]]:
        cur = self.source._conn.execute(query)
        while batch := cur.fetchmany(BATCH):
            yield batch

    def _write(
        self, conn: Connection, table: str, keep: list[str], batch: Sequence[Any], new_ids: bool
    ) -> int:
        marks = ", ".join("?" * len(keep))
        names = ", ".join(_q(c) for c in keep)
        written = 0
        if new_ids:
            upsert = table == "statements"
            sql = (
                STATEMENT_UPSERT.format(columns=names, marks=marks)
                if upsert
                else f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id"
            )
            target = "statement_id" if upsert else "interval_id"
            for row in batch:
                values = self._mapped(keep, row[1:])
                if values is None:
                    continue
                self.ids[target][int(row[0])] = int(conn.execute(sql, values).fetchone()[0])
                written += 1
            return written
        sql = f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        rows = [v for v in (self._mapped(keep, row) for row in batch) if v is not None]
        conn.executemany(sql, rows)
        return len(rows)

    def _mapped(self, keep: list[str], row: Sequence[Any]) -> list[Any] | None:
        values = list(row)
        for i, name in enumerate(keep):
            if name in self.ids and values[i] is not None:
                new = self.ids[name].get(int(values[i]))
                if new is None:
                    return None  # a row of something not copied (an orphan)
                values[i] = new
        return values

    def _roll_up_copied(self) -> None:
        """Roll up the copied raw intervals the target's marks already passed."""
        with self.source._errors():
            src_minute = rollup.mark(self.source._conn, "rollup_minute")
            src_hour = rollup.mark(self.source._conn, "rollup_hour")
        with self.target._transaction() as conn:
            dst_minute = rollup.mark(conn, "rollup_minute")
            dst_hour = rollup.mark(conn, "rollup_hour")
            if not dst_minute and not dst_hour:
                for key, value in (("rollup_minute", src_minute), ("rollup_hour", src_hour)):
                    conn.execute(rollup.SET_MARK, (key, repr(value)))
                return
            for server_id in self.ids["server_id"].values():
                rollup.roll_server(conn, server_id, src_minute, dst_minute, src_hour, dst_hour)


def _q(name: str) -> str:
    return f'"{name}"' if name == "end" else name


def copy_store(source: Store, target: Store) -> CopyResult:
    """Copy every server's history in ``source`` into ``target``."""
    return _Copy(source, target).run()
