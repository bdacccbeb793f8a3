"""The typed protocol of the store: what the CLI, the watcher and the web may call.

One protocol per concept (each implemented by the mixin in the module of the same name, see
``querywatch.store.base``), and ``StoreProtocol`` for all of them. Both engines satisfy it:
``querywatch.store.sqlite.Store`` and ``querywatch.store.postgres.PgStore`` (checked by mypy
below). Code that only needs one concept can take the narrower protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..longrun import LongRun
from ..model import (
    ActivitySummary,
    Counters,
    Deploy,
    Gap,
    Incident,
    Interval,
    IntervalSummary,
    Snapshot,
    Statement,
    StatementKey,
)
from ..replication import (
    NodeState,
    ReplicaState,
    SlotState,
    TopologyEvent,
    TopologyIncident,
)
from ..source.kcache import CpuUsage, KcacheUsage
from . import dbtime, fleet, logevents
from .incidents import StoredIncident
from .intervals import TopRow
from .leases import Lease
from .outbox import OutboxEntry, OutboxRow, OutboxSummary
from .plans import StoredPlan
from .series import Series
from .snapshots import StoredSnapshot
from .statements import Server

if TYPE_CHECKING:
    from .postgres import PgStore
    from .sqlite import Store


class StatementsStore(Protocol):
    """Servers, statements and their texts."""

    def server(self, name: str, target: str = "", version: str = "") -> Server: ...

    def servers(self) -> list[Server]: ...

    def set_fingerprint(
        self, server_id: int, key: StatementKey, fingerprint: str, text: str
    ) -> None: ...

    def known_keys(self, server_id: int) -> Mapping[StatementKey, int]: ...

    def has_text(self, fingerprint: str) -> bool: ...

    def statements(
        self, fingerprints: Sequence[str] | None = None, server_id: int | None = None
    ) -> dict[str, Statement]: ...


class IntervalsStore(Protocol):
    """Intervals, gaps, totals; rollups and retention."""

    def record_interval(
        self,
        server_id: int,
        interval: Interval,
        fingerprints: Mapping[StatementKey, str],
        texts: Mapping[str, str],
        activity: ActivitySummary | None = None,
        own: frozenset[str] = frozenset(),
        snapshot: StoredSnapshot | None = None,
        snapshot_base: Snapshot | None = None,
    ) -> int: ...

    def record_gap(self, server_id: int, gap: Gap) -> None: ...

    def summaries(self, server_id: int, start: float, end: float) -> list[IntervalSummary]: ...

    def totals(self, server_id: int, start: float, end: float) -> tuple[list[TopRow], float]: ...

    def xacts(self, server_id: int, start: float, end: float) -> tuple[float | None, float]: ...

    def gaps(self, server_id: int, start: float, end: float) -> list[Gap]: ...

    def last_interval_end(self, server_id: int) -> float | None: ...

    def interval_count(self, server_id: int) -> int: ...

    def maintain(self, now: float | None = None) -> None: ...


class SeriesStore(Protocol):
    """The dashboard's time series."""

    def fingerprint_totals(
        self, server_id: int, start: float, end: float, step: float
    ) -> dict[str, Counters]: ...

    def series(
        self, server_id: int, start: float, end: float, step: float, fingerprints: Sequence[str]
    ) -> Series: ...

    def seconds_covered(
        self, server_id: int, start: float, end: float, step: float
    ) -> dict[float, float]: ...


class IncidentsStore(Protocol):
    """Incidents and their timelines."""

    def save_incident(
        self,
        server_id: int,
        incident: Incident,
        diagnosis: Mapping[str, object] | None = None,
        notify: Sequence[OutboxEntry] = (),
    ) -> None: ...

    def incidents(self, server_id: int | None = None, limit: int = 100) -> list[StoredIncident]: ...


class DeploysStore(Protocol):
    """Deploy markers."""

    def add_deploy(self, version: str, at: float, note: str = "") -> Deploy: ...

    def deploys(self, start: float = 0.0, end: float = float("inf")) -> list[Deploy]: ...


class PlansStore(Protocol):
    """Plans per fingerprint."""

    def record_plan(
        self,
        server_id: int,
        fingerprint: str,
        plan_hash: str,
        plan: Mapping[str, Any],
        total_cost: float,
        at: float | None = None,
    ) -> None: ...

    def plans(self, fingerprint: str, server_id: int | None = None) -> list[StoredPlan]: ...


class StatusStore(Protocol):
    """The status board."""

    def set_status(self, key: str, value: Mapping[str, object]) -> None: ...

    def status(self) -> dict[str, dict[str, Any]]: ...


class LeasesStore(Protocol):
    """Owner leases."""

    def claim_server(
        self, server_name: str, owner: str, ttl_s: float, *, host: str | None = None
    ) -> Lease: ...

    def renew(self, lease: Lease) -> Lease: ...

    def release(self, lease: Lease) -> bool: ...

    def leases(self) -> list[Lease]: ...


class FleetStore(Protocol):
    """Every server's figures at once, for the fleet page."""

    def fleet_servers(self) -> list[fleet.FleetServer]: ...

    def open_incidents(self) -> list[fleet.OpenIncident]: ...

    def fleet_db_time(self, start: float, end: float, step: float) -> fleet.DbTime: ...


class OtherStore(Protocol):
    """Snapshots, long-run baselines, kcache, outbox, replication, logs; opening and closing."""

    def close(self) -> None: ...

    def __enter__(self) -> StoreProtocol: ...

    def __exit__(self, *exc: object) -> None: ...

    def save_snapshot(
        self, server_id: int, snapshot: StoredSnapshot, base: Snapshot | None = None
    ) -> None: ...

    def last_snapshot(self, server_id: int) -> StoredSnapshot | None: ...

    def save_long_run(self, server_id: int, long_run: LongRun) -> None: ...

    def long_run(self, server_id: int, at: float) -> LongRun | None: ...

    def db_time(
        self,
        server_id: int,
        start: float,
        end: float,
        step: float,
        fingerprints: Sequence[str] | None = None,
        group: float | None = None,
    ) -> tuple[dbtime.Sums, dict[float, float]]: ...

    def record_kcache(self, server_id: int, interval_id: int, usage: KcacheUsage) -> int: ...

    def cpu_usage(self, server_id: int, start: float, end: float) -> CpuUsage | None: ...

    def record_replication(
        self,
        server_id: int,
        node: NodeState,
        replicas: Sequence[ReplicaState] = (),
        slots: Sequence[SlotState] | None = None,
        events: Sequence[TopologyEvent] = (),
    ) -> None: ...

    def add_topology_events(self, server_id: int, events: Sequence[TopologyEvent]) -> None: ...

    def replicas(self, server_id: int, at: float | None = None) -> list[ReplicaState]: ...

    def replica_lag(
        self, server_id: int, start: float, end: float, name: str = ""
    ) -> list[ReplicaState]: ...

    def node_state(
        self, server_id: int, at: float | None = None, *, reachable: bool = False
    ) -> NodeState | None: ...

    def node_states(self, server_id: int, start: float, end: float) -> list[NodeState]: ...

    def unreachable_since(self, server_id: int, after: float, at: float) -> float | None: ...

    def replication_slots(self, server_id: int) -> list[SlotState]: ...

    def topology_events(
        self, server_id: int | None = None, start: float = 0.0, end: float = float("inf")
    ) -> list[TopologyEvent]: ...

    def open_topology_incident(self, incident: TopologyIncident) -> TopologyIncident: ...

    def topology_incidents(
        self, server_id: int | None = None, *, open_only: bool = True
    ) -> list[TopologyIncident]: ...

    def resolve_topology_incident(self, server_id: int, ident: str, at: float) -> bool: ...

    def add_outbox(self, entries: Sequence[OutboxEntry]) -> int: ...

    def outbox_head(self, channel: str) -> OutboxRow | None: ...

    def outbox_rows(self, channel: str) -> list[OutboxRow]: ...

    def outbox_stale(self, created_before: float) -> list[OutboxRow]: ...

    def outbox_done(
        self, row_id: int, state: str, at: float, tried: bool = True, error: str | None = None
    ) -> bool: ...

    def outbox_retry(self, row_id: int, next_at: float, error: str) -> None: ...

    def outbox_summary(self) -> list[OutboxSummary]: ...

    def size_bytes(self) -> int: ...

    def record_log_batch(self, server_id: int, batch: logevents.Batch) -> logevents.Written: ...

    def log_ranges(self, server_id: int) -> list[tuple[float, float]]: ...

    def log_events(
        self, server_id: int, kind: str, start: float, end: float, limit: int = 1000
    ) -> list[logevents.EventRow]: ...

    def log_event_counts(self, server_id: int, start: float, end: float) -> dict[str, int]: ...


class StoreProtocol(
    StatementsStore,
    IntervalsStore,
    SeriesStore,
    IncidentsStore,
    DeploysStore,
    PlansStore,
    StatusStore,
    LeasesStore,
    FleetStore,
    OtherStore,
    Protocol,
):
    """The whole store, either engine."""

    path: Path
    location: str
    clock: Callable[[], float]  # the store's clock (POSIX seconds), as its writes stamp rows

    @property
    def engine(self) -> str: ...


if TYPE_CHECKING:

    def _sqlite_conforms(store: Store) -> StoreProtocol:
        return store

    def _postgres_conforms(store: PgStore) -> StoreProtocol:
        return store
