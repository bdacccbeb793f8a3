"""Pure: the long-run baseline that pg_stat_statements already holds on first contact.

Every entry's counters are cumulative since it started counting: since its ``stats_since``
(PostgreSQL 17+) or since ``pg_stat_statements_info.stats_reset`` (14+). One snapshot so gives each
fingerprint's long-run calls/s and mean ms, before querywatch has any history of its own.

The baseline is one synthetic complete :class:`~querywatch.model.IntervalSummary` spanning
``[since, taken_at]``: an entry that started counting later than ``since`` has its counters scaled
to the whole span (its rate is kept), so diagnosis and detection read it like any interval.

Trust: statistics younger than :func:`min_age` (reset minutes ago; the ``[detect]
long_run_min_age`` setting) describe too little to be a normal; the baseline then says why and
callers learn as usual. An entry younger than that on PostgreSQL 17+ is left out: it is new, not
part of the long run.

>>> from querywatch.model import Snapshot
>>> lr = long_run(Snapshot(1000.0, 0.0, 970.0, 0, {}), {}, min_age_s=300.0)
>>> lr.trusted, lr.reason
(False, 'pg_stat_statements was reset 30 s ago')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from querywatch.model import Counters, IntervalSummary, Snapshot, StatementKey

MIN_AGE_S = 300.0  # default of [detect] long_run_min_age: younger statistics are not a normal
MIN_AGE_INTERVALS = 30  # ... nor statistics younger than this many intervals


def min_age(interval_s: float, setting_s: float = MIN_AGE_S) -> float:
    """The age from which the statistics are a long run: max(the ``[detect] long_run_min_age``
    setting, 5 min by default; 30 intervals)."""
    return max(setting_s, MIN_AGE_INTERVALS * interval_s)


@dataclass(frozen=True)
class LongRun:
    """Per-fingerprint counters over ``[since, taken_at]`` (local clock) and whether to trust
    them; ``reason`` says why not (empty when trusted)."""

    since: float
    taken_at: float
    by_fingerprint: Mapping[str, Counters] = field(default_factory=dict)
    trusted: bool = True
    reason: str = ""

    @property
    def seconds(self) -> float:
        return self.taken_at - self.since

    def summary(self) -> IntervalSummary:
        """The long run as one complete interval (the input of detection and diagnosis)."""
        return IntervalSummary(self.since, self.taken_at, True, self.by_fingerprint)

    def note(self) -> str:
        """What a diagnosis compared with, e.g. "the long-run average since 2026-11-02 08:14 UTC"."""
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
        note = f"the long-run average since {since} (pg_stat_statements, {_age(self.seconds)})"
        return note if self.trusted else f"{note}; too short to trust: {self.reason}"


def long_run(
    snapshot: Snapshot,
    fingerprints: Mapping[StatementKey, str],
    *,
    own: frozenset[str] = frozenset(),
    min_age_s: float = MIN_AGE_S,
) -> LongRun:
    """The long-run baseline of one snapshot; entries without a fingerprint, querywatch's own
    statements and nested (non top-level) entries are left out."""
    server_now = snapshot.server_taken_at or snapshot.taken_at
    to_local = snapshot.taken_at - server_now
    since = _since(snapshot)
    if since is None:
        reason = "pg_stat_statements does not say since when it counts (PostgreSQL 13 or older)"
        return LongRun(snapshot.taken_at, snapshot.taken_at, trusted=False, reason=reason)
    span = server_now - since
    sums: dict[str, Counters] = {}
    for key, stats in snapshot.statements.items():
        fp = fingerprints.get(key)
        if fp is None or fp in own or not key.toplevel or stats.counters.calls <= 0:
            continue
        started = max(stats.stats_since or since, since)
        age = server_now - started
        if age <= 0:
            continue
        if started > since and age < min_age_s:  # an entry new since (PostgreSQL 17+) ...
            if span >= min_age_s:
                continue  # ... is not part of a long run
            age = span  # ... but young statistics are all recent: count it over the span
        counters = _scaled(stats.counters, span / age)
        known = sums.get(fp)
        sums[fp] = counters if known is None else known.plus(counters)
    trusted = span >= min_age_s
    reason = "" if trusted else _young(span, snapshot.stats_reset is not None)
    return LongRun(since + to_local, snapshot.taken_at, MappingProxyType(sums), trusted, reason)


def _since(snapshot: Snapshot) -> float | None:
    """When the statistics started counting, on the server's clock."""
    if snapshot.stats_reset is not None:
        return snapshot.stats_reset
    starts = [s.stats_since for s in snapshot.statements.values() if s.stats_since is not None]
    return min(starts) if starts else None


def _scaled(counters: Counters, factor: float) -> Counters:
    if factor == 1.0:
        return counters
    return Counters.from_values([v * factor for v in counters.values()])


def _young(span: float, reset: bool) -> str:
    what = "was reset" if reset else "started counting"
    return f"pg_stat_statements {what} {_age(max(span, 0.0))} ago"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
