"""Diagnosis over hand-made windows: attribution, verdicts, onsets, deploys, JSON and text."""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from querywatch.diagnose import (
    DiagnoseSettings,
    Workload,
    attribute,
    change_point,
    diagnose,
    diagnose_any,
    points_of,
    traffic_factor,
    workload,
)
from querywatch.durations import iso
from querywatch.errors import InputError
from querywatch.model import (
    ActivitySummary,
    Counters,
    CulpritKind,
    Deploy,
    Diagnosis,
    FingerprintActivity,
    IntervalSummary,
    Statement,
    Verdict,
)
from querywatch.report import diagnosis_to_json, diagnosis_to_text

ROOT = Path(__file__).resolve().parents[1]


def at(hhmmss: str) -> float:
    """POSIX seconds of a time on 2026-11-26 UTC."""
    h, m, s = (int(x) for x in hhmmss.split(":"))
    return datetime(2026, 11, 26, h, m, s, tzinfo=UTC).timestamp()


BASELINE = (at("09:30:00"), at("10:30:00"), 60.0)  # 60 intervals of 1 min
WINDOW = (at("10:30:00"), at("10:40:00"), 10.0)  # 60 intervals of 10 s
ONSET = at("10:31:20")

Loads = dict[str, tuple[float, float]]  # fingerprint -> (calls/s, mean ms)
BASE: Loads = {"lookup": (200.0, 1.0), "orders": (2.0, 40.0), "cart": (50.0, 2.0)}
LOCKS: Loads = {**BASE, "transfer": (1.0, 3.0), "debit": (5.0, 2.0)}
STATEMENTS = {
    "lookup": Statement("lookup", "SELECT * FROM users WHERE id = $1", (11,)),
    "orders": Statement("orders", "SELECT *\n  FROM orders\n WHERE lower(email) = $1", (-4383, 77)),
    "cart": Statement("cart", "SELECT * FROM cart WHERE user_id = $1", (13,)),
    "export": Statement("export", "SELECT * FROM orders ORDER BY created_at", (14,)),
    "transfer": Statement("transfer", "UPDATE accounts SET balance = balance - $1", (15,)),
    "debit": Statement("debit", "UPDATE accounts SET balance = balance + $1", (16,)),
}


def interval(
    start: float,
    seconds: float,
    loads: Loads,
    *,
    complete: bool = True,
    activity: ActivitySummary | None = None,
) -> IntervalSummary:
    counters = {
        fp: Counters(calls=c * seconds, exec_ms=c * seconds * m) for fp, (c, m) in loads.items()
    }
    return IntervalSummary(start, start + seconds, complete, counters, activity=activity)


def series(
    span: tuple[float, float, float],
    loads: Callable[[float], Loads],
    activity: Callable[[float], ActivitySummary | None] = lambda t: None,
) -> list[IntervalSummary]:
    start, end, step = span
    n = round((end - start) / step)
    times = [start + i * step for i in range(n)]
    return [interval(t, step, loads(t), activity=activity(t)) for t in times]


def steady(loads: Loads) -> Callable[[float], Loads]:
    return lambda t: loads


def switch(since: float, changes: Loads, loads: Loads = BASE) -> Callable[[float], Loads]:
    """``loads`` before ``since``, then with ``changes`` applied."""
    return lambda t: {**loads, **changes} if t >= since else loads


def scaled(factor: float) -> Callable[[float], Loads]:
    return steady({fp: (c * factor, m) for fp, (c, m) in BASE.items()})


def blocked(t: float) -> ActivitySummary | None:
    """From 10:32: one idle-in-transaction 'transfer' session blocks five 'debit' sessions."""
    if t < at("10:32:00"):
        return ActivitySummary(10, 3.0, 1.0, 0.0, 0.0, 3, 100)
    by_fp = (
        FingerprintActivity("debit", active=50, lock_waits=50),
        FingerprintActivity("transfer", blocking=10, blocked_sessions=50, idle_in_transaction=10),
    )
    return ActivitySummary(10, 7.0, 6.0, 1.0, 5.0, 7, 100, by_fp)


@dataclass(frozen=True)
class Case:
    name: str
    window: Callable[[float], Loads]
    verdict: Verdict
    culprit: str | None = None
    kind: CulpritKind | None = None
    onset: float | None = None
    deploys: tuple[Deploy, ...] = ()
    suspect: tuple[bool, ...] = ()
    reason: str = ""
    base: Loads | None = None
    activity: Callable[[float], ActivitySummary | None] = lambda t: None


CASES = [
    Case(
        "frequency x10 after a deploy",
        switch(ONSET, {"orders": (20.0, 40.0)}),
        Verdict.QUERY_REGRESSION,
        "orders",
        CulpritKind.FREQUENCY,
        ONSET,
        (Deploy("v2.3", at("10:30:30")),),
        (True,),
        "culprit 1 started 50 s after it: calls/s x8.8",
    ),
    Case(
        "frequency x10, deploy an hour before onset",
        switch(ONSET, {"orders": (20.0, 40.0)}),
        Verdict.QUERY_REGRESSION,
        "orders",
        CulpritKind.FREQUENCY,
        ONSET,
        (Deploy("v2.3", ONSET - 3600),),
        (False,),
        "no culprit started within 5 min after it",
    ),
    Case(
        "latency x5, deploy far away",
        switch(ONSET, {"orders": (2.0, 200.0)}),
        Verdict.QUERY_REGRESSION,
        "orders",
        CulpritKind.LATENCY,
        ONSET,
        (Deploy("v2.2", at("10:05:00")),),
        (False,),
        "no culprit started within 5 min after it",
    ),
    Case(
        "latency x5, no deploy",
        switch(ONSET, {"orders": (2.0, 200.0)}),
        Verdict.QUERY_REGRESSION,
        "orders",
        CulpritKind.LATENCY,
        ONSET,
    ),
    Case(
        "new query after a deploy",
        switch(at("10:32:00"), {"export": (5.0, 30.0)}),
        Verdict.QUERY_REGRESSION,
        "export",
        CulpritKind.NEW_QUERY,
        at("10:32:00"),
        (Deploy("v2.4", at("10:31:50")),),
        (True,),
        "culprit 1 started 10 s after it: new query",
    ),
    Case("uniform x3", scaled(3.0), Verdict.TRAFFIC_SURGE),
    Case(
        "uniform x3 with a latency regression on top",
        lambda t: {**scaled(3.0)(t), "orders": (6.0, 200.0)},
        Verdict.QUERY_REGRESSION,
        "orders",
        CulpritKind.LATENCY,
        at("10:30:00"),
    ),
    Case(
        "no change and a deploy",
        steady(BASE),
        Verdict.HEALTHY,
        deploys=(Deploy("v2.5", at("10:35:00")),),
        suspect=(False,),
        reason="workload unchanged",
    ),
    Case(
        "lock waits behind an idle transaction",
        switch(at("10:32:00"), {"debit": (5.0, 400.0)}, LOCKS),
        Verdict.LOCK_CONTENTION,
        "transfer",
        CulpritKind.BLOCKING,
        at("10:32:00"),
        (Deploy("v2.6", at("10:20:00")),),
        (False,),
        "no culprit started within 5 min after it",
        base=LOCKS,
        activity=blocked,
    ),
]


def run(case: Case, settings: DiagnoseSettings = DiagnoseSettings()) -> Diagnosis:
    baseline = series(BASELINE, steady(case.base or BASE))
    window = series(WINDOW, case.window, case.activity)
    return diagnose(baseline, window, STATEMENTS, case.deploys, settings)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_culprit_and_deploys(case: Case) -> None:
    d = run(case)
    assert d.verdict is case.verdict, d.summary
    assert not d.learning
    if case.culprit is None:
        assert all(c.excess_share < 0.5 for c in d.culprits)
    else:
        top = d.culprits[0]
        assert (top.fingerprint, top.kind, top.onset) == (case.culprit, case.kind, case.onset)
        assert top.query == STATEMENTS[case.culprit].query
        assert top.queryid == str(STATEMENTS[case.culprit].queryids[0])
    assert tuple(v.suspect for v in d.deploys) == case.suspect
    assert all(case.reason in v.reason for v in d.deploys)


def test_frequency_regression_numbers() -> None:
    d = run(CASES[0])
    top = d.culprits[0]
    # orders: 2 calls/s for the first 8 of 60 intervals, then 20: (8*2 + 52*20) / 60
    assert top.calls_per_s.baseline == pytest.approx(2.0)
    assert top.calls_per_s.window == pytest.approx(17.6)
    assert top.mean_ms.window == pytest.approx(40.0)
    assert d.traffic_factor == pytest.approx(1.0)  # the other statements kept their rates
    assert top.excess_share == pytest.approx(1.0)
    assert top.frequency_ms_per_s == pytest.approx(top.excess_ms_per_s)
    assert top.per_call_ms_per_s == pytest.approx(0.0)
    assert top.evidence[0] == "calls/s x8.8 (2.0 -> 17.6) since 10:31:20"
    assert "mean 40.0 ms -> 40.0 ms" in top.evidence
    assert d.summary.startswith("100% of the extra database time since 10:31:20 UTC comes from ")
    assert "`SELECT * FROM orders WHERE lower(email) = $1`" in d.summary
    assert "went up 8.8x right after deploy v2.3 at 10:30:30" in d.summary
    assert "traffic overall changed only 1.0x, so this is not a traffic surge" in d.summary


def test_latency_split_and_evidence() -> None:
    d = run(CASES[3])
    top = d.culprits[0]
    assert top.mean_ms.baseline == pytest.approx(40.0)
    assert top.mean_ms.window == pytest.approx((8 * 40 + 52 * 200) / 60)
    assert top.per_call_ms_per_s > 10 * abs(top.frequency_ms_per_s)
    assert top.evidence[0].startswith("mean x4.5 (40.0 ms -> 178.7 ms) since 10:31:20")
    assert d.deploys == ()
    assert "its mean time went up 4.5x" in d.summary


def test_traffic_surge_summary() -> None:
    d = run(CASES[5])
    assert d.traffic_factor == pytest.approx(3.0)
    assert d.culprits == ()
    assert d.summary.startswith("Traffic rose 3.0x across all statements; no single query")
    assert "a traffic surge, not a query regression" in d.summary


def test_lock_contention_culprits() -> None:
    d = run(CASES[8])
    blocker, waiter = d.culprits[:2]
    assert (waiter.fingerprint, waiter.kind) == ("debit", CulpritKind.LATENCY)
    assert waiter.onset == at("10:32:00")
    assert blocker.evidence[0] == "blocked 5.0 sessions on average in 80% of samples"
    assert blocker.evidence[1] == "4.0 of 5.0 active sessions wait on locks"
    assert waiter.evidence[0] == "4.0 sessions running it waited on a lock on average"
    assert d.summary.startswith(
        "Sessions are mostly waiting on locks since 10:32:00 UTC (4.0 of 5.0 active sessions"
    )
    assert "`UPDATE accounts SET balance = balance - $1`" in d.summary


@pytest.mark.parametrize(
    ("debit", "suspect", "reason"),
    [
        ((5.0, 400.0), True, "culprit 2 started 60 s after it: mean x160.2"),
        ((5.0, 2.0), False, "workload unchanged: culprit 1 started after it with steady load"),
    ],
    ids=["waiters slowed", "counters unchanged"],
)
def test_deploy_before_lock_contention(
    debit: tuple[float, float], suspect: bool, reason: str
) -> None:
    deploys = (Deploy("v2.6", at("10:31:00")),)
    case = Case(
        "locks after a deploy",
        switch(at("10:32:00"), {"debit": debit}, LOCKS),
        Verdict.LOCK_CONTENTION,
        deploys=deploys,
        base=LOCKS,
        activity=blocked,
    )
    d = run(case)
    assert d.verdict is Verdict.LOCK_CONTENTION
    assert [c.fingerprint for c in d.culprits] == ["transfer", "debit"]
    assert (d.deploys[0].suspect, d.deploys[0].reason) == (suspect, reason)


def jittered(loads: Loads, rng: random.Random) -> Callable[[float], Loads]:
    def draw(t: float) -> Loads:
        return {
            fp: (c * rng.uniform(0.7, 1.3), m * rng.uniform(0.7, 1.3))
            for fp, (c, m) in loads.items()
        }

    return draw


@pytest.mark.parametrize("seed", range(8))
def test_jitter_is_healthy(seed: int) -> None:
    rng = random.Random(seed)
    baseline = series(BASELINE, jittered(BASE, rng))
    window = series(WINDOW, jittered(BASE, rng))
    deploys = [Deploy("v3", at("10:33:00"))]
    d = diagnose(baseline, window, STATEMENTS, deploys)
    assert (d.verdict, d.culprits) == (Verdict.HEALTHY, ()), d.summary
    assert d.deploys[0].suspect is False
    assert d.summary.startswith("Nothing abnormal between 10:30:00 and 10:40:00 UTC")


@pytest.mark.parametrize("seed", range(4))
def test_jitter_does_not_hide_a_regression(seed: int) -> None:
    rng = random.Random(seed)
    changed = switch(ONSET, {"orders": (20.0, 40.0)})
    baseline = series(BASELINE, jittered(BASE, rng))
    window = series(WINDOW, lambda t: jittered(changed(t), rng)(t))
    d = diagnose(baseline, window, STATEMENTS, [Deploy("v2.3", at("10:30:30"))])
    assert d.verdict is Verdict.QUERY_REGRESSION
    assert (d.culprits[0].fingerprint, d.culprits[0].kind) == ("orders", CulpritKind.FREQUENCY)
    assert d.culprits[0].excess_share > 0.7
    assert d.deploys[0].suspect


def test_incomplete_intervals_are_ignored() -> None:
    huge: Loads = {**BASE, "orders": (2000.0, 400.0), "export": (900.0, 50.0)}
    baseline = series(BASELINE, steady(BASE))
    baseline.insert(10, interval(at("09:40:00"), 60.0, huge, complete=False))
    window = series(WINDOW, steady(BASE))
    window[5] = interval(window[5].start, 10.0, huge, complete=False)
    d = diagnose(baseline, window, STATEMENTS, [])
    assert (d.verdict, d.culprits) == (Verdict.HEALTHY, ())
    assert d.traffic_factor == pytest.approx(1.0)
    assert workload(window).by_fingerprint["orders"].calls_per_s == pytest.approx(2.0)
    assert workload(window).seconds == pytest.approx(590.0)


def test_rates_divide_by_covered_seconds() -> None:
    intervals = [
        interval(0.0, 10.0, {"q": (3.0, 5.0)}),
        interval(10.0, 50.0, {"q": (100.0, 1.0)}, complete=False),
        interval(60.0, 30.0, {"q": (1.0, 9.0)}),
    ]
    w = workload(intervals)
    assert w.seconds == 40.0
    assert w.by_fingerprint["q"].calls_per_s == pytest.approx(60 / 40)
    assert w.by_fingerprint["q"].mean_ms == pytest.approx((150 + 270) / 60)


def test_attribution_splits_excess() -> None:
    from querywatch.diagnose import Load

    base = Workload(60.0, {"a": Load(100.0, 1.0), "b": Load(2.0, 40.0)})
    win = Workload(60.0, {"a": Load(120.0, 1.0), "b": Load(28.0, 41.0), "c": Load(1.0, 10.0)})
    result = attribute(base, win)
    k = 1.2  # the call-weighted median of the ratios: a (1.2, weight 100) outweighs b (14, weight 2)
    assert traffic_factor(base, win) == pytest.approx(k)
    b = result["b"]
    assert b.expected_ms_per_s == pytest.approx(k * 80.0)
    joint = (28.0 - k * 2.0) * 1.0  # extra calls x extra ms per call, split evenly
    assert b.frequency_ms_per_s == pytest.approx((28.0 - k * 2.0) * 40.0 + joint / 2)
    assert b.per_call_ms_per_s == pytest.approx(28.0 * 1.0 - joint / 2)
    assert b.excess_ms_per_s == pytest.approx(b.frequency_ms_per_s + b.per_call_ms_per_s)
    assert (b.kind, result["c"].kind) == (CulpritKind.FREQUENCY, CulpritKind.NEW_QUERY)
    assert result["c"].excess_ms_per_s == pytest.approx(10.0)
    assert result["a"].excess_ms_per_s == pytest.approx(120.0 - k * 100.0)


def test_calls_x8_then_twice_slower_on_the_cpus_they_saturate_is_frequency() -> None:
    """The joint rise (extra calls x extra ms) is split evenly: the seed's N+1 query, called 8x
    more and then 2x slower per call on the CPUs it saturated, is a frequency culprit (all the
    joint part on the per-call side made it `latency`: 70 vs 80 ms/s here)."""
    from querywatch.diagnose import Load

    base = Workload(60.0, {"steady": Load(100.0, 1.0), "n1": Load(1.0, 10.0)})
    win = Workload(60.0, {"steady": Load(100.0, 1.0), "n1": Load(8.0, 20.0)})
    n1 = attribute(base, win)["n1"]
    assert (n1.frequency_ms_per_s, n1.per_call_ms_per_s) == pytest.approx((105.0, 45.0))
    assert n1.excess_ms_per_s == pytest.approx(160.0 - 10.0)
    assert n1.kind is CulpritKind.FREQUENCY
    slower = attribute(base, Workload(60.0, {"steady": Load(100.0, 1.0), "n1": Load(1.0, 50.0)}))
    assert slower["n1"].kind is CulpritKind.LATENCY  # the same calls, 5x slower: latency


@pytest.mark.parametrize(
    "baseline",
    [[], [interval(at("10:00:00"), 60.0, BASE, complete=False)]],
    ids=["empty", "only incomplete"],
)
def test_no_baseline_means_learning(baseline: list[IntervalSummary]) -> None:
    window = series(WINDOW, switch(ONSET, {"orders": (20.0, 40.0)}))
    d = diagnose(baseline, window, STATEMENTS, [Deploy("v1", at("10:31:00"))])
    assert (d.verdict, d.learning, d.culprits) == (Verdict.HEALTHY, True, ())
    assert d.traffic_factor == 1.0
    assert d.summary.startswith("Still learning")
    assert (d.deploys[0].suspect, d.deploys[0].reason) == (False, "still learning: no baseline")


def test_empty_window_is_healthy() -> None:
    d = diagnose(series(BASELINE, steady(BASE)), [], STATEMENTS, [])
    assert (d.verdict, d.culprits, d.learning) == (Verdict.HEALTHY, (), False)
    assert (d.window_start, d.window_end) == (BASELINE[1], BASELINE[1])
    assert d.summary.startswith("No complete interval")


def test_baseline_without_calls_makes_everything_new() -> None:
    baseline = series(BASELINE, steady({}))
    window = series(WINDOW, steady({"orders": (2.0, 40.0)}))
    d = diagnose(baseline, window, STATEMENTS, [])
    assert d.verdict is Verdict.QUERY_REGRESSION
    assert d.culprits[0].kind is CulpritKind.NEW_QUERY
    assert d.traffic_factor == 1.0


def test_only_deploys_in_the_span_are_listed_and_the_nearest_is_suspect() -> None:
    deploys = (
        Deploy("old", at("09:00:00")),
        Deploy("v2.3a", at("10:29:00")),
        Deploy("v2.3b", at("10:30:30")),
        Deploy("later", at("10:33:00")),
        Deploy("future", at("11:00:00")),
    )
    d = run(
        Case(
            "x", switch(ONSET, {"orders": (20.0, 40.0)}), Verdict.QUERY_REGRESSION, deploys=deploys
        )
    )
    assert [(v.version, v.suspect) for v in d.deploys] == [
        ("v2.3a", False),
        ("v2.3b", True),
        ("later", False),
    ]
    assert d.deploys[0].reason == "deploy v2.3b came later, closer to culprit 1's onset"
    assert d.deploys[2].reason == "no culprit started within 5 min after it"


def test_settings_change_thresholds() -> None:
    case = CASES[0]
    assert run(case, DiagnoseSettings(min_excess_ms_per_s=10_000.0)).verdict is Verdict.HEALTHY
    late = run(case, DiagnoseSettings(suspect_window_s=30.0))
    assert not late.deploys[0].suspect
    assert late.deploys[0].reason == "no culprit started within 30 s after it"


def test_max_culprits() -> None:
    changes = {fp: (c * 10, m) for fp, (c, m) in BASE.items() if fp != "lookup"}
    changes["export"] = (5.0, 30.0)
    d = run(Case("x", switch(ONSET, changes), Verdict.QUERY_REGRESSION))
    assert [c.fingerprint for c in d.culprits] == ["cart", "orders", "export"]
    excess = [c.excess_ms_per_s for c in d.culprits]
    assert excess == sorted(excess, reverse=True)
    assert sum(c.excess_share for c in d.culprits) <= 1.0 + 1e-9
    capped = run(
        Case("x", switch(ONSET, changes), Verdict.QUERY_REGRESSION),
        DiagnoseSettings(max_culprits=2),
    )
    assert [c.fingerprint for c in capped.culprits] == ["cart", "orders"]


CONTRACT: dict[str, object] = {
    "window": {"start": None, "end": None},
    "baseline": {"start": None, "end": None, "kind": None},
    "verdict": None,
    "summary": None,
    "traffic_factor": None,
    "culprits": [
        {
            "queryid": None,
            "fingerprint": None,
            "query": None,
            "kind": None,
            "excess_share": None,
            "calls_per_s": {"baseline": None, "window": None},
            "mean_ms": {"baseline": None, "window": None},
            "onset": None,
            "evidence": None,
        }
    ],
    "deploys": [{"version": None, "at": None, "suspect": None}],
}


def same_keys(value: object, shape: object, path: str = "") -> None:
    if isinstance(shape, dict):
        assert isinstance(value, dict), path
        assert set(value) == set(shape), path
        for key, sub in shape.items():
            same_keys(value[key], sub, f"{path}.{key}")
    elif isinstance(shape, list):
        assert isinstance(value, list) and value, path
        for item in value:
            same_keys(item, shape[0], f"{path}[]")


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.mark.parametrize("case", [CASES[0], CASES[8]], ids=["regression", "locks"])
def test_json_has_exactly_the_contract_keys(case: Case) -> None:
    out = diagnosis_to_json(run(case))
    same_keys(out, CONTRACT)
    assert json.loads(json.dumps(out)) == out
    assert out["window"] == {"start": "2026-11-26T10:30:00Z", "end": "2026-11-26T10:40:00Z"}
    assert out["baseline"] == {
        "start": "2026-11-26T09:30:00Z",
        "end": "2026-11-26T10:30:00Z",
        "kind": "history",
    }
    culprit = out["culprits"][0]  # type: ignore[index]
    assert ISO.match(culprit["onset"])
    assert isinstance(culprit["queryid"], str) and isinstance(culprit["evidence"], list)
    assert isinstance(out["traffic_factor"], float)
    assert out["traffic_factor"] == round(out["traffic_factor"], 2)


def test_json_values_of_a_regression() -> None:
    out = diagnosis_to_json(run(CASES[0]))
    assert (out["verdict"], out["traffic_factor"]) == ("query_regression", 1.0)
    culprit = out["culprits"][0]  # type: ignore[index]
    assert culprit["queryid"] == "-4383"
    assert culprit["kind"] == "frequency"
    assert culprit["onset"] == "2026-11-26T10:31:20Z"
    assert culprit["calls_per_s"] == {"baseline": 2.0, "window": 17.6}
    assert out["deploys"] == [{"version": "v2.3", "at": "2026-11-26T10:30:30Z", "suspect": True}]


def test_json_of_a_healthy_learning_diagnosis() -> None:
    d = diagnose([], series(WINDOW, steady(BASE)), STATEMENTS, [])
    out = diagnosis_to_json(d)
    assert (out["culprits"], out["deploys"], out["verdict"]) == ([], [], "healthy")
    assert set(out) == set(CONTRACT)
    assert iso(None) is None
    assert iso(at("10:31:00")) == "2026-11-26T10:31:00Z"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_text_is_short_and_names_verdict_and_culprit(case: Case) -> None:
    d = run(case)
    text = diagnosis_to_text(d)
    lines = text.splitlines()
    assert len(lines) <= 12
    assert lines[0].startswith(f"verdict: {case.verdict.value}")
    assert d.summary in lines
    if case.culprit:
        assert " ".join(STATEMENTS[case.culprit].query.split()) in text
        assert f"1. {case.kind.value}" in text  # type: ignore[union-attr]
    for v in d.deploys:
        assert f"{v.version} at" in text


def test_text_stays_short_with_many_culprits_and_deploys() -> None:
    changes = {fp: (c * 10, m) for fp, (c, m) in BASE.items()}
    changes.update({f"new{i}": (5.0, 30.0 + i) for i in range(6)})
    deploys = tuple(Deploy(f"v{i}", at("10:31:00") + i) for i in range(6))
    d = run(Case("x", switch(ONSET, changes), Verdict.QUERY_REGRESSION, deploys=deploys))
    lines = diagnosis_to_text(d).splitlines()
    assert len(d.culprits) == 5
    assert len(lines) <= 12
    assert "... and 2 more culprits" in lines[-2]
    assert "v5 at 10:31:05 SUSPECT" in lines[-1] and "(+3 more)" in lines[-1]


PURE = ("querywatch/diagnose.py", "querywatch/contention.py", "querywatch/report.py")
# the pure modules these may import: records, time formatting, text helpers, the error tree,
# and the pure contention rule diagnose relies on
PURE_IMPORTS = {
    "querywatch.model",
    "querywatch.durations",
    "querywatch.text",
    "querywatch.errors",
    "querywatch.contention",
}


@pytest.mark.parametrize("path", PURE)
def test_pure_modules_import_only_stdlib_and_model(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    outside = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= PURE_IMPORTS, outside


def test_pure_modules_load_no_database_or_web_library() -> None:
    code = (
        "import sys, querywatch.diagnose, querywatch.contention, querywatch.report;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'psycopg', 'sqlite3', '_sqlite3', 'fastapi', 'starlette', 'uvicorn', 'typer', 'rich'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("base", "win", "k"),
    [
        ({"a": (100, 1), "b": (10, 1)}, {"a": (300, 1), "b": (30, 1)}, 3.0),  # uniform x3
        ({"a": (100, 1), "b": (10, 1)}, {"a": (100, 1), "b": (900, 1)}, 1.0),  # one N+1 x90
        ({"a": (10, 1)}, {"a": (20, 1), "new": (50, 1)}, 2.0),  # new statements do not count
        ({"a": (10, 1), "gone": (5, 1)}, {"a": (10, 1)}, 1.0),  # a statement that stopped
        ({"a": (10, 1), "gone": (50, 1)}, {"a": (10, 1)}, 0.0),  # most of the traffic stopped
        ({}, {"a": (5, 1)}, 1.0),  # no baseline: no change known
    ],
)
def test_traffic_factor_is_the_typical_statement(
    base: dict[str, tuple[float, float]], win: dict[str, tuple[float, float]], k: float
) -> None:
    from querywatch.diagnose import Load

    b = Workload(60.0, {fp: Load(*v) for fp, v in base.items()})
    w = Workload(60.0, {fp: Load(*v) for fp, v in win.items()})
    assert traffic_factor(b, w) == pytest.approx(k)


def test_empty_window_reports_the_requested_window() -> None:
    d = diagnose([], [], {}, [], requested=(1_800_000_000.0, 1_800_000_600.0))
    out = diagnosis_to_json(d)
    assert out["window"] == {"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T08:10:00Z"}
    assert out["verdict"] == "healthy"


def long_run_interval(days: float, loads: Loads = BASE) -> IntervalSummary:
    """pg_stat_statements' cumulative counters since ``days`` before the window, as one interval."""
    return interval(WINDOW[0] - days * 86400, days * 86400, loads)


def test_a_long_run_baseline_is_one_long_interval() -> None:
    window = series(WINDOW, switch(ONSET, {"orders": (20.0, 40.0)}))
    deploys = [Deploy("old", at("10:00:00") - 86400), Deploy("v2.3", at("10:30:30"))]
    note = "the long-run average since 2026-11-19 10:30 UTC"
    d = diagnose(
        [long_run_interval(7.0)],
        window,
        STATEMENTS,
        deploys,
        baseline_kind="long_run",
        baseline_note=note,
    )
    assert (d.verdict, d.learning, d.baseline_kind) == (Verdict.QUERY_REGRESSION, False, "long_run")
    top = d.culprits[0]
    assert (top.fingerprint, top.onset) == ("orders", at("10:31:20"))
    assert top.calls_per_s.baseline == pytest.approx(2.0)
    assert [(v.version, v.suspect) for v in d.deploys] == [("v2.3", True)]  # "old" not listed
    out = diagnosis_to_json(d)
    assert out["baseline"] == {
        "start": "2026-11-19T10:30:00Z",
        "end": "2026-11-26T10:30:00Z",
        "kind": "long_run",
    }
    assert f"compared with {note} (long_run)" in diagnosis_to_text(d).splitlines()
    assert d.summary.endswith(f" Compared with {note}.")


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("history", "the history before the window, 09:30:00-10:30:00 UTC"),
        ("pre_onset", "this window before its onset, 09:30:00-10:30:00 UTC"),
        ("long_run", "the long-run average since 2026-11-26 09:30 UTC"),
    ],
)
def test_every_diagnosis_says_what_it_compared_with(kind: str, words: str) -> None:
    baseline = series(BASELINE, steady(BASE))
    d = diagnose(baseline, series(WINDOW, steady(BASE)), STATEMENTS, [], baseline_kind=kind)
    assert (d.baseline_kind, d.baseline_note) == (kind, words)
    assert diagnosis_to_text(d).splitlines()[2] == f"compared with {words} ({kind})"
    assert diagnosis_to_json(d)["baseline"]["kind"] == kind  # type: ignore[index]


def test_learning_compares_with_nothing() -> None:
    d = diagnose([], series(WINDOW, steady(BASE)), STATEMENTS, [])
    assert (d.learning, d.baseline_note) == (True, "")
    assert "compared with" not in diagnosis_to_text(d)
    with pytest.raises(InputError, match="baseline_kind"):
        diagnose([], [], STATEMENTS, [], baseline_kind="yesterday")


# -- any window: the onset found inside it ---------------------------------------------------------
WHOLE = (at("10:00:00"), at("10:30:00"), 10.0)  # the store's whole history: 180 intervals of 10 s
LATE = at("10:21:20")  # in its last third


def whole(loads: Callable[[float], Loads], jitter: int | None = None) -> list[IntervalSummary]:
    """The whole history, optionally jittered +-30% (seeded) around ``loads``."""
    rng = random.Random(jitter)
    if jitter is None:
        return series(WHOLE, loads)

    def draw(t: float) -> Loads:
        return jittered(loads(t), rng)(t)

    return series(WHOLE, draw)


ANY_CASES = [
    ("frequency x10", {"orders": (20.0, 40.0)}, "orders", CulpritKind.FREQUENCY),
    ("latency x5", {"orders": (2.0, 200.0)}, "orders", CulpritKind.LATENCY),
    ("new query", {"export": (5.0, 30.0)}, "export", CulpritKind.NEW_QUERY),
    ("cart latency x4", {"cart": (50.0, 8.0)}, "cart", CulpritKind.LATENCY),
]


@pytest.mark.parametrize("jitter", [None, 1, 2, 3])
@pytest.mark.parametrize(("name", "changes", "culprit", "kind"), ANY_CASES)
def test_a_window_over_the_whole_history_finds_the_onset_inside_it(
    name: str, changes: Loads, culprit: str, kind: CulpritKind, jitter: int | None
) -> None:
    window = whole(switch(LATE, changes), jitter)
    deploy = Deploy("v3", LATE - 20)
    d = diagnose_any(window, STATEMENTS, [deploy], requested=(WHOLE[0], WHOLE[1]))
    assert (d.verdict, d.learning, d.baseline_kind) == (
        Verdict.QUERY_REGRESSION,
        False,
        "pre_onset",
    ), d.summary
    top = d.culprits[0]
    assert (top.fingerprint, top.kind) == (culprit, kind)
    assert top.onset is not None and abs(top.onset - LATE) <= WHOLE[2]
    assert [(v.version, v.suspect) for v in d.deploys] == [("v3", True)]
    assert (d.window_start, d.window_end) == (WHOLE[0], WHOLE[1])
    assert d.baseline_start == WHOLE[0] and d.baseline_end <= LATE
    assert "Compared with this window before its onset, 10:00:00-" in d.summary
    assert diagnosis_to_json(d)["baseline"]["kind"] == "pre_onset"  # type: ignore[index]


def test_without_a_deploy_marker_none_is_suspect() -> None:
    d = diagnose_any(whole(switch(LATE, {"orders": (20.0, 40.0)})), STATEMENTS, [])
    assert (d.verdict, d.culprits[0].fingerprint, d.deploys) == (
        Verdict.QUERY_REGRESSION,
        "orders",
        (),
    )


def test_a_uniform_surge_inside_the_window_is_a_surge() -> None:
    surge = {fp: (c * 3, m) for fp, (c, m) in BASE.items()}
    d = diagnose_any(whole(switch(LATE, surge), 4), STATEMENTS, [])
    assert (d.verdict, d.baseline_kind) == (Verdict.TRAFFIC_SURGE, "pre_onset")
    assert d.traffic_factor == pytest.approx(3.0, rel=0.15)


@pytest.mark.parametrize("jitter", range(6))
def test_a_steady_window_has_no_change_point(jitter: int) -> None:
    window = whole(steady(BASE), jitter)
    assert change_point(points_of(window)) is None
    d = diagnose_any(window, STATEMENTS, [])
    assert (d.verdict, d.learning) == (Verdict.HEALTHY, True)  # no baseline of any kind
    assert d.summary.startswith("Still learning")


def test_change_point_is_a_rise_of_the_fingerprint_that_changed_most() -> None:
    window = whole(switch(LATE, {"orders": (20.0, 40.0), "cart": (60.0, 2.0)}), 5)
    found = change_point(points_of(window))
    assert found is not None
    assert (found.fingerprint, found.at) == ("orders", LATE)
    assert found.before_ms_per_s == pytest.approx(80.0, rel=0.2)
    assert found.after_ms_per_s == pytest.approx(800.0, rel=0.2)
    falls = whole(switch(LATE, {"orders": (0.2, 40.0)}))
    assert change_point(points_of(falls)) is None  # only rises are onsets


def test_an_incident_that_ended_inside_the_window_is_still_found() -> None:
    def bump(t: float) -> Loads:
        return {**BASE, "orders": (20.0, 40.0)} if LATE <= t < LATE + 120 else BASE

    d = diagnose_any(whole(bump, 6), STATEMENTS, [Deploy("v3", LATE - 20)])
    assert (d.verdict, d.culprits[0].fingerprint) == (Verdict.QUERY_REGRESSION, "orders")
    assert d.culprits[0].onset == LATE
    assert d.deploys[0].suspect


def test_the_onset_of_an_incident_recorded_in_the_window_splits_it() -> None:
    # a latency rise of 30% is no change point, but the detector saw an incident start there
    window = whole(switch(LATE, {"orders": (2.0, 52.0)}))
    assert change_point(points_of(window)) is None
    strict = DiagnoseSettings(min_excess_ratio=0.2, min_excess_ms_per_s=1.0)
    d = diagnose_any(window, STATEMENTS, [], strict, onset=LATE)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "pre_onset")
    assert (d.culprits[0].fingerprint, d.culprits[0].onset) == ("orders", LATE)
    # an onset with fewer than 3 intervals before it is not used: the change point is
    assert diagnose_any(window, STATEMENTS, [], onset=WHOLE[0] + 10).learning  # none found
    found = diagnose_any(window, STATEMENTS, [], strict, onset=WHOLE[0] + 10)
    assert (found.baseline_kind, found.culprits[0].onset) == ("pre_onset", LATE)


def test_enough_clean_history_is_the_baseline() -> None:
    window = whole(switch(LATE, {"orders": (20.0, 40.0)}))
    history = series((at("09:30:00"), at("10:00:00"), 10.0), steady(BASE))
    d = diagnose_any(window, STATEMENTS, [], history=history)
    assert (d.verdict, d.baseline_kind, d.baseline_start) == (
        Verdict.QUERY_REGRESSION,
        "history",
        at("09:30:00"),
    )
    assert d.culprits[0].onset == LATE
    short = history[-2:]  # 20 s of history, 20 min of window before the onset: pre_onset
    d = diagnose_any(window, STATEMENTS, [], history=short)
    assert (d.baseline_kind, d.culprits[0].onset) == ("pre_onset", LATE)


def test_the_long_run_when_nothing_precedes_the_change() -> None:
    window = series(WINDOW, steady({**BASE, "orders": (20.0, 40.0)}))  # already going at start
    note = "the long-run average since 2026-11-19 10:30 UTC"
    d = diagnose_any(window, STATEMENTS, [], long_run=long_run_interval(7.0), long_run_note=note)
    assert (d.verdict, d.baseline_kind, d.baseline_note) == (
        Verdict.QUERY_REGRESSION,
        "long_run",
        note,
    )
    assert d.culprits[0].fingerprint == "orders"
    assert diagnose_any(window, STATEMENTS, []).learning  # no baseline of any kind


@pytest.mark.parametrize(
    ("history", "change", "long_run", "kind"),
    [
        (12, None, True, "history"),  # enough history beats the long run
        (11, None, True, "long_run"),  # a short history does not
        (11, None, False, "history"),  # ... unless nothing else exists
        (4, LATE, True, "pre_onset"),  # enough of the window before its onset
        (130, LATE, True, "history"),
        (0, at("10:00:40"), True, "long_run"),  # 3 intervals before the onset: not enough
        (0, at("10:00:40"), False, "pre_onset"),
        (2, at("10:00:40"), False, "pre_onset"),  # the longer of the two short ones
        (4, at("10:00:40"), False, "history"),
        (0, None, False, "learning"),
    ],
)
def test_which_baseline(history: int, change: float | None, long_run: bool, kind: str) -> None:
    loads = switch(change, {"orders": (20.0, 40.0)}) if change else steady(BASE)
    before = series((WHOLE[0] - history * 10, WHOLE[0], 10.0), steady(BASE))
    lr = long_run_interval(7.0) if long_run else None
    d = diagnose_any(whole(loads), STATEMENTS, [], history=before, long_run=lr)
    assert (d.baseline_kind if not d.learning else "learning") == kind
    if change is not None and kind != "learning":
        assert (d.verdict, d.culprits[0].onset) == (Verdict.QUERY_REGRESSION, change)


def test_a_change_that_keeps_growing_starts_where_it_began() -> None:
    # after LATE the statement's mean keeps growing (contention builds up): the best two-segment
    # split alone would fall a few intervals late
    def growing(t: float) -> Loads:
        if t < LATE:
            return BASE
        return {**BASE, "hot": (40.0, 3.0 + 0.5 * (t - LATE) / 10)}

    statements = {**STATEMENTS, "hot": Statement("hot", "SELECT count(*) FROM t WHERE c = $1")}
    found = change_point(points_of(whole(growing)))
    assert found is not None and (found.fingerprint, found.at) == ("hot", LATE)
    d = diagnose_any(whole(growing), statements, [])
    assert (d.culprits[0].fingerprint, d.culprits[0].onset) == ("hot", LATE)


# -- wording ----------------------------------------------------------------------------------------
def test_throughput_that_fell_behind_the_culprit_is_said_so() -> None:
    # every request queues behind "orders": its mean x16 at half its calls, the rest at half
    queued = {fp: (c * 0.5, m) for fp, (c, m) in BASE.items()}
    queued["orders"] = (1.0, 640.0)
    d = run(Case("queued", switch(ONSET, queued), Verdict.QUERY_REGRESSION))
    assert d.verdict is Verdict.QUERY_REGRESSION
    assert d.culprits[0].fingerprint == "orders"
    factor = d.culprits[0].calls_per_s.window * d.culprits[0].mean_ms.window / 80.0
    assert d.traffic_factor == pytest.approx(0.5 + 0.5 * 8 / 60, rel=0.01)  # 8 of 60 intervals
    assert f"throughput fell to {d.traffic_factor:.1f}x while this statement's time rose " in (
        d.summary
    )
    assert f"rose {factor:.1f}x." in d.summary
    assert "not a traffic surge" not in d.summary and "0.0x" not in d.summary


def test_throughput_that_stopped_is_not_zero_point_zero() -> None:
    stopped = {fp: (c * 0.02, m) for fp, (c, m) in BASE.items()}
    stopped["export"] = (1.0, 2000.0)  # a new statement holds everything
    d = run(Case("stopped", switch(at("10:30:00"), stopped), Verdict.QUERY_REGRESSION))
    assert d.culprits[0].fingerprint == "export"
    assert "throughput fell to 0.02x while this new statement took 2000.0 ms/s" in d.summary
    assert "traffic overall x0.02" in d.culprits[0].evidence
    assert "traffic x0.02" in diagnosis_to_text(d).splitlines()[0]


def test_means_under_a_tenth_of_a_millisecond_keep_their_digits() -> None:
    fast = {**BASE, "lookup": (200.0, 0.004)}
    d = diagnose(
        series(BASELINE, steady(fast)),
        series(WINDOW, switch(ONSET, {"lookup": (200.0, 0.05)}, fast)),
        STATEMENTS,
        [],
    )
    top = d.culprits[0]
    assert (top.fingerprint, top.kind) == ("lookup", CulpritKind.LATENCY)
    # the window's mean: (8 x 0.004 + 52 x 0.05) / 60 = 0.0439 ms, x11.0
    assert top.evidence[0].startswith("mean x11.0 (0.004 ms -> 0.044 ms) since 10:31:20")
    assert "(0.004 -> 0.044 ms)" in d.summary
    text = diagnosis_to_text(d)
    assert "mean 0.004 -> 0.044 ms" in text and "0.0 ms" not in text
