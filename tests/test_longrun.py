"""The long-run baseline from one snapshot (querywatch.longrun) and the Detector's prior."""

from __future__ import annotations

from pathlib import Path

import pytest

from querywatch.detect import Detector, DetectSettings, settings_from_mapping
from querywatch.errors import ConfigError
from querywatch.longrun import MIN_AGE_S, LongRun, long_run, min_age
from querywatch.model import (
    Counters,
    IncidentState,
    IntervalSummary,
    Snapshot,
    StatementKey,
    StatementStats,
)
from querywatch.store import Store

NOW = 1_800_000_000.0  # local clock of the snapshot
SKEW = 7.0  # the server's clock runs 7 s behind


def key(queryid: int, toplevel: bool = True) -> StatementKey:
    return StatementKey(1, 10, queryid, toplevel)


def snapshot(
    entries: dict[StatementKey, tuple[float, float, float | None]],
    reset_ago: float | None,
) -> Snapshot:
    """Entries as (calls, exec_ms, stats_since seconds ago or None)."""
    server_now = NOW - SKEW
    stats = {
        k: StatementStats(
            k, Counters(calls=c, exec_ms=ms), None if ago is None else server_now - ago
        )
        for k, (c, ms, ago) in entries.items()
    }
    reset = None if reset_ago is None else server_now - reset_ago
    return Snapshot(NOW, 0.0, reset, 0, stats, server_taken_at=server_now)


def test_rates_since_the_reset_with_own_and_nested_statements_left_out() -> None:
    snap = snapshot(
        {
            key(1): (6000, 3000.0, None),
            key(2): (600, 6000.0, None),
            key(3): (900, 90.0, None),  # same fingerprint as 1 (another queryid)
            key(4): (100, 1.0, None),  # querywatch's own
            key(5, toplevel=False): (5000, 50.0, None),  # nested in a function
            key(6): (50, 5.0, None),  # no text: no fingerprint
        },
        reset_ago=600.0,
    )
    fps = {key(1): "a", key(2): "b", key(3): "a", key(4): "own", key(5, False): "c"}
    lr = long_run(snap, fps, own=frozenset({"own"}), min_age_s=300.0)
    assert lr.trusted and lr.reason == ""
    assert lr.since == pytest.approx(NOW - 600.0)  # on the local clock, not the server's
    assert lr.seconds == pytest.approx(600.0)
    assert set(lr.by_fingerprint) == {"a", "b"}
    summary = lr.summary()
    assert (summary.start, summary.end, summary.complete) == (lr.since, NOW, True)
    a = summary.by_fingerprint["a"]
    assert a.calls / summary.seconds == pytest.approx(11.5)  # (6000 + 900) / 600 s
    assert a.mean_ms == pytest.approx(3090.0 / 6900)
    assert summary.by_fingerprint["b"].mean_ms == pytest.approx(10.0)


def test_entries_younger_than_the_reset_keep_their_rate_and_new_ones_are_left_out() -> None:
    snap = snapshot(
        {
            key(1): (3600, 360.0, 3600.0),  # counting since the reset: 1/s
            key(2): (1200, 120.0, 600.0),  # came back after an eviction 10 min ago: 2/s
            key(3): (400, 40.0, 40.0),  # new 40 s ago: not part of the long run
        },
        reset_ago=3600.0,
    )
    lr = long_run(snap, {key(1): "a", key(2): "b", key(3): "c"}, min_age_s=300.0)
    rates = {fp: c.calls / lr.seconds for fp, c in lr.by_fingerprint.items()}
    assert rates == pytest.approx({"a": 1.0, "b": 2.0})
    assert lr.by_fingerprint["b"].mean_ms == pytest.approx(0.1)


def test_postgres_17_without_stats_reset_counts_from_the_oldest_entry() -> None:
    snap = snapshot({key(1): (900, 9.0, 900.0), key(2): (10, 1.0, 100.0)}, reset_ago=None)
    lr = long_run(snap, {key(1): "a", key(2): "b"}, min_age_s=300.0)
    assert lr.trusted and lr.seconds == pytest.approx(900.0)
    assert set(lr.by_fingerprint) == {"a"}


def test_young_statistics_count_every_entry_over_the_whole_span() -> None:
    # PostgreSQL 17+ reset 60 s ago: an entry that appeared 20 s ago is recent like all others
    snap = snapshot({key(1): (600, 6.0, 60.0), key(2): (200, 2.0, 20.0)}, reset_ago=60.0)
    lr = long_run(snap, {key(1): "a", key(2): "b"}, min_age_s=300.0)
    assert not lr.trusted
    rates = {fp: c.calls / lr.seconds for fp, c in lr.by_fingerprint.items()}
    assert rates == pytest.approx({"a": 10.0, "b": 200 / 60})


@pytest.mark.parametrize(
    ("reset_ago", "since_ago", "reason"),
    [
        (30.0, None, "pg_stat_statements was reset 30 s ago"),
        (None, 45.0, "pg_stat_statements started counting 45 s ago"),
        (None, None, "pg_stat_statements does not say since when it counts"),
    ],
)
def test_young_or_undated_statistics_are_not_trusted_and_say_why(
    reset_ago: float | None, since_ago: float | None, reason: str
) -> None:
    lr = long_run(snapshot({key(1): (50, 5.0, since_ago)}, reset_ago), {key(1): "a"})
    assert not lr.trusted
    assert lr.reason.startswith(reason)


def test_minimum_age_scales_with_the_interval() -> None:
    assert min_age(1.0) == 300.0
    assert min_age(10.0) == 300.0
    assert min_age(60.0) == 1800.0


@pytest.mark.parametrize(
    ("interval_s", "setting_s", "expected"),
    [(1.0, 45.0, 45.0), (2.0, 45.0, 60.0), (10.0, 3600.0, 3600.0), (60.0, 600.0, 1800.0)],
)
def test_minimum_age_is_the_setting_or_30_intervals(
    interval_s: float, setting_s: float, expected: float
) -> None:
    assert min_age(interval_s, setting_s) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, MIN_AGE_S), ("45s", 45.0), ("2m", 120.0), ("1h", 3600.0), (90, 90.0)],
)
def test_long_run_min_age_setting(value: str | int | None, seconds: float) -> None:
    table = {} if value is None else {"long_run_min_age": value}
    assert settings_from_mapping(table).long_run_min_age == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 minutes", "detect.long_run_min_age: '5 minutes' is not a duration"),
        ("0s", "detect.long_run_min_age: '0s' must be more than zero"),
        (-30, "detect.long_run_min_age: -30 must be more than zero"),
        (True, "detect.long_run_min_age: expected a duration"),
        (["5m"], "detect.long_run_min_age: expected a duration"),
        (float("inf"), "detect.long_run_min_age: 'inf' is not a finite duration"),
    ],
)
def test_long_run_min_age_rejects(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings_from_mapping({"long_run_min_age": value})
    assert "\n" not in str(caught.value)


def test_statistics_older_than_the_setting_are_trusted() -> None:
    """The same 60 s old statistics: trusted with a 45 s minimum age, not with the default."""
    snap = snapshot({key(1): (50, 5.0, None)}, reset_ago=60.0)
    short = long_run(snap, {key(1): "a"}, min_age_s=min_age(1.0, 45.0))
    default = long_run(snap, {key(1): "a"}, min_age_s=min_age(1.0))
    assert short.trusted and short.reason == ""
    assert not default.trusted and default.reason == "pg_stat_statements was reset 60 s ago"


def test_note_says_what_a_diagnosis_compared_with() -> None:
    lr = LongRun(since=1_793_607_240.0, taken_at=1_793_607_240.0 + 7200, trusted=True)
    assert lr.note() == (
        "the long-run average since 2026-11-02 08:14 UTC (pg_stat_statements, 2.0 h)"
    )
    young = LongRun(0.0, 30.0, trusted=False, reason="pg_stat_statements was reset 30 s ago")
    assert young.note().endswith("too short to trust: pg_stat_statements was reset 30 s ago")


def test_store_keeps_each_long_run_and_picks_the_one_before_a_window(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as st:
        server = st.server("db1").id
        first = LongRun(100.0, 500.0, {"a": Counters(calls=10, exec_ms=2.5)}, True, "")
        later = LongRun(100.0, 900.0, {"a": Counters(calls=30, exec_ms=7.5)}, False, "young")
        st.save_long_run(server, first)
        st.save_long_run(server, later)
        assert st.long_run(server, 600.0) == first
        assert st.long_run(server, 950.0) == later
        assert st.long_run(server, 50.0) == first  # none before: the first one after
        assert st.long_run(st.server("db2").id, 600.0) is None


# -- the Detector's prior ------------------------------------------------------------------------

RATES = {"steady1": (50.0, 0.2), "steady2": (10.0, 1.0), "steady3": (5.0, 2.0), "x": (4.0, 5.0)}
SETTINGS = DetectSettings(learning_intervals=12)


def interval(at: float, factors: dict[str, float] | None = None) -> IntervalSummary:
    factors = factors or {}
    by_fp = {
        fp: Counters(calls=rate * factors.get(fp, 1.0), exec_ms=rate * factors.get(fp, 1.0) * ms)
        for fp, (rate, ms) in RATES.items()
    }
    return IntervalSummary(at, at + 1.0, True, by_fp)


def prior(seconds: float = 600.0, factors: dict[str, float] | None = None) -> IntervalSummary:
    one = interval(0.0, factors)
    by_fp = {
        fp: Counters(calls=c.calls * seconds, exec_ms=c.exec_ms * seconds)
        for fp, c in one.by_fingerprint.items()
    }
    return IntervalSummary(-seconds, 0.0, True, by_fp)


def run(detector: Detector, n: int, factors: dict[str, float] | None = None) -> list[float]:
    fired = []
    for i in range(n):
        obs = detector.observe(interval(100.0 + i, factors))
        fired += [t.at for t in obs.transitions if t.status is IncidentState.FIRING]
    return fired


def test_prior_pages_a_mid_incident_start_in_the_first_interval() -> None:
    detector = Detector(SETTINGS)
    detector.use_prior(prior(), min_history_s=10.0)
    first = detector.observe(interval(100.0, {"x": 8.0}))
    assert first.baseline_kind == "long_run" and first.learning  # own history: learning
    assert [t.incident.key for t in first.transitions] == ["x"]


def test_prior_stays_quiet_on_steady_traffic_then_gives_way_to_history() -> None:
    detector = Detector(SETTINGS)
    detector.use_prior(prior(), min_history_s=10.0)
    assert run(detector, 14) == []
    assert detector.observe(interval(200.0)).baseline_kind == "history"


def test_without_a_prior_a_mid_incident_start_learns() -> None:
    detector = Detector(SETTINGS)
    obs = detector.observe(interval(100.0, {"x": 8.0}))
    assert obs.learning and obs.baseline_kind == "learning" and not obs.transitions


def test_a_statement_whose_history_is_only_the_present_is_learned_not_judged() -> None:
    # "x" ran 5 s at its current rate before the watch started: its long run is now
    recent = prior(factors={"x": 5.0 / 600.0})
    detector = Detector(SETTINGS)
    detector.use_prior(recent, min_history_s=10.0)
    assert run(detector, 3, {"x": 1.0}) == []
    assert detector.prior is not None and detector.prior.dropped == ("x",)


def test_prior_of_a_mostly_idle_server_is_given_up() -> None:
    idle = prior(factors=dict.fromkeys(RATES, 0.1))  # typical statements run 10x as often now
    detector = Detector(SETTINGS)
    detector.use_prior(idle, min_history_s=10.0)
    obs = detector.observe(interval(100.0, {"x": 8.0}))
    assert obs.learning and not obs.transitions
    assert detector.prior is not None and "another load" in detector.prior.reason
