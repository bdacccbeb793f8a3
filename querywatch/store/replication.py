"""Replication history: the SQL behind the Store's replication methods (portable SQL).

- ``node_states``: each server's sample per interval (role, timeline, identity, replica-side lag;
  ``reachable`` = 0 when it could not be read), keyed (server_id, at).
- ``replica_lag``: each replica its primary lists, per sample: the lag history, keyed
  (server_id, name, at) where server_id is the primary's.
- ``replication_slots``: each server's slots as last read, keyed (server_id, slot_name).
- ``topology_events``: promotions, new timelines, unreachable servers, identity changes, lag,
  conflicts (querywatch.replication), keyed (server_id, at, kind).
- ``topology_incidents`` (migration ``TOPOLOGY_INCIDENTS``): the failover, lag and unreachable
  pages, open until resolved, keyed (server_id, id); at most one open per (server_id, key), so
  two watchers (or two entries reaching one server) that open the same one at once page once.

Samples older than the raw retention are pruned with the raw intervals (``prune``). Every
function takes a DB-API connection; none commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..replication import NodeState, ReplicaState, SlotState, TopologyEvent, TopologyIncident
from .db import Connection

REPLICATION = """
CREATE TABLE node_states (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    at REAL NOT NULL,
    reachable INTEGER NOT NULL,
    in_recovery INTEGER,
    timeline INTEGER,
    system_identifier INTEGER,
    started REAL,
    address TEXT NOT NULL DEFAULT '',
    upstream TEXT NOT NULL DEFAULT '',
    application_name TEXT NOT NULL DEFAULT '',
    replay_paused INTEGER,
    replay_lag_s REAL,
    replay_lag_bytes REAL,
    conflicts INTEGER,
    PRIMARY KEY (server_id, at)
);
CREATE TABLE replica_lag (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    name TEXT NOT NULL,
    at REAL NOT NULL,
    application_name TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    state TEXT NOT NULL,
    sync_state TEXT NOT NULL,
    watched TEXT NOT NULL DEFAULT '',
    replay_lag_s REAL,
    replay_lag_bytes REAL,
    PRIMARY KEY (server_id, name, at)
);
CREATE INDEX replica_lag_at ON replica_lag (server_id, at);
CREATE TABLE replication_slots (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    slot_name TEXT NOT NULL,
    at REAL NOT NULL,
    slot_type TEXT NOT NULL,
    active INTEGER NOT NULL,
    retained_bytes REAL,
    wal_status TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (server_id, slot_name)
);
CREATE TABLE topology_events (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (server_id, at, kind)
)
"""

TOPOLOGY_INCIDENTS = """
CREATE TABLE topology_incidents (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    observer INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    summary TEXT NOT NULL,
    resolved_at REAL,
    PRIMARY KEY (server_id, id)
);
CREATE UNIQUE INDEX topology_incidents_open ON topology_incidents (server_id, key)
    WHERE resolved_at IS NULL
"""

_NODE_COLUMNS = (
    "at, reachable, in_recovery, timeline, system_identifier, started, address, upstream, "
    "application_name, replay_paused, replay_lag_s, replay_lag_bytes, conflicts"
)
INSERT_NODE = f"""
INSERT INTO node_states (server_id, {_NODE_COLUMNS})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, at) DO NOTHING
"""
SELECT_LAST_NODE = f"""
SELECT {_NODE_COLUMNS} FROM node_states WHERE server_id = ? AND at <= ?
ORDER BY at DESC LIMIT 1
"""
SELECT_LAST_REACHABLE = f"""
SELECT {_NODE_COLUMNS} FROM node_states WHERE server_id = ? AND at <= ? AND reachable = 1
ORDER BY at DESC LIMIT 1
"""
SELECT_FIRST_UNREACHABLE = """
SELECT min(at) FROM node_states WHERE server_id = ? AND reachable = 0 AND at > ? AND at <= ?
"""
SELECT_NODES = f"""
SELECT {_NODE_COLUMNS} FROM node_states WHERE server_id = ? AND at >= ? AND at < ? ORDER BY at
"""
_REPLICA_COLUMNS = (
    "r.name, r.application_name, r.client_addr, r.state, r.sync_state, r.replay_lag_s, "
    "r.replay_lag_bytes, r.at, r.watched"
)
INSERT_REPLICA = """
INSERT INTO replica_lag (server_id, name, at, application_name, client_addr, state, sync_state,
    watched, replay_lag_s, replay_lag_bytes)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, name, at) DO NOTHING
"""
SELECT_REPLICAS_AT = f"""
SELECT s.name, {_REPLICA_COLUMNS}
FROM replica_lag r JOIN servers s ON s.id = r.server_id
WHERE r.server_id = ? AND r.at = (
    SELECT max(n.at) FROM node_states n WHERE n.server_id = ? AND n.at <= ? AND n.reachable = 1
)
ORDER BY r.name
"""
SELECT_LAG_HISTORY = f"""
SELECT s.name, {_REPLICA_COLUMNS}
FROM replica_lag r JOIN servers s ON s.id = r.server_id
WHERE r.server_id = ? AND r.at >= ? AND r.at < ? AND (? = '' OR r.name = ?)
ORDER BY r.at, r.name
"""
DELETE_SLOTS = "DELETE FROM replication_slots WHERE server_id = ?"
INSERT_SLOT = """
INSERT INTO replication_slots (server_id, slot_name, at, slot_type, active, retained_bytes,
    wal_status)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, slot_name) DO UPDATE SET at = excluded.at,
    slot_type = excluded.slot_type, active = excluded.active,
    retained_bytes = excluded.retained_bytes, wal_status = excluded.wal_status
"""
SELECT_SLOTS = """
SELECT s.name, r.slot_name, r.slot_type, r.active, r.retained_bytes, r.wal_status, r.at
FROM replication_slots r JOIN servers s ON s.id = r.server_id
WHERE r.server_id = ? ORDER BY r.slot_name
"""
INSERT_EVENT = """
INSERT INTO topology_events (server_id, at, kind, detail) VALUES (?, ?, ?, ?)
ON CONFLICT (server_id, at, kind) DO NOTHING
"""
SELECT_EVENTS = """
SELECT s.name, e.at, e.kind, e.detail
FROM topology_events e JOIN servers s ON s.id = e.server_id
WHERE (? = 0 OR e.server_id = ?) AND e.at >= ? AND e.at < ?
ORDER BY e.at, s.name, e.kind
"""
_INCIDENT_COLUMNS = "server_id, id, key, kind, subject, observer, opened_at, summary, resolved_at"
INSERT_INCIDENT = f"""
INSERT INTO topology_incidents ({_INCIDENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
ON CONFLICT DO NOTHING
"""
SELECT_OPEN_INCIDENTS = f"""
SELECT {_INCIDENT_COLUMNS} FROM topology_incidents
WHERE (? = 0 OR server_id = ?) AND resolved_at IS NULL ORDER BY opened_at, server_id, id
"""
SELECT_INCIDENTS = f"""
SELECT {_INCIDENT_COLUMNS} FROM topology_incidents
WHERE (? = 0 OR server_id = ?) ORDER BY opened_at, server_id, id
"""
RESOLVE_INCIDENT = """
UPDATE topology_incidents SET resolved_at = ?
WHERE server_id = ? AND id = ? AND resolved_at IS NULL
"""
PRUNE = (
    "DELETE FROM node_states WHERE at < ?",
    "DELETE FROM replica_lag WHERE at < ?",
    "DELETE FROM topology_incidents WHERE resolved_at < ?",
)


def save(
    conn: Connection,
    server_id: int,
    node: NodeState,
    replicas: Sequence[ReplicaState] = (),
    slots: Sequence[SlotState] | None = None,
    events: Sequence[TopologyEvent] = (),
) -> None:
    """One sample of a server: its state, its replicas, its slots (None: not read, kept as they
    were) and the events found."""
    conn.execute(INSERT_NODE, (server_id, *_node_row(node)))
    for r in replicas:
        row = (server_id, r.name, r.at, r.application_name, r.client_addr, r.state, r.sync_state)
        conn.execute(INSERT_REPLICA, (*row, r.watched, r.replay_lag_s, r.replay_lag_bytes))
    if slots is not None:
        conn.execute(DELETE_SLOTS, (server_id,))
        for s in slots:
            slot = (server_id, s.slot_name, s.at, s.slot_type, int(s.active), s.retained_bytes)
            conn.execute(INSERT_SLOT, (*slot, s.wal_status))
    for e in events:
        conn.execute(INSERT_EVENT, (server_id, e.at, e.kind, e.detail))


def add_events(conn: Connection, server_id: int, events: Sequence[TopologyEvent]) -> None:
    for e in events:
        conn.execute(INSERT_EVENT, (server_id, e.at, e.kind, e.detail))


def _node_row(n: NodeState) -> tuple[Any, ...]:
    return (
        n.at,
        int(n.reachable),
        _int(n.in_recovery),
        n.timeline,
        n.system_identifier,
        n.started,
        n.address,
        n.upstream,
        n.application_name,
        _int(n.replay_paused),
        n.replay_lag_s,
        n.replay_lag_bytes,
        n.conflicts,
    )


def _int(flag: bool | None) -> int | None:
    return None if flag is None else int(flag)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _node(server: str, row: Sequence[Any]) -> NodeState:
    return NodeState(
        server,
        float(row[0]),
        bool(row[1]),
        _bool(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        _bool(row[9]),
        row[10],
        row[11],
        row[12],
    )


def last_node(
    conn: Connection, server_id: int, server: str, at: float, *, reachable: bool = False
) -> NodeState | None:
    """The server's last sample at or before ``at`` (its last reachable one with ``reachable``)."""
    query = SELECT_LAST_REACHABLE if reachable else SELECT_LAST_NODE
    row = conn.execute(query, (server_id, at)).fetchone()
    return None if row is None else _node(server, row)


def unreachable_since(conn: Connection, server_id: int, after: float, at: float) -> float | None:
    """The first unreachable sample after ``after`` (the last reachable one), up to ``at``."""
    row = conn.execute(SELECT_FIRST_UNREACHABLE, (server_id, after, at)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def nodes(
    conn: Connection, server_id: int, server: str, start: float, end: float
) -> list[NodeState]:
    return [_node(server, r) for r in conn.execute(SELECT_NODES, (server_id, start, end))]


def _replica(row: Sequence[Any]) -> ReplicaState:
    return ReplicaState(
        server=row[0],
        name=row[1],
        application_name=row[2],
        client_addr=row[3],
        state=row[4],
        sync_state=row[5],
        replay_lag_s=row[6],
        replay_lag_bytes=row[7],
        at=float(row[8]),
        watched=row[9],
    )


def replicas(conn: Connection, server_id: int, at: float) -> list[ReplicaState]:
    """The replicas the server listed in its last reachable sample at or before ``at``."""
    return [_replica(r) for r in conn.execute(SELECT_REPLICAS_AT, (server_id, server_id, at))]


def lag_history(
    conn: Connection, server_id: int, start: float, end: float, name: str = ""
) -> list[ReplicaState]:
    """Every replica sample the server recorded in [start, end) (one replica's with ``name``)."""
    params = (server_id, start, end, name, name)
    return [_replica(r) for r in conn.execute(SELECT_LAG_HISTORY, params)]


def slots(conn: Connection, server_id: int) -> list[SlotState]:
    return [
        SlotState(r[0], r[1], r[2], bool(r[3]), r[4], r[5], float(r[6]))
        for r in conn.execute(SELECT_SLOTS, (server_id,))
    ]


def events(
    conn: Connection, server_id: int | None, start: float, end: float
) -> list[TopologyEvent]:
    """Topology events in [start, end), of one server or (None) of all."""
    sid = server_id or 0
    return [
        TopologyEvent(r[0], float(r[1]), r[2], r[3])
        for r in conn.execute(SELECT_EVENTS, (sid, sid, start, end))
    ]


def open_incident(conn: Connection, incident: TopologyIncident) -> TopologyIncident:
    """Open ``incident`` unless one with its key is open already, for its server or any other
    (two entries that reached one server apart); returns the open one (``incident`` when this
    call opened it)."""
    found = _open_with_key(conn, incident.key)
    if found is not None:
        return found
    i = incident
    row = (i.server_id, i.id, i.key, i.kind, i.subject, i.observer, i.opened_at, i.summary)
    if conn.execute(INSERT_INCIDENT, row).rowcount == 1:
        return incident
    found = _open_with_key(conn, incident.key)  # opened meanwhile by another watcher
    return found if found is not None else incident


def _open_with_key(conn: Connection, key: str) -> TopologyIncident | None:
    return next((i for i in incidents(conn, None) if i.key == key), None)


def incidents(
    conn: Connection, server_id: int | None, *, open_only: bool = True
) -> list[TopologyIncident]:
    """Topology incidents of one server (or None: of all), the open ones only by default."""
    sid = server_id or 0
    query = SELECT_OPEN_INCIDENTS if open_only else SELECT_INCIDENTS
    return [_incident(r) for r in conn.execute(query, (sid, sid))]


def _incident(row: Sequence[Any]) -> TopologyIncident:
    return TopologyIncident(
        server_id=int(row[0]),
        id=row[1],
        key=row[2],
        kind=row[3],
        subject=row[4],
        observer=int(row[5]),
        opened_at=float(row[6]),
        summary=row[7],
        resolved_at=None if row[8] is None else float(row[8]),
    )


def resolve_incident(conn: Connection, server_id: int, ident: str, at: float) -> bool:
    """Close an open incident; False when it was closed already (by another watcher)."""
    return conn.execute(RESOLVE_INCIDENT, (at, server_id, ident)).rowcount == 1


def prune(conn: Connection, before: float) -> None:
    """Drop samples and resolved incidents older than ``before`` (events and slots stay: they
    are few)."""
    for statement in PRUNE:
        conn.execute(statement, (before,))
