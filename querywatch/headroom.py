"""What the store says about a server's capacity: its cores, its DB time over a window and the
load and lag of its replicas, handed to the pure :mod:`querywatch.capacity`.

The watcher writes the server's cores into its ``detector:<server>`` status row each interval
(``cpu_cores``, read from the server or set); ``top --capacity`` and a diagnosis read them from
there, a ``--cpu-cores`` flag or ``[detect] cpu_cores`` set overriding them. A replica is known
from its primary's ``pg_stat_replication`` samples (querywatch.store.replication); its cores and
load are known when it is watched as a server of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .capacity import CapacitySettings, ReplicaLoad, assess
from .model import Diagnosis
from .store.protocol import StoreProtocol

DETECTOR = "detector:"  # status key prefix of each server's detector (querywatch.monitor)
WINDOW_S = 300.0  # a replica's load is read over this long when no window is given
CAUGHT_UP_BYTES = 0.0  # a replica that has replayed everything lags 0 s whatever replay_lag says


class ReplicaState(Protocol):
    """A replica as its primary lists it (querywatch.replication.ReplicaState): its name, the
    watched server it is (""), its ``pg_stat_replication`` state and replay lag."""

    @property
    def name(self) -> str: ...
    @property
    def watched(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def replay_lag_s(self) -> float | None: ...
    @property
    def replay_lag_bytes(self) -> float | None: ...


@dataclass(frozen=True)
class KnownCores:
    count: int
    how: str


def stored_cores(store: StoreProtocol, server_name: str) -> int | None:
    """The cores the watcher last wrote for ``server_name`` (None: never known)."""
    row = store.status().get(f"{DETECTOR}{server_name}", {})
    value = row.get("cpu_cores")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def cores_of(store: StoreProtocol, server_name: str, configured: int | None) -> KnownCores | None:
    """The setting (or flag) when given, else what the watcher read from the server."""
    if configured:
        return KnownCores(configured, "the setting")
    found = stored_cores(store, server_name)
    return KnownCores(found, "read by the watcher") if found else None


def db_ms_per_s(store: StoreProtocol, server_id: int, start: float, end: float) -> float | None:
    """The server's DB (execution) time per second over the complete data in (start, end]."""
    rows, seconds = store.totals(server_id, start, end)
    if seconds <= 0:
        return None
    return sum(r.counters.exec_ms for r in rows) / seconds


def replica_loads(
    store: StoreProtocol, states: Sequence[ReplicaState], start: float, end: float
) -> list[ReplicaLoad]:
    """Each replica's cores, DB time over (start, end] and replay lag; cores and load only for
    the replicas that are watched (None otherwise)."""
    servers = {s.name: s for s in store.servers()}
    loads = []
    for r in states:
        watched = servers.get(r.watched or r.name) if (r.watched or r.name) else None
        cores = stored_cores(store, watched.name) if watched else None
        busy = db_ms_per_s(store, watched.id, start, end) if watched else None
        if watched and busy is None:
            busy = db_ms_per_s(store, watched.id, end - WINDOW_S, end)
        lag = r.replay_lag_s
        if lag is None and r.replay_lag_bytes is not None and r.replay_lag_bytes <= CAUGHT_UP_BYTES:
            lag = 0.0  # caught up and idle: PostgreSQL stops reporting a lag time
        streaming = r.state == "streaming"
        loads.append(ReplicaLoad(r.watched or r.name, cores, busy, lag, streaming))
    return loads


def with_capacity(
    found: Diagnosis,
    store: StoreProtocol,
    server_id: int,
    cores: KnownCores | None,
    replicas: Sequence[ReplicaState] = (),
    settings: CapacitySettings = CapacitySettings(),
) -> Diagnosis:
    """The diagnosis with its top culprit's capacity, the server's headroom over the window and,
    for a read-only culprit, the replicas that could take it (as it is when the cores are
    unknown, or there is no culprit)."""
    if cores is None or not found.culprits:
        return found
    busy = db_ms_per_s(store, server_id, found.window_start, found.window_end)
    loads = replica_loads(store, replicas, found.window_start, found.window_end)
    return assessed(found, cores, busy, loads, settings)


def assessed(
    found: Diagnosis,
    cores: KnownCores | None,
    busy_ms_per_s: float | None,
    replicas: Sequence[ReplicaLoad] | None = (),
    settings: CapacitySettings = CapacitySettings(),
) -> Diagnosis:
    """The diagnosis with :func:`querywatch.capacity.assess` of its top culprit, given the
    server's DB time per second over the window (as it is without cores, figures or culprit);
    ``replicas`` None when they are not known (a one-shot diagnosis)."""
    if cores is None or busy_ms_per_s is None or not found.culprits:
        return found
    top = found.culprits[0]
    result = assess(
        cores.count,
        busy_ms_per_s,
        top.fingerprint,
        top.query,
        top.calls_per_s.window,
        top.mean_ms.window,
        replicas,
        settings,
        cores.how,
    )
    return replace(found, capacity=result)
