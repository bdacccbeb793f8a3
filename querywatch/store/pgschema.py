"""The PostgreSQL store's schema: ``schema.MIGRATIONS`` translated, partitions, schema version.

The same migration scripts as SQLite, translated by ``ddl``: INTEGER -> BIGINT, REAL -> DOUBLE
PRECISION, ``id INTEGER PRIMARY KEY`` -> an identity column, ``end`` quoted. The raw tables
(``intervals`` and the per-interval ``deltas``, ``activity``, ``kcache``) are range-partitioned by
interval id, one partition per day: an interval's id is ``day << 32 | sequence`` where ``day`` is
the UTC day its start falls in, so retention drops a whole day of all four tables at once. Foreign
keys into the partitioned tables are left out (retention drops partitions, never single rows).
``qw_schema`` holds the version, as SQLite's ``PRAGMA user_version`` does. A step SQLite takes
by rebuilding tables has its own PostgreSQL statements in ``OWN_STEPS`` (``SERVER_KEYS``: every key
of a server's rows led by ``server_id``, so the schema distributes by server on Citus).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from ..errors import StoreCorrupt, StoreError
from . import schema
from .dialect import translate
from .rollup import SETTLE_S
from .schema import COUNTER_COLUMNS

DAY_S = 86400
LOCK_ID = schema.APPLICATION_ID  # advisory lock: migrations and partition DDL, one at a time
PARTITIONED = {"intervals": "id", "deltas": "interval_id", "activity": "interval_id"}
PARTITIONED_LATER = {"kcache": "interval_id"}  # created by a later migration

VERSION_DDL = "CREATE TABLE IF NOT EXISTS qw_schema (version INTEGER NOT NULL)"
SELECT_VERSION = "SELECT version FROM qw_schema"
SELECT_TABLES = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r'
"""
SELECT_DAYS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = current_schema() AND p.relname = 'intervals'
"""
COPY_DELTAS = (
    f"COPY deltas (server_id, interval_id, statement_id, {', '.join(COUNTER_COLUMNS)}) FROM STDIN"
)
INTERVAL_ID = "(?::bigint << 32) + nextval('interval_ids')"  # the first parameter is the day


# schema.SERVER_KEYS on PostgreSQL: the per-interval tables get their server (backfilled from
# intervals), every primary key and foreign key between a server's tables is led by server_id.
_PER_INTERVAL = {
    "deltas": "server_id, interval_id, statement_id",
    "activity": "server_id, interval_id, fingerprint",
    "kcache": "server_id, interval_id, statement_id",
}
SERVER_KEYS = [
    *(
        statement
        for table, key in _PER_INTERVAL.items()
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN server_id BIGINT",
            f"UPDATE {table} t SET server_id = i.server_id FROM intervals i "
            "WHERE i.id = t.interval_id",
            f"ALTER TABLE {table} ALTER COLUMN server_id SET NOT NULL",
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey",
            f"ALTER TABLE {table} ADD PRIMARY KEY ({key})",
        )
    ),
    "ALTER TABLE rollups DROP CONSTRAINT rollups_pkey, DROP CONSTRAINT rollups_statement_id_fkey",
    "ALTER TABLE rollups ADD PRIMARY KEY (server_id, resolution, bucket, statement_id)",
    "ALTER TABLE rollup_buckets DROP CONSTRAINT rollup_buckets_pkey",
    "ALTER TABLE rollup_buckets ADD PRIMARY KEY (server_id, resolution, bucket)",
    "ALTER TABLE statements DROP CONSTRAINT statements_pkey",
    "ALTER TABLE statements ADD PRIMARY KEY (server_id, id)",
    "ALTER TABLE rollups ADD FOREIGN KEY (server_id, statement_id) "
    "REFERENCES statements (server_id, id)",
    "ALTER TABLE gaps DROP CONSTRAINT gaps_pkey",
    "ALTER TABLE gaps ADD PRIMARY KEY (server_id, id)",
    "ALTER TABLE incident_events ADD COLUMN server_id BIGINT, ADD COLUMN seq BIGINT",
    "UPDATE incident_events t SET server_id = i.server_id FROM incidents i "
    "WHERE i.id = t.incident_id",
    "UPDATE incident_events t SET seq = n.seq FROM (SELECT ctid AS row, row_number() OVER "
    "(PARTITION BY incident_id ORDER BY at, ctid) - 1 AS seq FROM incident_events) n "
    "WHERE t.ctid = n.row",
    "ALTER TABLE incident_events ALTER COLUMN server_id SET NOT NULL, "
    "ALTER COLUMN seq SET NOT NULL, DROP CONSTRAINT incident_events_incident_id_fkey",
    "DROP INDEX incident_events_incident",
    "ALTER TABLE incidents DROP CONSTRAINT incidents_pkey",
    "ALTER TABLE incidents ADD PRIMARY KEY (server_id, id)",
    "ALTER TABLE incident_events ADD PRIMARY KEY (server_id, incident_id, seq)",
    "ALTER TABLE incident_events ADD FOREIGN KEY (server_id, incident_id) "
    "REFERENCES incidents (server_id, id)",
]
OWN_STEPS: dict[str, list[str]] = {schema.SERVER_KEYS: SERVER_KEYS}


def day_of(t: float) -> int:
    return int(t // DAY_S)


def day_end(day: int) -> float:
    return float((day + 1) * DAY_S)


def ddl(script: str) -> list[str]:
    """One SQLite migration script as PostgreSQL statements."""
    out: list[str] = []
    for statement in script.split(";"):
        text = statement.strip()
        if not text:
            continue
        text = re.sub(r"\s*\bWITHOUT ROWID\b", "", text)
        text = re.sub(r"\s*REFERENCES intervals\s*\(id\)(\s+ON DELETE CASCADE)?", "", text)
        found = re.match(r"CREATE TABLE (\w+)", text)
        table = found.group(1) if found else ""
        key = PARTITIONED.get(table) or PARTITIONED_LATER.get(table)
        if key:
            text = re.sub(r"\s*REFERENCES \w+\s*\(\w+\)(\s+ON DELETE CASCADE)?", "", text)
        if table == "intervals":
            out.append("CREATE SEQUENCE IF NOT EXISTS interval_ids")
            text = re.sub(
                r"\bid INTEGER PRIMARY KEY\b",
                "id INTEGER NOT NULL DEFAULT ((floor(extract(epoch FROM clock_timestamp()) / "
                f"{DAY_S})::bigint << 32) + nextval('interval_ids'))",
                text,
            )
            text = text[: text.rindex(")")].rstrip() + ",\n    PRIMARY KEY (server_id, id)\n)"
        text = re.sub(
            r"\bid INTEGER PRIMARY KEY\b",
            "id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            text,
        )
        text = re.sub(r"\bINTEGER\b", "BIGINT", text)
        text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)
        if key:
            text += f" PARTITION BY RANGE ({key})"
        out.append(translate(text, bound=False))
    return out


def migrate(raw: psycopg.Connection[Any], location: str, create: bool) -> None:
    """Bring the schema to ``schema.LATEST``, one migration per transaction, under a lock."""
    with raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        has_version = raw.execute("SELECT to_regclass('qw_schema') IS NOT NULL").fetchone()
        tables = raw.execute(SELECT_TABLES).fetchone()
        if has_version and not has_version[0]:
            if tables and tables[0]:
                raise StoreCorrupt(
                    f"{location!r} is not a querywatch store: its schema holds other tables "
                    "(fix: name another schema with options=-csearch_path=NAME in the DSN)"
                )
            if not create:
                raise StoreError(
                    f"no store at {location!r} (fix: run `querywatch collect` first, "
                    "or pass --store)"
                )
            raw.execute(VERSION_DDL)
            raw.execute("INSERT INTO qw_schema (version) VALUES (0)")
    while True:
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            row = raw.execute(SELECT_VERSION).fetchone()
            version = int(row[0]) if row else 0
            if version > schema.LATEST:
                raise StoreCorrupt(
                    f"store {location!r} has schema version {version}, newer than this "
                    f"querywatch knows ({schema.LATEST}) (fix: upgrade querywatch)"
                )
            if version == schema.LATEST:
                return
            script = schema.MIGRATIONS[version]
            for statement in OWN_STEPS.get(script) or ddl(script):
                raw.execute(statement)
            raw.execute("UPDATE qw_schema SET version = %s", (version + 1,))


def ensure_partitions(raw: psycopg.Connection[Any], day: int) -> None:
    """The partitions of ``day`` and the next day exist (created under the advisory lock)."""
    wanted = [d for d in (day, day + 1) if not _exists(raw, f"intervals_d{d}")]
    if not wanted:
        return
    with raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        for d in wanted:
            for table in _partitioned(raw):
                name = f"{table}_d{d}"
                if _exists(raw, name):
                    continue
                raw.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(name),
                        sql.Identifier(table),
                        sql.Literal(d << 32),
                        sql.Literal((d + 1) << 32),
                    )
                )


def drop_partitions_before(raw: psycopg.Connection[Any], cut: float) -> list[int]:
    """Drop every day whose intervals all ended by ``cut``; returns the days dropped."""
    days = sorted(
        int(name[len("intervals_d") :])
        for (name,) in raw.execute(SELECT_DAYS).fetchall()
        if re.fullmatch(r"intervals_d\d+", name)
    )
    dropped = [d for d in days if day_end(d) + SETTLE_S <= cut]
    for d in dropped:
        for table in _partitioned(raw):
            raw.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"{table}_d{d}")))
    return dropped


def _partitioned(raw: psycopg.Connection[Any]) -> list[str]:
    tables = list(PARTITIONED)
    for table in PARTITIONED_LATER:
        if _exists(raw, table):
            tables.append(table)
    return tables


def _exists(raw: psycopg.Connection[Any], name: str) -> bool:
    row = raw.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])
