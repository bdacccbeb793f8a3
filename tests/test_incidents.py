"""Incidents (pending -> firing -> resolved) and the Detector over hand-made intervals."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from querywatch.detect import (
    Detector,
    DetectSettings,
    Observation,
    Transition,
    incident_id,
    root_cause_key,
    step,
)
from querywatch.model import (
    ActivitySummary,
    Anomaly,
    Counters,
    FingerprintActivity,
    Incident,
    IncidentState,
    IntervalSummary,
)

S = DetectSettings()
FIRING, RESOLVED, PENDING = IncidentState.FIRING, IncidentState.RESOLVED, IncidentState.PENDING
MARGINAL, FAR = 1.5, 5.0


def anomaly(severity: float, subject: str = "orders", rule: str = "db_time_surge") -> Anomaly:
    return Anomaly(rule, subject, 0.0, severity, severity * 10, 10.0, f"{rule} x{severity}")


def run(
    pattern: Sequence[Sequence[Anomaly]], settings: DetectSettings = S
) -> tuple[list[Incident], list[tuple[int, Transition]]]:
    """Step through one list of anomalies per interval; transitions tagged with their index."""
    incidents: list[Incident] = []
    transitions: list[tuple[int, Transition]] = []
    for i, found in enumerate(pattern):
        incidents, ts = step(incidents, found, float(i), settings)
        transitions += [(i, t) for t in ts]
        incidents = (
            [x for x in incidents if x.state is not RESOLVED] if i < len(pattern) - 1 else incidents
        )
    return incidents, transitions


def statuses(transitions: list[tuple[int, Transition]]) -> list[tuple[int, str]]:
    return [(i, t.status.value) for i, t in transitions]


NONE: list[Anomaly] = []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ([[anomaly(MARGINAL)], NONE, NONE], []),  # marginal for one interval: no page
        ([[anomaly(MARGINAL)], [anomaly(MARGINAL)]], [(1, "firing")]),  # holds 2: fires
        ([[anomaly(FAR)]], [(0, "firing")]),  # far past: fires at once
        ([[anomaly(MARGINAL)], [anomaly(FAR)]], [(1, "firing")]),  # escalates
        (
            [[anomaly(FAR)], NONE, NONE, NONE, NONE],
            [(0, "firing"), (3, "resolved")],  # resolves after exactly 3 clean intervals
        ),
        (
            [[anomaly(FAR)], NONE, NONE, [anomaly(MARGINAL)], NONE, NONE, NONE],
            [(0, "firing"), (6, "resolved")],  # an anomaly resets the clean count
        ),
        ([[anomaly(MARGINAL)], NONE] * 10, []),  # marginal flapping never pages
        ([[anomaly(FAR)], NONE] * 10, [(0, "firing")]),  # far flapping pages once
    ],
    ids=["marginal-1", "marginal-2", "far", "escalate", "resolve-3", "reset", "flap-m", "flap-far"],
)
def test_state_machine(pattern: list[list[Anomaly]], expected: list[tuple[int, str]]) -> None:
    _, transitions = run(pattern)
    assert statuses(transitions) == expected


def test_incident_record_and_timeline() -> None:
    incidents, transitions = run([[anomaly(MARGINAL)], [anomaly(MARGINAL)], NONE, NONE, NONE])
    (incident,) = incidents
    assert incident.state is RESOLVED
    assert (incident.opened_at, incident.fired_at, incident.resolved_at) == (0.0, 1.0, 4.0)
    assert [e.state for e in incident.timeline] == [PENDING, FIRING, RESOLVED]
    assert incident.id == incident_id("orders", 0.0) and len(incident.id) == 12
    assert incident.id != incident_id("orders", 1.0)
    assert transitions[0][1].anomalies == (anomaly(MARGINAL),)
    assert transitions[1][1].incident == incident


def test_pending_dropped_silently() -> None:
    incidents, ts = step([], [anomaly(MARGINAL)], 0.0, S)
    assert [i.state for i in incidents] == [PENDING] and ts == []
    incidents, ts = step(incidents, [], 1.0, S)
    assert incidents == [] and ts == []


def test_one_incident_per_root_cause() -> None:
    found = [
        anomaly(FAR, "orders", "db_time_surge"),
        anomaly(MARGINAL, "orders", "call_rate_spike"),
        anomaly(MARGINAL, "server:cpu", "cpu_saturation"),
        anomaly(MARGINAL, "server:connections", "connection_saturation"),
        anomaly(MARGINAL, "server:traffic", "traffic_surge"),
    ]
    incidents, ts = step([], found, 0.0, S)
    by_key = {i.key: i for i in incidents}
    assert set(by_key) == {"orders", "server:traffic"}
    assert by_key["orders"].rules == (
        "db_time_surge",
        "call_rate_spike",
        "cpu_saturation",
        "connection_saturation",
    )
    assert [t.incident.key for t in ts] == ["orders"]
    # the symptom alone next interval keeps the cause's incident firing
    incidents, ts = step(incidents, [anomaly(MARGINAL, "server:cpu", "cpu_saturation")], 1.0, S)
    assert {i.key for i in incidents} == {"orders"}
    assert next(i for i in incidents if i.key == "orders").clean_intervals == 0


def test_root_cause_key_is_subject() -> None:
    assert root_cause_key(anomaly(2.0, "abc")) == "abc"
    assert root_cause_key(anomaly(2.0, "server:traffic", "traffic_surge")) == "server:traffic"


# -- Detector over synthetic workloads --------------------------------------------------------

SECONDS = 2.0
# fingerprint -> (calls/s, mean ms)
WORKLOAD: dict[str, tuple[float, float]] = {
    "orders": (50.0, 2.0),
    "users": (20.0, 1.0),
    "items": (30.0, 3.0),
    "cart": (10.0, 5.0),
    "tiny": (2.0, 0.01),
}


def summary(
    i: int,
    workload: Mapping[str, tuple[float, float]] = WORKLOAD,
    rng: random.Random | None = None,
    jitter: float = 0.0,
    activity: ActivitySummary | None = None,
) -> IntervalSummary:
    by_fp = {}
    for fp, (cps, mean) in workload.items():
        jc = 1 + rng.uniform(-jitter, jitter) if rng else 1.0
        jm = 1 + rng.uniform(-jitter, jitter) if rng else 1.0
        calls = round(cps * SECONDS * jc)
        by_fp[fp] = Counters(calls=calls, exec_ms=calls * mean * jm, rows=calls)
    return IntervalSummary(i * SECONDS, (i + 1) * SECONDS, True, by_fp, activity=activity)


def scaled(fp: str, calls: float = 1.0, mean: float = 1.0) -> dict[str, tuple[float, float]]:
    w = dict(WORKLOAD)
    c, m = w[fp]
    w[fp] = (c * calls, m * mean)
    return w


def feed(detector: Detector, intervals: Sequence[IntervalSummary]) -> list[Observation]:
    return [detector.observe(iv) for iv in intervals]


def fired(observations: Sequence[Observation]) -> list[tuple[int, str, str]]:
    return [
        (n, t.status.value, t.incident.key)
        for n, o in enumerate(observations)
        for t in o.transitions
    ]


def learned(rng: random.Random | None = None, n: int = 30) -> tuple[Detector, int]:
    d = Detector()
    feed(d, [summary(i, rng=rng, jitter=0.3) for i in range(n)])
    assert not d.learning
    return d, n


def test_learning_pages_nothing_before_12_intervals() -> None:
    d = Detector()
    spikes = [
        summary(i, scaled("orders", calls=20)) if i % 3 == 2 else summary(i) for i in range(11)
    ]
    observations = feed(d, spikes)
    assert all(o.learning and not o.anomalies and not o.transitions for o in observations)
    assert d.learning
    o = d.observe(summary(11))
    assert o.learning and o.baseline_intervals == 12  # the 12th interval completes learning
    assert not d.learning
    o = d.observe(summary(12, scaled("orders", calls=20)))
    assert not o.learning and o.anomalies


def test_jitter_30_percent_over_200_intervals_pages_nothing() -> None:
    rng = random.Random(20261126)
    d = Detector()
    observations = feed(d, [summary(i, rng=rng, jitter=0.3) for i in range(212)])
    assert fired(observations) == []
    assert sum(len(o.anomalies) for o in observations) == 0
    assert d.incidents == ()


def test_one_query_x10_fires_within_2_intervals_and_resolves_within_3() -> None:
    rng = random.Random(1)
    d, n = learned(rng)
    spike = [summary(n + i, scaled("orders", calls=10), rng, 0.3) for i in range(10)]
    after = [summary(n + 10 + i, rng=rng, jitter=0.3) for i in range(5)]
    events = fired(feed(d, spike + after))
    assert events[0] == (0, "firing", "orders")
    assert events[1:] == [(12, "resolved", "orders")]  # 3rd clean interval after the spike
    assert d.incidents == ()


def test_long_incident_does_not_become_normal() -> None:
    rng = random.Random(2)
    d, n = learned(rng)
    spike = [summary(n + i, scaled("orders", calls=10), rng, 0.3) for i in range(300)]
    assert fired(feed(d, spike)) == [(0, "firing", "orders")]
    assert [i.key for i in d.incidents] == ["orders"]


def test_lasting_change_becomes_normal_after_max_excluded_intervals() -> None:
    settings = DetectSettings(window_intervals=30, max_excluded_intervals=20, refresh_every=5)
    d = Detector(settings)
    feed(d, [summary(i) for i in range(30)])
    events = fired(feed(d, [summary(30 + i, scaled("orders", calls=10)) for i in range(60)]))
    assert events[0] == (0, "firing", "orders")
    assert events[1][1:] == ("resolved", "orders")
    assert 20 < events[1][0] < 60


def test_uniform_x3_pages_only_traffic() -> None:
    rng = random.Random(3)
    d, n = learned(rng)
    w3 = {fp: (c * 3, m) for fp, (c, m) in WORKLOAD.items()}
    observations = feed(d, [summary(n + i, w3, rng, 0.3) for i in range(20)])
    subjects = {a.subject for o in observations for a in o.anomalies}
    assert subjects == {"server:traffic"}
    assert fired(observations) == [(1, "firing", "server:traffic")]
    assert observations[-1].traffic_factor == pytest.approx(3.0, rel=0.35)


def test_index_dropped_fires_at_once() -> None:
    d, n = learned(random.Random(4))
    (o,) = feed(d, [summary(n, scaled("items", mean=12))])
    assert [t.incident.key for t in o.transitions] == ["items"]
    assert "latency_regression" in o.transitions[0].incident.rules


def test_new_expensive_query_fires() -> None:
    d, n = learned(random.Random(5))
    w = {**WORKLOAD, "scan": (20.0, 20.0)}  # 400 ms/s, new, 40 calls per interval
    assert fired(feed(d, [summary(n + i, w) for i in range(3)])) == [(0, "firing", "scan")]


def test_few_calls_must_persist_to_page() -> None:
    d, n = learned(random.Random(5))
    slow = {**WORKLOAD, "scan": (2.0, 200.0)}  # 400 ms/s but only 4 calls per interval
    observations = feed(d, [summary(n, slow), summary(n + 1), summary(n + 2)])
    assert fired(observations) == []  # one burst of a few slow calls does not page
    assert observations[0].anomalies[0].severity < DetectSettings().far_factor
    assert fired(feed(d, [summary(n + 3 + i, slow) for i in range(2)])) == [(1, "firing", "scan")]


def test_lock_waits_fire_on_the_blockers_fingerprint() -> None:
    d, n = learned(random.Random(6))
    locked = ActivitySummary(
        samples=2,
        sessions_mean=8,
        active_mean=5,
        idle_in_transaction_mean=1,
        lock_waiting_mean=4,
        sessions_max=8,
        max_connections=100,
        by_fingerprint=(
            FingerprintActivity(
                "begin-update", blocking=2, blocked_sessions=8, idle_in_transaction=2
            ),
            FingerprintActivity("orders", active=8, lock_waits=8),
        ),
    )
    events = fired(feed(d, [summary(n + i, activity=locked) for i in range(2)]))
    assert events == [(0, "firing", "begin-update")]


def test_incomplete_interval_is_skipped() -> None:
    d, n = learned()
    iv = summary(n, scaled("orders", calls=50))
    o = d.observe(IntervalSummary(iv.start, iv.end, False, iv.by_fingerprint))
    assert o.anomalies == () and o.transitions == () and o.baseline_intervals == n


def test_history_preloads_the_baseline() -> None:
    d = Detector(history=[summary(i) for i in range(12)])
    assert not d.learning
    o = d.observe(summary(12, scaled("orders", calls=10)))
    assert [t.incident.key for t in o.transitions] == ["orders"]


def test_small_window_evicts_and_keeps_working() -> None:
    settings = DetectSettings(window_intervals=15, refresh_every=4)
    d = Detector(settings)
    feed(d, [summary(i, {**WORKLOAD, "old": (5.0, 10.0)}) for i in range(15)])
    feed(d, [summary(15 + i) for i in range(20)])  # "old" leaves the window
    assert d.observe(summary(40)).baseline_intervals == 15
    o = d.observe(summary(41, {**WORKLOAD, "old": (20.0, 10.0)}))  # 200 ms/s, new again
    assert [t.incident.key for t in o.transitions] == ["old"]
