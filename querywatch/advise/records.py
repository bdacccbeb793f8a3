"""Frozen records of the advisor: statement usage, findings, index advice, health, the review.

They travel between the pure modules (findings, candidates, savings, health, report) and the I/O
modules (plans, catalog, indexes, advisor); nothing here talks to a database.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class QueryStats:
    """What pg_stat_statements says about one statement over a window of ``seconds``."""

    calls: float
    rows: float
    total_ms: float
    seconds: float
    temp_blks_written: float = 0.0
    # Transactions of the database over the same window (pg_stat_database), None when unknown.
    xacts: float | None = None

    @property
    def calls_per_xact(self) -> float | None:
        return self.calls / self.xacts if self.xacts else None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0

    @property
    def db_ms_per_s(self) -> float:
        return self.total_ms / self.seconds if self.seconds > 0 else 0.0


class Severity(enum.StrEnum):
    INFO = "info"
    WARN = "warn"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Finding:
    """One plan rule's verdict: what it saw (evidence with numbers) and what to do."""

    rule: str
    severity: Severity
    message: str
    evidence: tuple[str, ...] = ()
    relation: str | None = None
    fix: str = ""


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One key of a candidate index: a column or an expression over one column."""

    text: str  # as it goes into CREATE INDEX: email, lower(email), (created_at)::date
    column: str  # the underlying column
    role: str  # equality | join | range | order
    expression: bool = False


@dataclass(frozen=True, slots=True)
class IndexCandidate:
    """An index the parse tree suggests; not checked against the catalog yet."""

    schema: str | None
    table: str
    keys: tuple[KeyPart, ...]
    reason: str
    predicate: str = ""  # a partial index's WHERE clause ("finished_at IS NULL")
    method: str = "btree"  # btree | brin

    @property
    def key_texts(self) -> tuple[str, ...]:
        return tuple(k.text for k in self.keys)


@dataclass(frozen=True, slots=True)
class Verification:
    """What hypopg said: did the plan use the hypothetical index, and at what cost."""

    available: bool  # False: hypopg missing, nothing was checked
    used: bool = False
    cost_before: float = 0.0
    cost_after: float = 0.0
    detail: str = ""

    @property
    def cost_ratio(self) -> float:
        """Fraction of the planner's cost the index removes (0..1)."""
        if not self.used or self.cost_before <= 0:
            return 0.0
        return max(0.0, 1.0 - self.cost_after / self.cost_before)


@dataclass(frozen=True, slots=True)
class IndexAdvice:
    """A verified (or explicitly unverified) CREATE INDEX CONCURRENTLY with its expected gain."""

    candidate: IndexCandidate
    name: str
    ddl: str
    verification: Verification
    verified: bool
    saving: float  # estimated fraction of the statement's time saved (0..1)
    saved_ms_per_s: float  # saving x the statement's DB time per second
    basis: str  # which evidence set `saving`: planner | rows_per_call | pg_stats | none
    evidence: tuple[str, ...] = ()
    write_heavy: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """The gist of a plan: its hash, cost, and the operations worth a glance."""

    plan_hash: str
    total_cost: float
    rows: float
    nodes: tuple[str, ...]  # "Seq Scan on users", "Index Scan using users_pkey on users", ...
    generic: bool = True
    analyzed: bool = False


@dataclass(frozen=True)
class Advice:
    """Everything the advisor says about one statement."""

    fingerprint: str
    query: str
    queryids: tuple[int, ...] = ()
    stats: QueryStats | None = None
    db_ms_per_s: float = 0.0
    plan: Mapping[str, Any] | None = None
    summary: PlanSummary | None = None
    findings: tuple[Finding, ...] = ()
    indexes: tuple[IndexAdvice, ...] = ()
    error: str = ""  # why there is no plan (timeout, not explainable, ...)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthFinding:
    check: str  # unused_index | duplicate_index | invalid_index | missing_statistics | ...
    severity: Severity
    subject: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Review:
    """The review report: the most resource-intensive statements, their advice, server health."""

    server: str
    version: str
    generated_at: float
    window_start: float | None
    window_end: float
    stats_source: str  # "store" or "pg_stat_statements"
    hypopg: str  # "1.3.1" or why it is missing
    statements: tuple[Advice, ...] = ()
    health: tuple[HealthFinding, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class IndexFact:
    """An existing index, from pg_index and pg_stat_all_indexes."""

    schema: str
    table: str
    name: str
    keys: tuple[str, ...]  # pg_get_indexdef of each key column
    method: str = "btree"
    valid: bool = True
    unique: bool = False
    primary: bool = False
    partial: bool = False
    constraint: bool = False
    scans: int = 0
    bytes: int = 0
    predicate: str = ""  # pg_get_expr(indpred) of a partial index


@dataclass(frozen=True, slots=True)
class TableFact:
    """A table's size, activity and statistics age, from pg_class and pg_stat_user_tables."""

    schema: str
    table: str
    rows: float  # reltuples (-1: never analyzed or vacuumed, PostgreSQL 14+)
    pages: int = 0
    columns: tuple[str, ...] = ()
    live_rows: int = 0
    modified_since_analyze: int = 0
    analyzed: bool = True  # last_analyze or last_autoanalyze is set
    seq_scans: int = 0
    idx_scans: int = 0
    writes: int = 0  # rows inserted, updated and deleted
    rows_read: int = 0  # rows read by sequential and index scans

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.table}"
