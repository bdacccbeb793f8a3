"""``server_id`` leads every key of a server's rows (issue 13: the schema distributes by server on
Citus), read from each engine's catalog; and an older SQLite store migrates keeping every row."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Store, schema
from querywatch.store.postgres import pg_target

# Rows that belong to no one server: servers itself (its id is the server id), the texts shared by
# fingerprint, the store's own bookkeeping, deploy markers and the alert outbox.
SHARED = frozenset({"meta", "servers", "texts", "deploys", "status", "outbox", "qw_schema"})

SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
SQLITE_COLUMNS = "SELECT name, pk FROM pragma_table_info(?)"
SQLITE_UNIQUE = 'SELECT name FROM pragma_index_list(?) WHERE "unique" = 1'
SQLITE_INDEX_COLUMNS = "SELECT name FROM pragma_index_info(?) ORDER BY seqno"

PG_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
PG_COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
"""
# Every unique key (primary first), each as its columns in key order.
PG_UNIQUE = """
SELECT i.indisprimary, array_agg(a.attname ORDER BY k.n)
FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(%s) AND i.indisunique
GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC
"""
# Foreign keys between two tables that both hold server rows: the columns on each side.
PG_FOREIGN = """
SELECT f.relname, array_agg(a.attname ORDER BY k.n), array_agg(b.attname ORDER BY k.n)
FROM pg_constraint c JOIN pg_class f ON f.oid = c.confrelid
CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(col, ref, n)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.col
JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = k.ref
WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f'
GROUP BY c.oid, f.relname
"""


def sqlite_keys(path: str) -> dict[str, tuple[set[str], list[list[str]]]]:
    """table -> (its columns, its unique keys as column lists, the primary key first)."""
    out: dict[str, tuple[set[str], list[list[str]]]] = {}
    with sqlite3.connect(path) as db:
        for (table,) in db.execute(SQLITE_TABLES).fetchall():
            cols = db.execute(SQLITE_COLUMNS, (table,)).fetchall()
            primary = [name for name, pk in sorted(cols, key=lambda c: c[1]) if pk]
            keys = [primary] if primary else []
            for (index,) in db.execute(SQLITE_UNIQUE, (table,)).fetchall():
                key = [r[0] for r in db.execute(SQLITE_INDEX_COLUMNS, (index,)).fetchall()]
                if key != primary:
                    keys.append(key)
            out[table] = ({c[0] for c in cols}, keys)
    return out


def pg_keys(location: str) -> tuple[dict[str, tuple[set[str], list[list[str]]]], list[tuple]]:
    target = pg_target(location)
    assert target is not None
    dsn, schema_name = target
    options = {"options": f"-csearch_path={schema_name}"} if schema_name else {}
    out: dict[str, tuple[set[str], list[list[str]]]] = {}
    foreign: list[tuple[str, str, list[str], list[str]]] = []
    with psycopg.connect(dsn, autocommit=True, **options) as pg:
        for (table,) in pg.execute(PG_TABLES).fetchall():
            cols = {r[0] for r in pg.execute(PG_COLUMNS, (table,)).fetchall()}
            found = pg.execute(PG_UNIQUE, (table,)).fetchall()
            keys = [list(r[1]) for r in found]
            if not (found and found[0][0]):
                keys.insert(0, ["(no primary key)"])
            out[table] = (cols, keys)
            for parent, mine, theirs in pg.execute(PG_FOREIGN, (table,)).fetchall():
                foreign.append((table, parent, list(mine), list(theirs)))
    return out, foreign


def test_server_id_leads_a_key_of_every_table_with_server_rows(
    store_location: Callable[[str], str], store_engine: str
) -> None:
    location = store_location("keys")
    Store(location).close()
    foreign: list[tuple] = []
    if pg_target(location) is None:
        tables = sqlite_keys(location)
    else:
        tables, foreign = pg_keys(location)
    assert {t for t, (cols, _) in tables.items() if "server_id" not in cols} <= SHARED
    owned = {t: keys for t, (cols, keys) in tables.items() if "server_id" in cols}
    assert {"deltas", "activity", "kcache", "rollups", "incident_events", "intervals"} <= set(owned)
    led = {t for t, keys in owned.items() if any(k[0] == "server_id" for k in keys)}
    assert led == set(owned), f"no key led by server_id: {sorted(set(owned) - led)}"
    if store_engine != "postgresql":
        return
    # Citus: a distributed table's primary key and every unique key hold the distribution column,
    # and a foreign key between two distributed tables joins on it
    assert [(t, keys[0]) for t, keys in owned.items() if keys[0][0] != "server_id"] == []
    assert [(t, k) for t, keys in owned.items() for k in keys if "server_id" not in k] == []
    between = [f for f in foreign if f[0] in owned and f[1] in owned]
    assert between, "the schema has foreign keys between server tables"
    assert [
        f for f in between if ("server_id", "server_id") not in zip(f[2], f[3], strict=True)
    ] == []


A = StatementKey(1, 10, 111)
B = StatementKey(1, 10, 222)


def old_store(path: Path) -> int:
    """A store at the schema version before SERVER_KEYS, built with the earlier migrations only,
    holding two servers' rows in every per-interval table; returns that version."""
    version = schema.MIGRATIONS.index(schema.SERVER_KEYS)
    counters = ", ".join(schema.COUNTER_COLUMNS)
    zeros = ", ".join("0" * len(schema.COUNTER_COLUMNS))
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN")
        for script in schema.MIGRATIONS[:version]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        db.executemany(
            "INSERT INTO servers (id, name, created_at) VALUES (?, ?, 0)", [(1, "a"), (2, "b")]
        )
        db.executemany(
            "INSERT INTO statements (id, server_id, dbid, userid, queryid, toplevel, fingerprint,"
            " first_seen) VALUES (?, ?, 1, 10, ?, 1, ?, 0)",
            [(1, 1, 111, "fa"), (2, 1, 222, "fb"), (3, 2, 111, "fa")],
        )
        db.execute("INSERT INTO texts VALUES ('fa', 'SELECT 1', 0), ('fb', 'SELECT 2', 0)")
        intervals = [(n, 1 + n % 2, 1000.0 + 10 * (n // 2)) for n in range(1, 21)]
        db.executemany(
            "INSERT INTO intervals (id, server_id, start, end, complete) VALUES (?, ?, ?, ?, 1)",
            [(n, sid, start, start + 10) for n, sid, start in intervals],
        )
        for n, sid, _ in intervals:
            statements = (1, 2) if sid == 1 else (3,)
            for st in statements:
                db.execute(
                    f"INSERT INTO deltas (interval_id, statement_id, {counters}) "
                    f"VALUES (?, ?, {zeros})",
                    (n, st),
                )
                db.execute(
                    "UPDATE deltas SET calls = ? WHERE interval_id = ? AND statement_id = ?",
                    (n * 10 + st, n, st),
                )
                db.execute(
                    "INSERT INTO kcache (interval_id, statement_id, user_us) VALUES (?, ?, ?)",
                    (n, st, n),
                )
            db.execute(
                "INSERT INTO activity (interval_id, fingerprint, active) VALUES (?, 'fa', ?)",
                (n, n),
            )
        for sid in (1, 2):
            db.execute(
                "INSERT INTO rollups (resolution, server_id, bucket, statement_id, calls) "
                "VALUES (60, ?, 960, ?, 7)",
                (sid, 1 if sid == 1 else 3),
            )
            db.execute(
                "INSERT INTO rollup_buckets (resolution, server_id, bucket, seconds) "
                "VALUES (60, ?, 960, 60)",
                (sid,),
            )
            db.execute(
                "INSERT INTO incidents (id, server_id, key, state, opened_at) "
                "VALUES (?, ?, 'k', 'firing', 0)",
                (f"i{sid}", sid),
            )
            db.executemany(
                "INSERT INTO incident_events (incident_id, at, state, detail) VALUES (?, ?, ?, ?)",
                [
                    (f"i{sid}", 5.0, "pending", "x"),
                    (f"i{sid}", 1.0, "pending", "y"),
                    (f"i{sid}", 5.0, "firing", "z"),
                ],
            )
            db.execute(
                "INSERT INTO gaps (server_id, start, end, reason, detail, partial) "
                "VALUES (?, 0, 10, 'reset', '', 0)",
                (sid,),
            )
        db.execute("COMMIT")
    return version


ROWS = {
    "deltas": "SELECT server_id, interval_id, statement_id, calls FROM deltas",
    "kcache": "SELECT server_id, interval_id, statement_id, user_us FROM kcache",
    "activity": "SELECT server_id, interval_id, fingerprint, active FROM activity",
    "rollups": "SELECT server_id, resolution, bucket, statement_id, calls FROM rollups",
    "rollup_buckets": "SELECT server_id, resolution, bucket, seconds FROM rollup_buckets",
    "incident_events": "SELECT server_id, incident_id, seq, at, state, detail FROM incident_events",
    "gaps": "SELECT server_id, start FROM gaps",
}


def test_an_older_sqlite_store_migrates_keeping_every_row(
    tmp_path: Path, sqlite_only: None
) -> None:
    # sqlite_only: the file is a SQLite store of an older version, also under QW_TEST_STORE
    path = tmp_path / "old.db"
    version = old_store(path)
    with sqlite3.connect(path) as db:
        before = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ROWS}
        owner = dict(db.execute("SELECT id, server_id FROM intervals").fetchall())
        calls = db.execute("SELECT interval_id, statement_id, calls FROM deltas").fetchall()
    assert before["deltas"] == 30 and before["incident_events"] == 6
    with Store(str(path), create=False) as store:
        rows, seconds = store.totals(1, 1009.5, 2000)  # raw: from the oldest interval
        assert {r.fingerprint: r.counters.calls for r in rows} == {
            "fa": sum(c for i, s, c in calls if s == 1),
            "fb": sum(c for i, s, c in calls if s == 2),
        }
        assert seconds == 100
        timeline = store.incidents(2)[0].incident.timeline
        assert [(e.at, e.detail) for e in timeline] == [(1.0, "y"), (5.0, "x"), (5.0, "z")]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST > version
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        after = {t: db.execute(q).fetchall() for t, q in ROWS.items()}
    assert {t: len(r) for t, r in after.items()} == before
    assert all(owner[i] == sid for sid, i, *_ in after["deltas"] + after["kcache"])
    assert all(owner[i] == sid for sid, i, *_ in after["activity"])
    assert sorted((i, s, c) for _, i, s, c in after["deltas"]) == sorted(calls)
    assert sorted((sid, inc, seq) for sid, inc, seq, *_ in after["incident_events"]) == [
        (1, "i1", 0),
        (1, "i1", 1),
        (1, "i1", 2),
        (2, "i2", 0),
        (2, "i2", 1),
        (2, "i2", 2),
    ]
    assert {r[0] for r in after["rollups"]} == {1, 2}


def test_a_sqlite_store_refuses_a_per_interval_row_without_its_interval(
    tmp_path: Path, sqlite_only: None
) -> None:
    """The rebuilt tables keep their foreign keys (server_id, interval_id) -> intervals."""
    path = tmp_path / "s.db"
    with Store(str(path)) as store:
        srv = store.server("a")
        interval = Interval(1000, 1010, (StatementDelta(A, Counters(calls=1)),), None)
        store.record_interval(srv.id, interval, {A: "fa"}, {"fa": "SELECT 1"})
        other = store.server("b")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA foreign_keys=ON")
        (interval_id,) = db.execute("SELECT id FROM intervals").fetchone()
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            db.execute(
                "INSERT INTO activity (server_id, interval_id, fingerprint) VALUES (?, ?, 'fa')",
                (other.id, interval_id),
            )


def test_an_older_postgresql_store_migrates_keeping_every_row(
    tmp_path: Path, pg_store_base: str
) -> None:
    """The same rows in a PostgreSQL store at the version before SERVER_KEYS (its own ALTER
    statements): every row kept, server_id backfilled, the keys rebuilt."""
    from storekit import pg_location

    from querywatch.store import pgschema

    source = tmp_path / "old.db"
    version = old_store(source)
    location = pg_location(pg_store_base, "old")
    schema_name = location.rsplit("%3D", 1)[1]  # the store's schema, in its search_path
    with sqlite3.connect(source) as db, psycopg.connect(pg_store_base, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {schema_name}")
        pg.execute(f"SET search_path = {schema_name}")
        pg.execute(pgschema.VERSION_DDL)
        pg.execute("INSERT INTO qw_schema (version) VALUES (%s)", (version,))
        for script in schema.MIGRATIONS[:version]:
            for statement in pgschema.ddl(script):
                pg.execute(statement)
        pgschema.ensure_partitions(pg, 0)
        order = ["servers", "statements", "texts", "intervals", *ROWS, "incidents"]
        order.remove("incident_events")
        order.append("incident_events")
        for table in order:
            cursor = db.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            quoted = ", ".join(f'"{n}"' for n in names)
            marks = ", ".join(["%s"] * len(names))
            pg.cursor().executemany(
                f"INSERT INTO {table} ({quoted}) VALUES ({marks})", cursor.fetchall()
            )
        before = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ROWS}
    with Store(location, create=False) as store:
        rows, _ = store.totals(1, 1009.5, 2000)
        assert {r.fingerprint for r in rows} == {"fa", "fb"}
        assert [e.detail for e in store.incidents(2)[0].incident.timeline] == ["y", "x", "z"]
    tables, _ = pg_keys(location)
    assert tables["deltas"][1][0] == ["server_id", "interval_id", "statement_id"]
    with psycopg.connect(location, autocommit=True) as pg:
        after = {t: pg.execute(q).fetchall() for t, q in ROWS.items()}
        owner = dict(pg.execute("SELECT id, server_id FROM intervals").fetchall())
    assert {t: len(r) for t, r in after.items()} == before
    assert all(owner[i] == sid for sid, i, *_ in after["deltas"] + after["kcache"])
    assert sorted((sid, inc, seq) for sid, inc, seq, *_ in after["incident_events"]) == [
        (1, "i1", 0),
        (1, "i1", 1),
        (1, "i1", 2),
        (2, "i2", 0),
        (2, "i2", 1),
        (2, "i2", 2),
    ]
