"""The demo's last act: the shop's primary gets a streaming replica, and the figures of the
incident say whether the culprit could have been served by it (querywatch.capacity).

The incident's own figures come from the store (the culprit's calls/s and cost per call between
the rollout and the fix, the server's DB time then, the cores the watcher read); the replica's
from the replica (its own DB time per second from pg_stat_statements, its cores) and from the
primary's ``pg_stat_replication`` (replay lag). The culprit then runs on the replica under
``querywatch loadtest``, which proves a hot standby serves it. Without pg_basebackup, or when the
replica cannot be made, the report says so and places the culprit on an idle replica like the
primary, computed from the same real figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from ..capacity import Assessment, ReplicaLoad, assess
from ..errors import QuerywatchError
from ..headroom import db_ms_per_s, stored_cores
from ..localpg import LocalPostgres
from ..source.cores import local_cores
from ..store.protocol import StoreProtocol
from .replica import can_replicate, start_replica

NAME = "shop-replica"
DB_TIME = "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements"
LAG = """
SELECT coalesce(extract(epoch FROM replay_lag), 0)::float8,
    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8
FROM pg_stat_replication WHERE application_name = %s
"""


@dataclass(frozen=True)
class ReplicaAct:
    """What the act found, for the incident report."""

    lines: tuple[str, ...]
    made: bool  # a real replica was made
    proposed: bool  # the culprit could have been served by it
    assessment: Assessment | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": list(self.lines),
            "made": self.made,
            "proposed": self.proposed,
            "capacity": self.assessment.as_json() if self.assessment else None,
        }


@dataclass(frozen=True)
class Incident:
    """The culprit's figures between the rollout and the fix, read from the store."""

    fingerprint: str
    query: str
    calls_per_s: float
    mean_ms: float
    db_ms_per_s: float
    cores: int


def incident_figures(
    store: StoreProtocol, culprit: dict[str, Any], start: float, end: float
) -> Incident | None:
    server = store.servers()[0]
    rows, seconds = store.totals(server.id, start, end)
    mine = next((r.counters for r in rows if r.fingerprint == culprit.get("fingerprint")), None)
    total = db_ms_per_s(store, server.id, start, end)
    if mine is None or seconds <= 0 or total is None or mine.calls <= 0:
        return None
    cores = stored_cores(store, server.name) or local_cores()
    fp, query = str(culprit["fingerprint"]), str(culprit.get("query", ""))
    return Incident(fp, query, mine.calls / seconds, mine.mean_ms, total, cores)


def replica_act(
    pg: LocalPostgres,
    incident: Incident,
    loadtest: Callable[[str], Any],
    say: Callable[[str], None],
) -> ReplicaAct:
    """Make the replica, measure it, place the culprit on it, prove it with ``loadtest`` (the
    DSN of the replica -> a LoadResult); always stops the replica."""
    if not can_replicate(pg):
        return _without(incident, f"no pg_basebackup in {pg.bindir}", say)
    started = time.monotonic()
    try:
        replica = start_replica(pg, NAME)
    except QuerywatchError as exc:
        return _without(incident, f"the replica could not be made: {exc}", say)
    try:
        took = time.monotonic() - started
        say(
            f"   replica {NAME} streaming on 127.0.0.1:{replica.port} (pg_basebackup, {took:.1f} s)"
        )
        load = ReplicaLoad(NAME, local_cores(), _db_ms_per_s(replica.dsn), _lag(pg.dsn))
        found = _assess(incident, load)
        lines = [*found.lines()]
        proposed = bool(found.proposed)
        if found.read_only.ok:
            result = loadtest(replica.dsn)
            lines.append(_proof(result))
        if proposed:
            lines.append(
                f"the culprit could have been served by replica {NAME}: "
                "redistributing this read was an option during the incident"
            )
        return ReplicaAct(tuple(lines), True, proposed, found)
    finally:
        replica.cleanup()


def _assess(incident: Incident, *replicas: ReplicaLoad) -> Assessment:
    return assess(
        incident.cores,
        incident.db_ms_per_s,
        incident.fingerprint,
        incident.query,
        incident.calls_per_s,
        incident.mean_ms,
        replicas,
        cores_from="read by the watcher",
    )


def _without(incident: Incident, why: str, say: Callable[[str], None]) -> ReplicaAct:
    """No replica made: the culprit placed on an idle replica like the primary, from the same
    real figures of the incident."""
    say(f"   {why}: computing from the incident's figures instead")
    idle = ReplicaLoad(f"{NAME} (idle, like the primary)", incident.cores, 0.0, 0.0)
    found = _assess(incident, idle)
    lines = [f"no replica was made ({why}); with one like the primary:", *found.lines()]
    return ReplicaAct(tuple(lines), False, bool(found.proposed), found)


def _db_ms_per_s(dsn: str, seconds: float = 1.0) -> float | None:
    """The server's DB time per second over ``seconds`` (pg_stat_statements on it)."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            first = float(conn.execute(DB_TIME).fetchone()[0])  # type: ignore[index]
            time.sleep(seconds)
            second = float(conn.execute(DB_TIME).fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return None
    return max(second - first, 0.0) / seconds


def _lag(primary_dsn: str) -> float | None:
    """The replica's replay lag in seconds (0 once it has replayed everything)."""
    with psycopg.connect(primary_dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(LAG, (NAME,)).fetchone()
    if row is None:
        return None
    seconds, missing = float(row[0]), float(row[1])
    return seconds if missing > 0 else 0.0


def _proof(result: Any) -> str:
    lat = result.latency
    return (
        f"proof: querywatch loadtest ran the culprit on the replica at {result.target_rate:g}/s "
        f"for {result.duration_s:g} s: {result.completed} calls, {result.errors} errors, "
        f"p95 {lat.p95_ms:.1f} ms (after the fix, whose index the replica replayed)"
    )
