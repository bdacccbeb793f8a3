"""Each server's last snapshot, kept in the store so a restarted collector continues from it.

``snapshots`` holds one row per server: the server's identity (system identifier, postmaster start,
pg_stat_statements' ``stats_reset`` and ``dealloc``), the clocks of the read and the
pg_stat_database totals. ``snapshot_entries`` holds one row per pg_stat_statements entry: its key
and the cumulative counters a delta needs, nothing else (no texts, no ``stats_since``: the later
snapshot's ``stats_since`` is what the collector compares).

Writes are incremental: against the snapshot the store already holds (``base``), only entries
whose counters changed are written (an UPDATE, about half the cost of a REPLACE), new ones
inserted and vanished ones deleted, so a server with 5,000 entries costs
what its active statements cost. When the stored row is not ``base`` (first save, another process
wrote in between), the whole snapshot is written again. Called inside the interval's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import (
    COUNTER_FIELDS,
    Counters,
    DatabaseCounters,
    Snapshot,
    StatementKey,
    StatementStats,
)
from .db import Connection
from .schema import DATABASE_COLUMNS

_KEY = "dbid, userid, queryid, toplevel"
_COUNTERS = ", ".join(COUNTER_FIELDS)
_DATABASE = ", ".join(DATABASE_COLUMNS)
_SNAPSHOT_UPDATE = ", ".join(
    f"{c} = excluded.{c}"
    for c in (
        "taken_at",
        "server_taken_at",
        "system_identifier",
        "server_started",
        "stats_reset",
        "dealloc",
        *DATABASE_COLUMNS,
    )
)

UPSERT_SNAPSHOT = f"""
INSERT INTO snapshots (server_id, taken_at, server_taken_at, system_identifier,
    server_started, stats_reset, dealloc, {_DATABASE})
VALUES ({", ".join("?" * (7 + len(DATABASE_COLUMNS)))})
ON CONFLICT (server_id) DO UPDATE SET {_SNAPSHOT_UPDATE}
"""
SELECT_SNAPSHOT = f"""
SELECT taken_at, server_taken_at, system_identifier, server_started, stats_reset, dealloc,
    {_DATABASE}
FROM snapshots WHERE server_id = ?
"""
SELECT_SNAPSHOT_TAKEN_AT = "SELECT taken_at FROM snapshots WHERE server_id = ?"
INSERT_ENTRY = f"""
INSERT INTO snapshot_entries (server_id, {_KEY}, {_COUNTERS})
VALUES ({", ".join("?" * (5 + len(COUNTER_FIELDS)))})
"""
UPDATE_ENTRY = f"""
UPDATE snapshot_entries SET {", ".join(f"{c} = ?" for c in COUNTER_FIELDS)}
WHERE server_id = ? AND dbid = ? AND userid = ? AND queryid = ? AND toplevel = ?
"""
DELETE_ENTRY = """
DELETE FROM snapshot_entries
WHERE server_id = ? AND dbid = ? AND userid = ? AND queryid = ? AND toplevel = ?
"""
DELETE_ENTRIES = "DELETE FROM snapshot_entries WHERE server_id = ?"
SELECT_ENTRIES = f"SELECT {_KEY}, {_COUNTERS} FROM snapshot_entries WHERE server_id = ?"


@dataclass(frozen=True)
class StoredSnapshot:
    """A server's last snapshot and the system identifier of the server it was read from
    (None when the monitoring role may not read ``pg_control_system()``)."""

    snapshot: Snapshot
    system_identifier: int | None


def save(
    conn: Connection,
    server_id: int,
    stored: StoredSnapshot,
    base: Snapshot | None,
) -> None:
    """Make ``stored`` the server's last snapshot; ``base`` is the one the store is believed to
    hold (written only where they differ), or None to write everything."""
    snap = stored.snapshot
    row = conn.execute(SELECT_SNAPSHOT_TAKEN_AT, (server_id,)).fetchone()
    if base is None or row is None or row[0] != base.taken_at:
        conn.execute(DELETE_ENTRIES, (server_id,))
        conn.executemany(INSERT_ENTRY, _entry_rows(server_id, snap.statements.values()))
    else:
        changed, added = _changes(base, snap)
        conn.executemany(UPDATE_ENTRY, _update_rows(server_id, changed))
        conn.executemany(INSERT_ENTRY, _entry_rows(server_id, added))
        if len(base.statements) + len(added) > len(snap.statements):  # some entries are gone
            gone = [k for k in base.statements if k not in snap.statements]
            conn.executemany(DELETE_ENTRY, [(server_id, *_key_row(k)) for k in gone])
    conn.execute(UPSERT_SNAPSHOT, _snapshot_row(server_id, stored))


def load(conn: Connection, server_id: int) -> StoredSnapshot | None:
    """The server's last snapshot, or None when none was stored."""
    row = conn.execute(SELECT_SNAPSHOT, (server_id,)).fetchone()
    if row is None:
        return None
    statements = {}
    for entry in conn.execute(SELECT_ENTRIES, (server_id,)):
        key = StatementKey(entry[0], entry[1], entry[2], bool(entry[3]))
        statements[key] = StatementStats(key, Counters(*entry[4:]))
    db_values = row[6:]
    database = (
        DatabaseCounters(*(float(v) for v in db_values))
        if db_values[0] is not None
        else DatabaseCounters()
    )
    snapshot = Snapshot(
        taken_at=row[0],
        server_started=row[3],
        stats_reset=row[4],
        dealloc=row[5],
        statements=statements,
        database=database,
        server_taken_at=row[1],
    )
    return StoredSnapshot(snapshot, row[2])


def _changes(base: Snapshot, snap: Snapshot) -> tuple[list[StatementStats], list[StatementStats]]:
    """Entries of ``snap`` changed since ``base``, and those new since. The live source hands
    back the same record for an entry that did not change, so most entries cost one identity
    test; a record loaded from the store is compared by value."""
    unchanged = {id(s) for s in base.statements.values()}
    earlier = base.statements
    changed: list[StatementStats] = []
    added: list[StatementStats] = []
    for stats in snap.statements.values():
        if id(stats) in unchanged:
            continue
        old = earlier.get(stats.key)
        if old is None:
            added.append(stats)
        elif old.counters.calls != stats.counters.calls or old.counters != stats.counters:
            changed.append(stats)
    return changed, added


def _key_row(key: StatementKey) -> tuple[int, int, int, int]:
    return key.dbid, key.userid, key.queryid, int(key.toplevel)


def _entry_rows(server_id: int, entries: Iterable[StatementStats]) -> list[Sequence[Any]]:
    return [(server_id, *_key_row(s.key), *s.counters.values()) for s in entries]


def _update_rows(server_id: int, entries: Iterable[StatementStats]) -> list[Sequence[Any]]:
    return [(*s.counters.values(), server_id, *_key_row(s.key)) for s in entries]


def _snapshot_row(server_id: int, stored: StoredSnapshot) -> tuple[Any, ...]:
    snap = stored.snapshot
    return (
        server_id,
        snap.taken_at,
        snap.server_taken_at,
        stored.system_identifier,
        snap.server_started,
        snap.stats_reset,
        snap.dealloc,
        *snap.database.values(),
    )
