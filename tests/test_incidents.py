"""Incidents (pending -> firing -> resolved) and the Detector over hand-made intervals."""

from __future__ import annotations

import doctest
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from workload import Receiver, wait_until

import querywatch.relations as relations_module
from querywatch.alerts import Dispatcher, WebhookChannel
from querywatch.detect import (
    Detector,
    DetectSettings,
    Observation,
    Transition,
    incident_id,
    root_cause_key,
    step,
)
from querywatch.fingerprint import fingerprint
from querywatch.model import (
    ActivitySummary,
    Anomaly,
    Counters,
    FingerprintActivity,
    Incident,
    IncidentState,
    Interval,
    IntervalSummary,
    StatementDelta,
    StatementKey,
)
from querywatch.monitor import Monitor
from querywatch.relations import StatementRelations, relations
from querywatch.store import Store

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


# -- one cause, one page: statements of one table with one onset ------------------------------

ACCOUNTS = frozenset({"pgbench_accounts"})
TABLES: dict[str, frozenset[str]] = {
    "upd": ACCOUNTS,  # UPDATE pgbench_accounts ... WHERE aid = $2
    "sel": ACCOUNTS,  # SELECT abalance FROM pgbench_accounts WHERE aid = $1
    "join": frozenset({"pgbench_accounts", "pgbench_branches"}),
    "tellers": frozenset({"pgbench_tellers"}),
}


def latency(severity: float, subject: str) -> Anomaly:
    return anomaly(severity, subject, "latency_regression")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            {"pgbench_accounts"},
        ),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", {"pgbench_accounts"}),
        ("INSERT INTO pgbench_history (tid, bid) VALUES ($1, $2)", {"pgbench_history"}),
        ("DELETE FROM a USING b WHERE a.id = b.id", {"a", "b"}),
        ("SELECT * FROM shop.orders o JOIN Users u ON u.id = o.user_id", {"orders", "users"}),
        ('SELECT * FROM "Orders"', {"Orders"}),
        ("WITH r AS (SELECT id FROM t) SELECT * FROM r", {"t"}),
        ("WITH r AS (SELECT 1) SELECT * FROM other.r", {"r"}),  # qualified: a table, not the CTE
        ("SELECT * FROM t WHERE id IN (SELECT tid FROM u WHERE x = $1)", {"t", "u"}),
        ("SELECT $1", set()),
        ("SELEC broken", set()),  # not parsed: no relations, no error
        ("", set()),
    ],
)
def test_relations(sql: str, expected: set[str]) -> None:
    assert relations(sql) == expected


def test_relations_doctests() -> None:
    assert doctest.testmod(relations_module).failed == 0


def test_statement_relations_parses_once_and_retries_unknown_texts() -> None:
    asked: list[str] = []
    texts = {"upd": "UPDATE pgbench_accounts SET abalance = $1 WHERE aid = $2"}

    def text_of(fp: str) -> str | None:
        asked.append(fp)
        return texts.get(fp)

    known = StatementRelations(text_of)
    assert known.get("upd") == ACCOUNTS and known.get("upd") == ACCOUNTS
    assert known.get("new") is None
    texts["new"] = "SELECT * FROM orders"
    assert known.get("new") == {"orders"}  # a text stored later is found
    assert asked == ["upd", "new", "new"] and dict(known) == {"upd": ACCOUNTS, "new": {"orders"}}


def test_one_table_one_onset_is_one_incident_listing_every_statement() -> None:
    found = [latency(FAR, "sel"), latency(FAR * 2, "upd")]
    incidents, ts = step([], found, 0.0, S, TABLES)
    (incident,) = incidents
    assert incident.key == "upd" and incident.subjects == ("upd", "sel")  # most severe first
    assert [t.incident.id for t in ts] == [incident.id]
    assert set(ts[0].anomalies) == set(found)
    # without relations each statement is its own root cause, as before
    incidents, ts = step([], found, 0.0, S)
    assert sorted(i.key for i in incidents) == ["sel", "upd"] and len(ts) == 2


def test_a_statement_of_the_table_regressing_one_interval_later_joins() -> None:
    incidents, ts = step([], [latency(FAR, "upd")], 1.0, S, TABLES, adjacent_since=0.0)
    assert len(ts) == 1
    incidents, ts = step(incidents, [latency(FAR, "upd"), latency(FAR, "sel")], 2.0, S, TABLES, 0.5)
    (incident,) = incidents
    assert ts == [] and incident.subjects == ("upd", "sel")
    assert "latency_regression" in incident.timeline[-1].detail  # the join is on the timeline
    assert incident.timeline[-1].detail.count("x5.0") == 1  # only the statement that joined
    # once joined, it stays in the incident even without the one that opened it
    incidents, ts = step(incidents, [latency(FAR, "sel")], 3.0, S, TABLES, 1.5)
    assert [i.key for i in incidents] == ["upd"] and ts == []


@pytest.mark.parametrize(
    ("later", "at", "since", "keys"),
    [
        ("sel", 4.0, 2.5, ["sel", "upd"]),  # same table, onset 3 intervals later: its own cause
        ("tellers", 2.0, 0.5, ["tellers", "upd"]),  # adjacent onset, another table
        ("join", 2.0, 0.5, ["upd"]),  # adjacent onset, shares pgbench_accounts
    ],
    ids=["late", "other-table", "shared-table"],
)
def test_grouping_needs_a_shared_onset_and_table(
    later: str, at: float, since: float, keys: list[str]
) -> None:
    incidents, _ = step([], [latency(FAR, "upd")], 1.0, S, TABLES)
    incidents, _ = step(incidents, [latency(FAR, "upd"), latency(FAR, later)], at, S, TABLES, since)
    assert sorted(i.key for i in incidents) == keys


def test_tables_chain_within_one_interval_and_symptoms_follow_the_group() -> None:
    found = [
        latency(FAR, "sel"),
        latency(FAR * 3, "join"),  # accounts and branches: links "sel" and "branches_upd"
        latency(FAR, "branches_upd"),
        latency(FAR, "tellers"),
        anomaly(MARGINAL, "server:cpu", "cpu_saturation"),
    ]
    tables = {**TABLES, "branches_upd": frozenset({"pgbench_branches"})}
    incidents, ts = step([], found, 0.0, S, tables)
    by_key = {i.key: i for i in incidents}
    assert set(by_key) == {"join", "tellers"}
    assert by_key["join"].subjects[0] == "join"
    assert set(by_key["join"].subjects) == {"join", "branches_upd", "sel"}
    assert "cpu_saturation" in by_key["join"].rules and "server:cpu" not in by_key["join"].subjects
    assert len(ts) == 2


def test_detector_pages_once_for_two_statements_of_one_table() -> None:
    workload = {**WORKLOAD, "upd": (50.0, 0.05), "sel": (50.0, 0.02)}
    d = Detector(history=[summary(i, workload) for i in range(20)])
    slow = {**workload, "upd": (30.0, 5.0), "sel": (30.0, 4.0)}  # both scan the table now
    observations = [d.observe(summary(20 + i, slow), TABLES) for i in range(3)]
    assert fired(observations) == [(0, "firing", "upd")]
    (incident,) = d.incidents
    assert set(incident.subjects) == {"upd", "sel"}
    apart = Detector(history=[summary(i, workload) for i in range(20)])
    assert len(fired([apart.observe(summary(20, slow))])) == 2  # no relations known: two pages


# -- the watcher's Monitor: a statement that joins a firing incident updates its page ---------

UPDATE_SQL = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
SELECT_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
TPCB = (  # every statement of a TPC-B transaction: three of them keep their speed
    UPDATE_SQL,
    SELECT_SQL,
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, now())",
)
KEYS = {sql: StatementKey(1, 10, n) for n, sql in enumerate(TPCB)}


def record_tpcb(
    store: Store, server: int, i: int, slow: Sequence[str] = ()
) -> tuple[int, Interval]:
    """One 1 s interval of 50 TPC-B transactions; the ``slow`` statements scan (4 ms a call)."""
    deltas = tuple(
        StatementDelta(
            key, Counters(calls=50, exec_ms=50 * (4.0 if sql in slow else 0.02), rows=50)
        )
        for sql, key in KEYS.items()
    )
    interval = Interval(float(i), float(i + 1), deltas, None)
    fps = {key: fingerprint(sql) for sql, key in KEYS.items()}
    return store.record_interval(server, interval, fps, {fingerprint(s): s for s in KEYS}), interval


def test_monitor_updates_the_page_when_a_statement_of_the_table_joins(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        with (
            Store(tmp_path / "qw.db") as store,
            Dispatcher([WebhookChannel(f"{receiver.url}/hook")], store=store) as dispatcher,
        ):
            server = store.server("db").id
            monitor = Monitor(store, server, "db", Detector(), dispatcher)
            for i in range(20):
                monitor.on_interval(*record_tpcb(store, server, i))
            monitor.on_interval(*record_tpcb(store, server, 20, [UPDATE_SQL]))  # pages
            monitor.on_interval(*record_tpcb(store, server, 21, [UPDATE_SQL, SELECT_SQL]))
            monitor.on_interval(*record_tpcb(store, server, 22, [UPDATE_SQL, SELECT_SQL]))
            assert wait_until(lambda: len(receiver.bodies("/hook")) >= 2, 10)
            [stored] = store.incidents(server)
    finally:
        receiver.close()
    pages = receiver.bodies("/hook")
    assert [(p["status"], p["incident"]) for p in pages] == [("firing", stored.incident.id)] * 2
    named = [{c["query"] for c in p["diagnosis"]["culprits"]} for p in pages]
    assert named == [{UPDATE_SQL}, {UPDATE_SQL, SELECT_SQL}]  # the page, then its update
    assert stored.diagnosis == pages[1]["diagnosis"]
