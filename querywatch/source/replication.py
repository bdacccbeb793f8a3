"""Reading a server's replication state: its role, timeline and identity, the replicas it
streams to, its slots and its recovery conflicts.

Every query runs on the watcher's one monitoring connection (``PostgresSource.fetch``), so the
session's ``statement_timeout`` and ``lock_timeout`` apply; all of them work on a primary and on
a replica (a cascading replica lists its own replicas), with the ``pg_monitor`` role.
``primary_conninfo`` is read for its host, port and application_name only (a password in it is
never kept), from ``pg_settings``, which hides it from a role without pg_read_all_settings.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from ..errors import CapabilityError
from ..replication import NodeState, ReplicaState, SlotState
from .fetch import record, records
from .postgres import PostgresSource
from .queries import MARKER

log = logging.getLogger("querywatch.source.replication")

# The position WAL has reached on this server: written (a primary) or replayed (a replica).
_HERE_LSN = (
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
)

# Role, timeline, address, upstream and replica-side lag, in one read. The timeline of a primary
# is the one its current WAL file is written on (exact right after a promotion, before any
# checkpoint); a replica's is the one its WAL receiver streams.
NODE_STATE = (
    MARKER
    + """
SELECT
    pg_is_in_recovery() AS in_recovery,
    CASE WHEN pg_is_in_recovery()
        THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)
        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
    END AS timeline,
    pg_postmaster_start_time() AS started,
    host(inet_server_addr()) AS address,
    inet_server_port() AS port,
    current_setting('cluster_name') AS cluster_name,
    (SELECT setting FROM pg_settings WHERE name = 'primary_conninfo') AS primary_conninfo,
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
    CASE WHEN pg_is_in_recovery()
        THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
    END AS replay_lag_bytes,
    CASE WHEN pg_is_in_recovery() THEN
        CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
        END
    END AS replay_lag_s,
    (SELECT sum(confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin
        + confl_deadlock) FROM pg_stat_database_conflicts) AS conflicts
"""
)

# A replica whose WAL receiver is not running: the timeline of its last restartpoint.
CHECKPOINT_TIMELINE = MARKER + "SELECT timeline_id FROM pg_control_checkpoint()"

REPLICAS = (
    MARKER
    + f"""
SELECT
    coalesce(application_name, '') AS application_name,
    coalesce(host(client_addr), '') AS client_addr,
    coalesce(client_port, -1) AS client_port,
    coalesce(state, '') AS state,
    coalesce(sync_state, '') AS sync_state,
    extract(epoch FROM replay_lag) AS replay_lag_s,
    pg_wal_lsn_diff({_HERE_LSN}, replay_lsn) AS replay_lag_bytes
FROM pg_stat_replication
ORDER BY application_name, client_addr, client_port
"""
)

SLOTS = (
    MARKER
    + f"""
SELECT
    slot_name,
    slot_type,
    active,
    coalesce(wal_status, '') AS wal_status,
    pg_wal_lsn_diff({_HERE_LSN}, restart_lsn) AS retained_bytes
FROM pg_replication_slots
ORDER BY slot_name
"""
)


def read_node(
    source: PostgresSource, server: str, at: float, system_identifier: int | None
) -> NodeState:
    """The server's state now (a reachable sample)."""
    row = source.fetch(NODE_STATE)[0]
    in_recovery = bool(row["in_recovery"])
    timeline = row["timeline"]
    if timeline is None:
        timeline = _checkpoint_timeline(source)
    upstream, application = _upstream(row["primary_conninfo"] or "")
    port = row["port"]
    address = f"{row['address'] or 'local'}:{port}" if port is not None else ""
    return NodeState(
        server=server,
        at=at,
        reachable=True,
        in_recovery=in_recovery,
        timeline=None if timeline is None else int(timeline),
        system_identifier=system_identifier,
        started=_ts(row["started"]),
        address=address,
        upstream=upstream if in_recovery else "",
        application_name=(application or row["cluster_name"] or "walreceiver")
        if in_recovery
        else "",
        replay_paused=row["replay_paused"],
        replay_lag_s=_float(row["replay_lag_s"]),
        replay_lag_bytes=_float(row["replay_lag_bytes"]),
        conflicts=None if row["conflicts"] is None else int(row["conflicts"]),
    )


def _checkpoint_timeline(source: PostgresSource) -> int | None:
    try:
        return int(source.fetch(CHECKPOINT_TIMELINE)[0]["timeline_id"])
    except CapabilityError as exc:
        log.info("timeline not readable: %s", exc)
        return None


def _upstream(conninfo: str) -> tuple[str, str]:
    """(host:port, application_name) of a replica's primary_conninfo; never its password."""
    if not conninfo:
        return "", ""
    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError:
        return "", ""
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = str(params.get("port") or "5432")
    return (f"{host}:{port}" if host else ""), str(params.get("application_name") or "")


def read_replicas(source: PostgresSource, server: str, at: float) -> list[ReplicaState]:
    """The replicas streaming from the server, named by application_name (with the client
    address when several share one)."""
    rows = source.fetch(REPLICAS)
    names = [str(r["application_name"]) or "replica" for r in rows]
    replicas = []
    for row, name in zip(rows, names, strict=True):
        if names.count(name) > 1:
            name = f"{name}@{row['client_addr']}:{row['client_port']}"
        replicas.append(record(ReplicaState, row, server=server, name=name, at=at))
    return replicas


def read_slots(source: PostgresSource, server: str, at: float) -> list[SlotState]:
    return records(SlotState, source.fetch(SLOTS), server=server, at=at)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()
