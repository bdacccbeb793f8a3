"""Pure: two snapshots -> one interval of per-statement deltas, with gaps instead of invented values.

Rules, in order:

* the server restarted (``pg_postmaster_start_time`` changed): the whole interval is a gap;
* ``pg_stat_statements_info.stats_reset`` changed, or most counters went down: a reset, a gap;
* otherwise each entry present in both snapshots gives ``now - before``; an entry whose counters went
  down, or whose ``stats_since`` moved past the earlier snapshot, restarted counting after eviction:
  when it is known to be new since the earlier snapshot its whole count is the delta, else it is
  skipped and recorded in a partial gap;
* an entry that is new in the later snapshot started after the earlier one, so its counters are the
  delta; but when entries were evicted in between (dealloc grew), a "new" entry may be an old one that
  was evicted and came back, so the interval records a partial ``dealloc`` gap;
* entries that vanished were evicted: a partial ``evicted`` gap.

Only statements that ran (calls > 0) appear in the interval.

A restarted collector continues from the snapshot its last run stored (:func:`catch_up`): the
delta from it to the first new snapshot is one interval, marked ``catch_up``, that spans the
collector's downtime, unless the rules above make it a gap (the server restarted, statistics were
reset) or the stored snapshot came from another server (another system identifier). A catch-up is
an average over a long stretch: detection may judge it, but one longer than ``LONG_CATCH_UP``
typical intervals stays out of baselines (:func:`baseline_worthy`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator
from dataclasses import replace

from .model import (
    Counters,
    Gap,
    GapReason,
    Interval,
    IntervalSummary,
    Snapshot,
    StatementDelta,
    StatementStats,
)

RESET_FRACTION = 0.5  # more than this share of entries going down means a global reset
LONG_CATCH_UP = 3.0  # a catch-up longer than this many typical intervals is kept out of baselines


def delta(before: Snapshot, after: Snapshot) -> Interval:
    """The interval between two snapshots of the same server."""
    start, end = before.taken_at, after.taken_at
    if after.server_started != before.server_started:
        return _full_gap(before, after, GapReason.RESTART, "server restarted")
    if _reset_changed(before, after):
        return _full_gap(before, after, GapReason.RESET, "pg_stat_statements was reset")
    deltas, went_down = _entry_deltas(before, after)
    if went_down and went_down > RESET_FRACTION * max(len(before.statements), 1):
        return _full_gap(before, after, GapReason.RESET, f"{went_down} entries' counters went down")
    gaps = _partial_gaps(before, after, went_down)
    database = after.database.minus(before.database)
    return Interval(start, end, tuple(deltas), database, gaps, _dealloc_growth(before, after))


def catch_up(
    stored: Snapshot,
    after: Snapshot,
    stored_system: int | None = None,
    system: int | None = None,
) -> Interval:
    """The interval from the snapshot a previous run stored to this run's first one.

    It is marked ``catch_up`` when it is complete (same server, no restart, no reset); a gap
    otherwise. System identifiers are compared only when both are known (a locked-down server
    may refuse ``pg_control_system()``); without them a swapped server still shows as a restart
    (another postmaster start time)."""
    if stored_system is not None and system is not None and stored_system != system:
        detail = f"another server (system identifier {system}, stored {stored_system})"
        return _full_gap(stored, after, GapReason.RESTART, detail)
    interval = delta(stored, after)
    return replace(interval, catch_up=True) if interval.complete else interval


def typical_seconds(intervals: Iterable[IntervalSummary]) -> float | None:
    """The median length of the intervals that are not catch-ups (of all when every one is)."""
    intervals = list(intervals)
    lengths = [i.seconds for i in intervals if i.seconds > 0]
    regular = [i.seconds for i in intervals if i.seconds > 0 and not i.catch_up]
    picked = regular or lengths
    return statistics.median(picked) if picked else None


def baseline_worthy(interval: IntervalSummary, typical_s: float | None) -> bool:
    """False for a catch-up much longer than a typical interval: it averages the collector's
    downtime, which may hold a change (a rollout), so it must not become the normal. A collector
    run from cron makes every interval a catch-up of the same length: those all count."""
    if not interval.catch_up or typical_s is None:
        return True
    return interval.seconds <= LONG_CATCH_UP * typical_s


def _reset_changed(before: Snapshot, after: Snapshot) -> bool:
    return before.stats_reset is not None and after.stats_reset != before.stats_reset


def _full_gap(before: Snapshot, after: Snapshot, reason: GapReason, detail: str) -> Interval:
    gap = Gap(before.taken_at, after.taken_at, reason, detail)
    return Interval(
        before.taken_at, after.taken_at, (), None, (gap,), _dealloc_growth(before, after)
    )


def _dealloc_growth(before: Snapshot, after: Snapshot) -> int:
    if before.dealloc is None or after.dealloc is None:
        return 0
    return max(after.dealloc - before.dealloc, 0)


def _entry_deltas(before: Snapshot, after: Snapshot) -> tuple[list[StatementDelta], int]:
    deltas: list[StatementDelta] = []
    went_down = 0
    for stats, counters in _growth(before, after):
        if counters is None:
            went_down += 1
        elif counters.calls > 0:
            deltas.append(StatementDelta(stats.key, counters))
    return deltas, went_down


def _growth(before: Snapshot, after: Snapshot) -> Iterator[tuple[StatementStats, Counters | None]]:
    """Each entry of ``after`` with its growth, or None when it cannot be known."""
    earlier = before.statements
    since = before.server_taken_at if before.server_taken_at is not None else before.taken_at
    for key, stats in after.statements.items():
        old = earlier.get(key)
        if old is None or _restarted_since(stats, since):
            yield stats, stats.counters
        elif old.counters.calls != stats.counters.calls:  # most entries did not run: skip them
            yield stats, stats.counters.minus(old.counters)


def _restarted_since(stats: StatementStats, taken_at: float) -> bool:
    """PG17+: the entry started counting after the earlier snapshot (both on the server's clock),
    so all of it is new."""
    return stats.stats_since is not None and stats.stats_since > taken_at


def _partial_gaps(before: Snapshot, after: Snapshot, went_down: int) -> tuple[Gap, ...]:
    start, end = before.taken_at, after.taken_at
    gaps: list[Gap] = []
    dealloc = _dealloc_growth(before, after)
    vanished = sum(1 for key in before.statements if key not in after.statements)
    if dealloc:
        gaps.append(
            Gap(start, end, GapReason.DEALLOC, f"{dealloc} entries evicted (dealloc)", partial=True)
        )
    if vanished or went_down:
        detail = f"{vanished} entries vanished, {went_down} restarted counting"
        gaps.append(Gap(start, end, GapReason.EVICTED, detail, partial=True))
    return tuple(gaps)
