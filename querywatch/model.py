"""Frozen records that travel between querywatch's modules.

Times are POSIX seconds (float, UTC) inside the library; they become ISO 8601 only at the edges
(CLI, JSON, web). Durations of statements are in milliseconds, as pg_stat_statements reports them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, sub
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .capacity import Assessment

COUNTER_FIELDS: tuple[str, ...] = (
    "calls",
    "exec_ms",
    "plan_ms",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_ms",
    "blk_write_ms",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
)


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative (in a snapshot) or per-interval (in a delta) statement counters."""

    calls: float = 0
    exec_ms: float = 0.0
    plan_ms: float = 0.0
    rows: float = 0
    shared_blks_hit: float = 0
    shared_blks_read: float = 0
    shared_blks_dirtied: float = 0
    shared_blks_written: float = 0
    local_blks_hit: float = 0
    local_blks_read: float = 0
    local_blks_written: float = 0
    temp_blks_read: float = 0
    temp_blks_written: float = 0
    blk_read_ms: float = 0.0
    blk_write_ms: float = 0.0
    wal_records: float = 0
    wal_fpi: float = 0
    wal_bytes: float = 0

    def values(self) -> tuple[float, ...]:
        return _COUNTER_VALUES(self)

    @classmethod
    def from_values(cls, values: tuple[float, ...] | list[float]) -> Counters:
        return cls(*values)

    def minus(self, earlier: Counters) -> Counters | None:
        """The growth since ``earlier``, or None when any counter went down (a reset)."""
        diff = tuple(map(sub, self.values(), earlier.values()))
        if min(diff) < 0:
            return None
        return Counters(*diff)

    def plus(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

    @property
    def mean_ms(self) -> float:
        return self.exec_ms / self.calls if self.calls else 0.0

    @property
    def io_blocks(self) -> float:
        return self.shared_blks_read + self.local_blks_read + self.temp_blks_read


_COUNTER_VALUES: Callable[[Counters], tuple[float, ...]] = attrgetter(*COUNTER_FIELDS)
ZERO = Counters()


@dataclass(frozen=True, slots=True)
class StatementKey:
    """pg_stat_statements' identity of an entry."""

    dbid: int
    userid: int
    queryid: int
    toplevel: bool = True


@dataclass(frozen=True, slots=True)
class StatementStats:
    key: StatementKey
    counters: Counters
    stats_since: float | None = None  # PostgreSQL 17+: when this entry started counting


DATABASE_FIELDS: tuple[str, ...] = (
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "temp_bytes",
    "deadlocks",
)


@dataclass(frozen=True, slots=True)
class DatabaseCounters:
    """pg_stat_database summed over the server's databases."""

    xact_commit: float = 0
    xact_rollback: float = 0
    blks_read: float = 0
    blks_hit: float = 0
    tup_returned: float = 0
    tup_fetched: float = 0
    tup_inserted: float = 0
    tup_updated: float = 0
    tup_deleted: float = 0
    temp_bytes: float = 0
    deadlocks: float = 0

    def values(self) -> tuple[float, ...]:
        return _DATABASE_VALUES(self)

    def minus(self, earlier: DatabaseCounters) -> DatabaseCounters | None:
        diff = [a - b for a, b in zip(self.values(), earlier.values(), strict=True)]
        if any(d < 0 for d in diff):
            return None
        return DatabaseCounters(*diff)


_DATABASE_VALUES: Callable[[DatabaseCounters], tuple[float, ...]] = attrgetter(*DATABASE_FIELDS)


@dataclass(frozen=True)
class Snapshot:
    """One read of a server's cumulative statistics."""

    taken_at: float
    server_started: float
    stats_reset: float | None  # pg_stat_statements_info.stats_reset (PG14+)
    dealloc: int | None  # pg_stat_statements_info.dealloc (PG14+)
    statements: Mapping[StatementKey, StatementStats]
    database: DatabaseCounters = field(default_factory=DatabaseCounters)
    server_taken_at: float | None = None  # the server's clock at the read (compares stats_since)


class GapReason(enum.StrEnum):
    RESTART = "restart"  # pg_postmaster_start_time changed
    RESET = "reset"  # pg_stat_statements_reset() or counters went down everywhere
    DEALLOC = "dealloc"  # entries evicted because pg_stat_statements.max was reached
    EVICTED = "evicted"  # some entries vanished or restarted counting
    DOWN = "down"  # the server could not be read


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of time whose statement figures are missing (partial=False) or incomplete."""

    start: float
    end: float
    reason: GapReason
    detail: str
    partial: bool = False


@dataclass(frozen=True, slots=True)
class StatementDelta:
    key: StatementKey
    counters: Counters


@dataclass(frozen=True)
class Interval:
    """What happened between two snapshots: only statements that ran appear."""

    start: float
    end: float
    statements: tuple[StatementDelta, ...]
    database: DatabaseCounters | None
    gaps: tuple[Gap, ...] = ()
    dealloc: int = 0
    catch_up: bool = False  # continues from a stored snapshot: spans the collector's downtime

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def complete(self) -> bool:
        """False when a gap means the figures cannot be trusted at all."""
        return not any(not g.partial for g in self.gaps)


@dataclass(frozen=True, slots=True)
class SessionSample:
    """One backend in one pg_stat_activity sample (its statement normalized, never with values)."""

    pid: int
    state: str
    wait_event_type: str | None
    wait_event: str | None
    queryid: int | None
    fingerprint: str | None
    blocking_pids: tuple[int, ...] = ()
    xact_seconds: float | None = None
    query: str = ""  # normalized by querywatch.fingerprint: placeholders, never values
    query_start: float | None = None  # the statement's start (server clock): with pid, its identity
    query_seconds: float | None = None  # how long the statement had been running at the sample


@dataclass(frozen=True, slots=True)
class ActivitySample:
    at: float
    sessions: tuple[SessionSample, ...]
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class FingerprintActivity:
    """Per-fingerprint counts of sampled sessions in one interval."""

    fingerprint: str
    active: int = 0  # samples in which a session ran it
    lock_waits: int = 0  # samples in which a session running it waited on a lock
    blocking: int = 0  # samples in which a session that last ran it blocked others
    blocked_sessions: int = 0  # sum over samples of sessions it blocked
    idle_in_transaction: int = 0  # samples in which its session sat idle in transaction
    # DB time (ms) of its statements still running at the interval's end, counted in this interval,
    # less what earlier intervals counted of statements that finished in this one (whose whole time
    # pg_stat_statements adds now): add it to exec_ms (querywatch.activity.RunningTime)
    running_ms: float = 0.0


@dataclass(frozen=True)
class ActivitySummary:
    """pg_stat_activity samples of one interval, aggregated."""

    samples: int
    sessions_mean: float
    active_mean: float
    idle_in_transaction_mean: float
    lock_waiting_mean: float
    sessions_max: int
    max_connections: int
    by_fingerprint: tuple[FingerprintActivity, ...] = ()


@dataclass(frozen=True)
class Statement:
    """A statement as the store knows it: normalized text only, never parameter values."""

    fingerprint: str
    query: str
    queryids: tuple[int, ...] = ()


@dataclass(frozen=True)
class IntervalSummary:
    """One stored interval with statement counters summed per fingerprint (input of detection)."""

    start: float
    end: float
    complete: bool
    by_fingerprint: Mapping[str, Counters]
    database: DatabaseCounters | None = None
    activity: ActivitySummary | None = None
    catch_up: bool = False  # the first interval of a restarted collector (see Interval.catch_up)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Deploy:
    """A deploy marker: `querywatch mark deploy VERSION` or POST /api/deploys."""

    version: str
    at: float
    note: str = ""


class Verdict(enum.StrEnum):
    HEALTHY = "healthy"
    QUERY_REGRESSION = "query_regression"
    TRAFFIC_SURGE = "traffic_surge"
    LOCK_CONTENTION = "lock_contention"


class CulpritKind(enum.StrEnum):
    FREQUENCY = "frequency"
    LATENCY = "latency"
    NEW_QUERY = "new_query"
    BLOCKING = "blocking"


@dataclass(frozen=True)
class Anomaly:
    """One rule's finding about one interval.

    ``subject`` is what the anomaly is about: a fingerprint, or a server-wide name such as
    "server:connections". ``severity`` is the observed value divided by the rule's threshold
    (>= 1 means past the threshold; >= the "far" factor fires at once).
    """

    rule: str
    subject: str
    at: float
    severity: float
    observed: float
    expected: float
    evidence: str


class IncidentState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class IncidentEvent:
    at: float
    state: IncidentState
    detail: str


@dataclass(frozen=True)
class Incident:
    """One root cause over time; `key` groups anomalies (e.g. the culprit's fingerprint)."""

    id: str
    key: str
    state: IncidentState
    opened_at: float
    fired_at: float | None
    resolved_at: float | None
    rules: tuple[str, ...]
    timeline: tuple[IncidentEvent, ...] = ()
    clean_intervals: int = 0
    marginal_intervals: int = 0
    # what its causes are about (fingerprints, or server-wide names), the key's first: statements
    # that regressed together on one table join one incident (querywatch.detect.incidents)
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rate:
    baseline: float
    window: float


@dataclass(frozen=True)
class Culprit:
    queryid: str
    fingerprint: str
    query: str
    kind: CulpritKind
    excess_share: float
    calls_per_s: Rate
    mean_ms: Rate
    onset: float | None
    evidence: tuple[str, ...]
    excess_ms_per_s: float = 0.0
    frequency_ms_per_s: float = 0.0
    per_call_ms_per_s: float = 0.0


@dataclass(frozen=True)
class DeployVerdict:
    version: str
    at: float
    suspect: bool
    reason: str = ""


@dataclass(frozen=True)
class Diagnosis:
    window_start: float
    window_end: float
    baseline_start: float
    baseline_end: float
    verdict: Verdict
    summary: str
    traffic_factor: float
    culprits: tuple[Culprit, ...]
    deploys: tuple[DeployVerdict, ...]
    learning: bool = False
    # what the window was compared with: "history" (the intervals before it), "pre_onset" (the
    # window's own intervals before the onset it holds) or "long_run" (pg_stat_statements'
    # cumulative counters); baseline_note says it in words, e.g. "the long-run average since ..."
    baseline_kind: str = "history"
    baseline_note: str = ""
    # what limits the diagnosis, said in its summary too, e.g. "only the statements of role
    # 'app' are visible" (a role without pg_monitor); JSON: the optional "note"
    note: str = ""
    # the top culprit's capacity, the server's headroom and the replicas that could take it
    # (querywatch.capacity, added by querywatch.headroom from the store); JSON: "capacity"
    capacity: Assessment | None = None
