"""Detection rules and baselines over hand-made intervals (no database)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from querywatch.detect import (
    RULES,
    Baseline,
    DetectSettings,
    Robust,
    build_baseline,
    detect,
    make_context,
    settings_from_mapping,
)
from querywatch.detect import rules as r
from querywatch.errors import ConfigError
from querywatch.model import (
    ActivitySummary,
    Anomaly,
    Counters,
    FingerprintActivity,
    IntervalSummary,
)

SECONDS = 10.0
# fingerprint -> (calls/s, mean ms, rows/call, temp blocks written/s)
STEADY: dict[str, tuple[float, float, float, float]] = {
    "orders": (50.0, 2.0, 1.0, 0.0),  # 100 ms/s
    "users": (20.0, 1.0, 1.0, 0.0),  # 20 ms/s
    "items": (30.0, 3.0, 10.0, 0.0),  # 90 ms/s
    "report": (0.5, 40.0, 100.0, 20.0),  # 20 ms/s
    "tiny": (1.0, 0.01, 1.0, 0.0),  # 0.01 ms/s
}
Workload = Mapping[str, tuple[float, float, float, float]]


def interval(
    start: float,
    workload: Workload = STEADY,
    activity: ActivitySummary | None = None,
    seconds: float = SECONDS,
) -> IntervalSummary:
    by_fp = {
        fp: Counters(
            calls=cps * seconds,
            exec_ms=cps * seconds * mean,
            rows=cps * seconds * rows,
            temp_blks_written=temp * seconds,
        )
        for fp, (cps, mean, rows, temp) in workload.items()
    }
    return IntervalSummary(start, start + seconds, True, by_fp, activity=activity)


def history(n: int = 20, workload: Workload = STEADY) -> list[IntervalSummary]:
    # a little deterministic wiggle so MADs are not zero
    out = []
    for i in range(n):
        f = 1.0 + 0.05 * ((i % 5) - 2)
        out.append(
            interval(i * SECONDS, {fp: (c * f, m, rw, t) for fp, (c, m, rw, t) in workload.items()})
        )
    return out


def scaled(
    fp: str, calls: float = 1.0, mean: float = 1.0, rows: float = 1.0, temp: float | None = None
) -> dict[str, tuple[float, float, float, float]]:
    w = dict(STEADY)
    c, m, rw, t = w[fp]
    w[fp] = (c * calls, m * mean, rw * rows, t if temp is None else temp)
    return w


def everyone(calls: float, mean: float = 1.0) -> dict[str, tuple[float, float, float, float]]:
    return {fp: (c * calls, m * mean, rw, t) for fp, (c, m, rw, t) in STEADY.items()}


def activity(
    waiting: float = 0.0,
    sessions_max: int = 10,
    max_connections: int = 100,
    blockers: tuple[FingerprintActivity, ...] = (),
) -> ActivitySummary:
    return ActivitySummary(
        samples=10,
        sessions_mean=sessions_max * 0.8,
        active_mean=2.0 + waiting,
        idle_in_transaction_mean=1.0 if blockers else 0.0,
        lock_waiting_mean=waiting,
        sessions_max=sessions_max,
        max_connections=max_connections,
        by_fingerprint=blockers,
    )


IDLE_BLOCKER = FingerprintActivity(
    "users", active=0, blocking=10, blocked_sessions=40, idle_in_transaction=10
)
WAITER = FingerprintActivity("orders", active=40, lock_waits=40)
AT = 1000.0
BASE = build_baseline(history(), DetectSettings())


def fire(
    rule: r.Rule, iv: IntervalSummary, settings: DetectSettings = DetectSettings()
) -> list[Anomaly]:
    baseline = build_baseline(history(), settings)
    return rule(make_context(iv, baseline, settings))


CASES = [
    # (id, rule, interval, settings, expected subjects)
    ("db-time x10", r.db_time_surge, interval(AT, scaled("orders", calls=10)), None, ["orders"]),
    ("db-time x1.3", r.db_time_surge, interval(AT, scaled("orders", calls=1.3)), None, []),
    ("calls x10", r.call_rate_spike, interval(AT, scaled("orders", calls=10)), None, ["orders"]),
    ("calls x1.5", r.call_rate_spike, interval(AT, scaled("orders", calls=1.5)), None, []),
    ("calls tiny x100", r.call_rate_spike, interval(AT, scaled("tiny", calls=100)), None, []),
    ("mean x10", r.latency_regression, interval(AT, scaled("items", mean=10)), None, ["items"]),
    ("mean x1.5", r.latency_regression, interval(AT, scaled("items", mean=1.5)), None, []),
    ("mean tiny x100", r.latency_regression, interval(AT, scaled("tiny", mean=100)), None, []),
    (
        "new expensive",
        r.new_expensive_fingerprint,
        interval(AT, {**STEADY, "scan": (5.0, 100.0, 1.0, 0.0)}),
        None,
        ["scan"],
    ),
    (
        "new cheap",
        r.new_expensive_fingerprint,
        interval(AT, {**STEADY, "ping": (5.0, 0.1, 1.0, 0.0)}),
        None,
        [],
    ),
    ("rows x50", r.rows_per_call_jump, interval(AT, scaled("items", rows=50)), None, ["items"]),
    ("rows x1.3", r.rows_per_call_jump, interval(AT, scaled("items", rows=1.3)), None, []),
    ("spill", r.temp_spill_growth, interval(AT, scaled("items", temp=1000)), None, ["items"]),
    ("small spill", r.temp_spill_growth, interval(AT, scaled("items", temp=50)), None, []),
    (
        "lock waits",
        r.lock_waits,
        interval(AT, activity=activity(4.0, blockers=(IDLE_BLOCKER, WAITER))),
        None,
        ["users"],
    ),
    ("no lock waits", r.lock_waits, interval(AT, activity=activity(0.2)), None, []),
    (
        "unknown blocker",
        r.lock_waits,
        interval(AT, activity=activity(3.0, blockers=(WAITER,))),
        None,
        ["server:locks"],
    ),
    (
        "connections full",
        r.connection_saturation,
        interval(AT, activity=activity(sessions_max=95)),
        None,
        ["server:connections"],
    ),
    ("connections ok", r.connection_saturation, interval(AT, activity=activity()), None, []),
    (
        "cpu 1 core",
        r.cpu_saturation,
        interval(AT, scaled("orders", mean=10)),
        DetectSettings(cpu_cores=1),
        ["server:cpu"],
    ),
    (
        "cpu 8 cores",
        r.cpu_saturation,
        interval(AT, scaled("orders", mean=5)),
        DetectSettings(cpu_cores=8),
        [],
    ),
    ("cpu unknown", r.cpu_saturation, interval(AT, scaled("orders", mean=50)), None, []),
    ("traffic x3", r.traffic_surge, interval(AT, everyone(3)), None, ["server:traffic"]),
    ("traffic x1.3", r.traffic_surge, interval(AT, everyone(1.3)), None, []),
    ("traffic one query x10", r.traffic_surge, interval(AT, scaled("orders", calls=10)), None, []),
]


@pytest.mark.parametrize(
    ("rule", "iv", "settings", "subjects"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule(
    rule: r.Rule, iv: IntervalSummary, settings: DetectSettings | None, subjects: list[str]
) -> None:
    found = fire(rule, iv, settings or DetectSettings())
    assert [a.subject for a in found] == subjects
    for a in found:
        assert a.rule == rule.__name__
        assert a.severity >= 1.0
        assert a.at == iv.end
        assert a.evidence


def test_every_rule_is_in_rules_and_has_a_case() -> None:
    assert {rule.__name__ for rule in RULES} == {c[1].__name__ for c in CASES}
    assert len(RULES) == 10


def test_severity_far_for_x10_and_marginal_for_x3() -> None:
    (far,) = fire(r.call_rate_spike, interval(AT, scaled("orders", calls=10)))
    (marginal,) = fire(r.call_rate_spike, interval(AT, scaled("orders", calls=3)))
    assert far.severity >= DetectSettings().far_factor
    assert 1.0 <= marginal.severity < DetectSettings().far_factor
    assert far.observed == pytest.approx(500.0)
    assert far.expected == pytest.approx(50.0)


def test_uniform_growth_makes_only_a_traffic_anomaly() -> None:
    found = detect(interval(AT, everyone(3)), BASE, DetectSettings())
    assert [(a.rule, a.subject) for a in found] == [("traffic_surge", "server:traffic")]
    slower = detect(interval(AT, everyone(3, mean=2)), BASE, DetectSettings())
    assert [a.subject for a in slower] == ["server:traffic"]


def test_one_query_x10_among_others_is_not_traffic() -> None:
    ctx = make_context(interval(AT, scaled("orders", calls=10)), BASE, DetectSettings())
    assert ctx.traffic_factor == pytest.approx(1.0)
    found = detect(interval(AT, scaled("orders", calls=10)), BASE, DetectSettings())
    assert {a.subject for a in found} == {"orders"}
    assert {a.rule for a in found} == {"db_time_surge", "call_rate_spike"}


def test_index_dropped_is_a_latency_regression() -> None:
    found = detect(interval(AT, scaled("orders", mean=20)), BASE, DetectSettings())
    rules = {a.rule for a in found if a.subject == "orders"}
    assert {"latency_regression", "db_time_surge"} <= rules


def test_steady_interval_has_no_anomaly() -> None:
    assert detect(interval(AT), BASE, DetectSettings()) == []


def test_learning_baseline_detects_nothing() -> None:
    settings = DetectSettings()
    short = build_baseline(history(11), settings)
    assert short.learning and short.intervals == 11
    assert detect(interval(AT, scaled("orders", calls=100)), short, settings) == []
    full = build_baseline(history(12), settings)
    assert not full.learning
    assert detect(interval(AT, scaled("orders", calls=100)), full, settings) != []


def test_incomplete_interval_detects_nothing() -> None:
    iv = interval(AT, scaled("orders", calls=100))
    broken = IntervalSummary(iv.start, iv.end, False, iv.by_fingerprint)
    assert detect(broken, BASE, DetectSettings()) == []


def test_robust_statistics() -> None:
    robust = Robust.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert robust == Robust(3.0, 1.0)
    assert Robust.of([]) == Robust(0.0, 0.0)
    flat = Robust.of([10.0] * 5)
    assert flat.mad == 0.0
    assert flat.threshold(4.0, 0.25) == pytest.approx(20.0)  # spread floored at 25% of median


def test_baseline_per_fingerprint() -> None:
    b: Baseline = BASE
    orders = b.by_fingerprint["orders"]
    assert b.intervals == 20 and not b.learning
    assert orders.samples == 20
    assert orders.calls_per_s.median == pytest.approx(50.0)
    assert orders.mean_ms.median == pytest.approx(2.0)
    assert orders.db_ms_per_s.median == pytest.approx(100.0)
    assert orders.rows_per_call.median == pytest.approx(1.0)
    assert b.by_fingerprint["report"].temp_blks_per_s.median == pytest.approx(20.0)
    assert b.traffic_calls_per_s.median == pytest.approx(101.5)


def test_baseline_window_keeps_the_last_intervals() -> None:
    old = [interval(i * SECONDS, everyone(10)) for i in range(30)]
    recent = [interval((30 + i) * SECONDS) for i in range(20)]
    b = build_baseline(old + recent, DetectSettings(window_intervals=20))
    assert b.intervals == 20
    assert b.by_fingerprint["orders"].calls_per_s.median == pytest.approx(50.0)


def test_baseline_same_hour_of_week_after_two_weeks() -> None:
    hour = 3600.0
    # 15 days of hourly intervals: 10x traffic in hour-of-week 5, normal otherwise
    hist = []
    for h in range(15 * 24):
        t = h * hour
        workload = everyone(10) if int(h % 168) == 5 else STEADY
        hist.append(interval(t, workload, seconds=hour))
    settings = DetectSettings(learning_intervals=2)
    seasonal = build_baseline(hist, settings, at=168 * 2 * hour + 5 * hour + 10)
    assert seasonal.intervals == 3
    assert seasonal.by_fingerprint["orders"].calls_per_s.median == pytest.approx(500.0)
    plain = build_baseline(hist, settings)
    assert plain.by_fingerprint["orders"].calls_per_s.median == pytest.approx(50.0)


def test_settings_from_mapping() -> None:
    s = settings_from_mapping({"learning_intervals": 6, "far_factor": 3, "cpu_cores": 4})
    assert s.learning_intervals == 6
    assert s.far_factor == 3.0 and isinstance(s.far_factor, float)
    assert s.cpu_cores == 4
    assert settings_from_mapping({}) == DetectSettings()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"learnin_intervals": 6}, "detect.learnin_intervals: unknown setting"),
        ({"learning_intervals": 2.5}, "detect.learning_intervals: expected int"),
        ({"far_factor": "2"}, "detect.far_factor: expected float"),
        ({"cpu_cores": True}, "detect.cpu_cores: expected int or none"),
        ({"mad_k": -1}, "detect.mad_k: must not be negative"),
    ],
)
def test_settings_from_mapping_rejects(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(table)


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "thresholds.md").read_text(encoding="utf-8")
    for name in DetectSettings.__dataclass_fields__:
        assert f"`{name}`" in doc, name


def test_detect_package_is_pure() -> None:
    code = (
        "import sys, querywatch.detect\n"
        "bad = {'psycopg', 'sqlite3', '_sqlite3', 'fastapi', 'starlette', 'httpx', 'uvicorn'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
