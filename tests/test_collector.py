"""Pure delta rules: hand-made snapshots in, intervals and gaps out."""

from __future__ import annotations

import pytest

from querywatch.collector import baseline_worthy, catch_up, delta, typical_seconds
from querywatch.model import (
    Counters,
    GapReason,
    IntervalSummary,
    Snapshot,
    StatementKey,
    StatementStats,
)

A = StatementKey(1, 10, 111)
B = StatementKey(1, 10, 222)
C = StatementKey(1, 10, 333)


def snap(
    at: float,
    entries: dict[StatementKey, tuple[float, float]],
    *,
    started: float = 0.0,
    reset: float | None = 0.0,
    dealloc: int | None = 0,
    since: dict[StatementKey, float] | None = None,
) -> Snapshot:
    since = since or {}
    stats = {
        k: StatementStats(k, Counters(calls=c, exec_ms=ms, rows=c), since.get(k))
        for k, (c, ms) in entries.items()
    }
    return Snapshot(at, started, reset, dealloc, stats)


def calls(interval: object) -> dict[int, float]:
    return {d.key.queryid: d.counters.calls for d in interval.statements}  # type: ignore[attr-defined]


def test_growth_is_the_delta() -> None:
    before = snap(100, {A: (10, 5.0), B: (3, 1.0)})
    after = snap(110, {A: (1010, 505.0), B: (13, 3.0)})
    interval = delta(before, after)
    assert calls(interval) == {111: 1000, 222: 10}
    assert interval.complete and interval.gaps == ()
    a = next(d for d in interval.statements if d.key == A)
    assert a.counters.mean_ms == pytest.approx(0.5)


def test_idle_statements_are_not_in_the_interval() -> None:
    before = snap(100, {A: (10, 5.0), B: (3, 1.0)})
    after = snap(110, {A: (11, 6.0), B: (3, 1.0)})
    assert calls(delta(before, after)) == {111: 1}


@pytest.mark.parametrize(
    ("after_kwargs", "reason"),
    [
        ({"started": 50.0}, GapReason.RESTART),
        ({"reset": 105.0}, GapReason.RESET),
    ],
)
def test_restart_and_reset_are_full_gaps(after_kwargs: dict[str, float], reason: GapReason) -> None:
    before = snap(100, {A: (10, 5.0)})
    after = snap(110, {A: (2, 1.0)}, **after_kwargs)  # type: ignore[arg-type]
    interval = delta(before, after)
    assert interval.statements == ()
    assert not interval.complete
    assert [g.reason for g in interval.gaps] == [reason]


def test_counters_going_down_everywhere_is_a_reset_without_info_view() -> None:
    before = snap(100, {A: (10, 5.0), B: (8, 4.0)}, reset=None, dealloc=None)
    after = snap(110, {A: (2, 1.0), B: (1, 0.5)}, reset=None, dealloc=None)
    interval = delta(before, after)
    assert interval.statements == () and not interval.complete
    assert interval.gaps[0].reason is GapReason.RESET


def test_one_entry_going_down_is_skipped_not_negative() -> None:
    before = snap(100, {A: (10, 5.0), B: (8, 4.0), C: (5, 1.0)})
    after = snap(110, {A: (20, 6.0), B: (2, 1.0), C: (6, 2.0)}, dealloc=3)
    interval = delta(before, after)
    assert calls(interval) == {111: 10, 333: 1}
    assert interval.complete
    assert {g.reason for g in interval.gaps} == {GapReason.DEALLOC, GapReason.EVICTED}
    assert all(g.partial for g in interval.gaps)
    assert interval.dealloc == 3
    assert all(v >= 0 for d in interval.statements for v in d.counters.values())


def test_new_entry_counts_whole() -> None:
    before = snap(100, {A: (10, 5.0)})
    after = snap(110, {A: (10, 5.0), B: (7, 3.5)})
    assert calls(delta(before, after)) == {222: 7}


def test_vanished_entry_is_a_partial_gap() -> None:
    before = snap(100, {A: (10, 5.0), B: (7, 3.5)})
    after = snap(110, {A: (12, 6.0)}, dealloc=1)
    interval = delta(before, after)
    assert calls(interval) == {111: 2}
    assert any(g.reason is GapReason.EVICTED and g.partial for g in interval.gaps)


def test_stats_since_after_previous_snapshot_means_recreated_entry() -> None:
    before = snap(100, {A: (10, 5.0)}, since={A: 50.0})
    after = snap(110, {A: (15, 7.0)}, since={A: 105.0})
    # evicted and re-created at 105: all 15 calls happened after the earlier snapshot
    assert calls(delta(before, after)) == {111: 15}


def test_stats_since_is_compared_on_the_server_clock() -> None:
    # the monitoring host's clock runs 100 s behind the server's: an entry created on the server
    # before the earlier read must not look re-created
    before = Snapshot(
        0.0, 0.0, 0.0, 0, {A: StatementStats(A, Counters(calls=5), 1050.0)}, server_taken_at=1100.0
    )
    after = Snapshot(
        10.0, 0.0, 0.0, 0, {A: StatementStats(A, Counters(calls=7), 1050.0)}, server_taken_at=1110.0
    )
    assert calls(delta(before, after)) == {111: 2}


# -- catch-ups: the interval from a previous run's stored snapshot ---------------------------------
@pytest.mark.parametrize(
    ("after_kwargs", "systems", "reason"),
    [
        ({}, (7, 7), None),
        ({}, (None, 7), None),  # identifier not readable then: start times still compared
        ({"started": 50.0}, (7, 7), GapReason.RESTART),
        ({"reset": 105.0}, (7, 7), GapReason.RESET),
        ({}, (7, 8), GapReason.RESTART),  # another server
    ],
)
def test_catch_up_continues_or_is_a_gap(
    after_kwargs: dict[str, float], systems: tuple[int | None, int | None], reason: GapReason | None
) -> None:
    stored = snap(100, {A: (10, 5.0), B: (3, 1.0)})
    after = snap(700, {A: (1010, 505.0), B: (13, 3.0)}, **after_kwargs)  # type: ignore[arg-type]
    interval = catch_up(stored, after, *systems)
    assert (interval.start, interval.end) == (100, 700)
    if reason is None:
        assert interval.catch_up and interval.complete
        assert calls(interval) == {111: 1000, 222: 10}
    else:
        assert not interval.catch_up and not interval.complete
        assert interval.statements == () and [g.reason for g in interval.gaps] == [reason]
    if systems == (7, 8):
        assert "another server" in interval.gaps[0].detail


def summary(start: float, end: float, *, catch_up: bool = False) -> IntervalSummary:
    return IntervalSummary(start, end, True, {}, catch_up=catch_up)


@pytest.mark.parametrize(
    ("seconds", "typical", "worthy"),
    [
        (10.0, 10.0, True),
        (30.0, 10.0, True),  # a quick restart: an interval like the others
        (31.0, 10.0, False),
        (600.0, 10.0, False),
        (600.0, None, True),  # nothing to compare with
    ],
)
def test_long_catch_ups_stay_out_of_baselines(
    seconds: float, typical: float | None, worthy: bool
) -> None:
    assert baseline_worthy(summary(0, seconds, catch_up=True), typical) is worthy
    assert baseline_worthy(summary(0, seconds), typical)  # regular intervals always count


def test_typical_seconds_ignores_catch_ups_unless_all_are() -> None:
    mixed = [summary(0, 10), summary(10, 20), summary(20, 620, catch_up=True), summary(620, 631)]
    assert typical_seconds(mixed) == 10.0
    cron = [summary(i * 300.0, (i + 1) * 300.0, catch_up=True) for i in range(4)]
    assert typical_seconds(cron) == 300.0  # `collect --once` from cron: every one is a catch-up
    assert all(baseline_worthy(s, typical_seconds(cron)) for s in cron)
    assert typical_seconds([]) is None
