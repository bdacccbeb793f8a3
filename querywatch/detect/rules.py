"""Pure: small detection rules, each ``rule(context) -> list[Anomaly]``, and their thresholds.

A rule compares one interval with the :class:`~querywatch.detect.baseline.Baseline`. Relative
thresholds are ``median + mad_k x spread`` (spread = MAD as a sigma, floored at
``spread_floor_fraction`` of the median), scaled by the interval's traffic factor ``k`` (how much
*typical* statements grew: the low median of per-fingerprint call-rate ratios, so one statement
going x10 does not move it while a uniform x3 does) and, for time, by the latency factor (the same
for mean ms: a server-wide slowdown is not one statement's regression). Absolute floors keep tiny
statements quiet: a fingerprint is only judged when its DB time per second is at least
``min_db_ms_per_s`` and ``min_db_share`` of the server's.

``severity`` is observed / threshold: >= 1 is an anomaly, >= ``far_factor`` fires at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import median_low

from querywatch.detect.baseline import (
    Baseline,
    FingerprintBaseline,
    Rates,
    Robust,
    interval_rates,
)
from querywatch.detect.settings import DetectSettings
from querywatch.model import ActivitySummary, Anomaly, FingerprintActivity, IntervalSummary

SERVER_TRAFFIC = "server:traffic"
SERVER_LOCKS = "server:locks"
SERVER_CONNECTIONS = "server:connections"
SERVER_CPU = "server:cpu"


@dataclass(frozen=True)
class Context:
    """One interval to judge, its baseline and the server-wide factors derived from them."""

    interval: IntervalSummary
    baseline: Baseline
    settings: DetectSettings
    traffic_factor: float
    latency_factor: float = 1.0
    observed: Mapping[str, Rates] = dataclasses.field(default_factory=dict)
    total_calls_per_s: float = 0.0
    total_db_ms_per_s: float = 0.0
    candidates: tuple[str, ...] = ()

    @property
    def k(self) -> float:
        """Traffic scale of expectations (never below 1: a quiet night is not a spike)."""
        return max(1.0, self.traffic_factor)

    @property
    def lat(self) -> float:
        return max(1.0, self.latency_factor)


Rule = Callable[[Context], list[Anomaly]]


def make_context(
    interval: IntervalSummary,
    baseline: Baseline,
    settings: DetectSettings,
    observed: Mapping[str, Rates] | None = None,
) -> Context:
    """Compute rates, factors and the fingerprints that pass the absolute floors, once."""
    rates = interval_rates(interval) if observed is None else observed
    calls = sum(r.calls_per_s for r in rates.values())
    db = sum(r.db_ms_per_s for r in rates.values())
    floor = max(settings.min_db_ms_per_s, settings.min_db_share * db)
    floor = min(floor, max(settings.new_min_db_ms_per_s, settings.new_min_db_share * db))
    return Context(
        interval=interval,
        baseline=baseline,
        settings=settings,
        traffic_factor=traffic_factor(rates, baseline, settings),
        latency_factor=latency_factor(rates, baseline, settings),
        observed=rates,
        total_calls_per_s=calls,
        total_db_ms_per_s=db,
        candidates=tuple(fp for fp, r in rates.items() if r.db_ms_per_s >= floor),
    )


def traffic_factor(rates: Mapping[str, Rates], baseline: Baseline, s: DetectSettings) -> float:
    """Low median of calls/s ratios over fingerprints with a steady baseline (absent = 0)."""
    ratios = []
    for fp, fb in baseline.by_fingerprint.items():
        if fb.samples >= s.min_samples and fb.calls_per_s.median >= s.min_calls_per_s:
            r = rates.get(fp)
            ratios.append(r.calls_per_s / fb.calls_per_s.median if r is not None else 0.0)
    return _typical(ratios)


def latency_factor(rates: Mapping[str, Rates], baseline: Baseline, s: DetectSettings) -> float:
    """Low median of mean-ms ratios over fingerprints with enough calls now and before."""
    ratios = []
    for fp, r in rates.items():
        fb = baseline.by_fingerprint.get(fp)
        if fb is None or r.calls < s.min_calls or fb.samples < s.min_samples:
            continue
        if fb.calls_per_s.median >= s.min_calls_per_s and fb.mean_ms.median > 0:
            ratios.append(r.mean_ms / fb.mean_ms.median)
    return _typical(ratios)


def _typical(ratios: list[float]) -> float:
    """1 voter: unknown (1.0); 2 voters: the smaller; 3 or more: the low median."""
    if len(ratios) < 2:
        return 1.0
    return min(ratios) if len(ratios) == 2 else float(median_low(ratios))


def detect(
    interval: IntervalSummary, baseline: Baseline, settings: DetectSettings
) -> list[Anomaly]:
    """All rules over one interval; nothing while the baseline is learning or the interval has
    a gap."""
    if baseline.learning or not interval.complete or interval.seconds <= 0:
        return []
    return run_rules(make_context(interval, baseline, settings))


def run_rules(ctx: Context, rules: tuple[Rule, ...] | None = None) -> list[Anomaly]:
    found: list[Anomaly] = []
    for rule in RULES if rules is None else rules:
        found.extend(rule(ctx))
    return found


# -- fingerprint rules ------------------------------------------------------------------------


def _judged(ctx: Context) -> list[tuple[str, Rates, FingerprintBaseline]]:
    out = []
    for fp in ctx.candidates:
        fb = ctx.baseline.by_fingerprint.get(fp)
        if fb is not None and fb.samples >= ctx.settings.min_samples:
            out.append((fp, ctx.observed[fp], fb))
    return out


def _anomaly(
    ctx: Context,
    rule: str,
    subject: str,
    observed: float,
    threshold: float,
    expected: float,
    why: str,
    calls: float | None = None,
) -> list[Anomaly]:
    """An anomaly when ``observed`` reaches ``threshold``. With ``calls`` (fingerprint rules),
    fewer than ``far_min_calls`` calls are weak evidence (one slow call moves a mean): the
    severity is capped just below ``far_factor`` so the signal must persist to page."""
    if threshold <= 0 or observed < threshold:
        return []
    severity = observed / threshold
    far = ctx.settings.far_factor
    if calls is not None and calls < ctx.settings.far_min_calls and severity >= far:
        severity = math.nextafter(far, 0.0)
        why += f" (only {calls:.0f} calls: must persist)"
    return [Anomaly(rule, subject, ctx.interval.end, severity, observed, expected, why)]


def _poisson(ctx: Context, fb: FingerprintBaseline) -> float:
    """Counting noise of the call rate: sqrt(calls expected in the interval), per second."""
    seconds = ctx.interval.seconds
    return math.sqrt(max(fb.calls_per_s.median * seconds, 1.0)) / seconds


def _threshold(ctx: Context, robust: Robust, scale: float, floor: float = 0.0) -> float:
    s = ctx.settings
    return scale * robust.threshold(s.mad_k, s.spread_floor_fraction, floor)


def db_time_surge(ctx: Context) -> list[Anomaly]:
    """A fingerprint's DB time per second beyond what traffic and server slowdown explain."""
    found = []
    for fp, r, fb in _judged(ctx):
        scale = ctx.k * ctx.lat
        expected = scale * fb.db_ms_per_s.median
        why = (
            f"DB time {r.db_ms_per_s:.1f} ms/s vs {fb.db_ms_per_s.median:.1f} ms/s normal "
            f"(x{_x(r.db_ms_per_s, fb.db_ms_per_s.median)}; traffic x{ctx.traffic_factor:.2f})"
        )
        floor = max(ctx.settings.min_db_ms_per_s / 4, fb.mean_ms.median * _poisson(ctx, fb))
        threshold = _threshold(ctx, fb.db_ms_per_s, scale, floor)
        found += _anomaly(
            ctx, "db_time_surge", fp, r.db_ms_per_s, threshold, expected, why, r.calls
        )
    return found


def call_rate_spike(ctx: Context) -> list[Anomaly]:
    """A fingerprint called far more often than traffic explains (frequency amplification)."""
    found = []
    for fp, r, fb in _judged(ctx):
        expected = ctx.k * fb.calls_per_s.median
        why = (
            f"calls/s {r.calls_per_s:.1f} vs {fb.calls_per_s.median:.1f} normal "
            f"(x{_x(r.calls_per_s, fb.calls_per_s.median)}; traffic x{ctx.traffic_factor:.2f})"
        )
        floor = max(ctx.settings.min_calls_per_s / 4, _poisson(ctx, fb))
        threshold = _threshold(ctx, fb.calls_per_s, ctx.k, floor)
        found += _anomaly(
            ctx, "call_rate_spike", fp, r.calls_per_s, threshold, expected, why, r.calls
        )
    return found


def latency_regression(ctx: Context) -> list[Anomaly]:
    """A fingerprint's mean time per call beyond its normal (and beyond a server-wide slowdown)."""
    found = []
    for fp, r, fb in _judged(ctx):
        if r.calls < ctx.settings.min_calls:
            continue
        why = (
            f"mean {r.mean_ms:.2f} ms vs {fb.mean_ms.median:.2f} ms normal "
            f"(x{_x(r.mean_ms, fb.mean_ms.median)}; all statements x{ctx.latency_factor:.2f})"
        )
        threshold = _threshold(ctx, fb.mean_ms, ctx.lat, ctx.settings.latency_floor_ms)
        expected = ctx.lat * fb.mean_ms.median
        found += _anomaly(
            ctx, "latency_regression", fp, r.mean_ms, threshold, expected, why, r.calls
        )
    return found


def new_expensive_fingerprint(ctx: Context) -> list[Anomaly]:
    """A fingerprint absent from the baseline (or seen in fewer than ``min_samples`` of its
    intervals) that already costs a real share of DB time."""
    s = ctx.settings
    threshold = max(s.new_min_db_ms_per_s, s.new_min_db_share * ctx.total_db_ms_per_s)
    found = []
    for fp in ctx.candidates:
        fb = ctx.baseline.by_fingerprint.get(fp)
        if fb is not None and fb.samples >= s.min_samples:
            continue
        r = ctx.observed[fp]
        share = r.db_ms_per_s / ctx.total_db_ms_per_s if ctx.total_db_ms_per_s else 0.0
        why = (
            f"new statement: {r.db_ms_per_s:.1f} ms/s ({share:.0%} of DB time), "
            f"{r.calls_per_s:.1f} calls/s, mean {r.mean_ms:.2f} ms"
        )
        found += _anomaly(
            ctx, "new_expensive_fingerprint", fp, r.db_ms_per_s, threshold, 0.0, why, r.calls
        )
    return found


def rows_per_call_jump(ctx: Context) -> list[Anomaly]:
    """A fingerprint returning or touching far more rows per call than it used to."""
    found = []
    for fp, r, fb in _judged(ctx):
        if r.calls < ctx.settings.min_calls:
            continue
        why = f"rows/call {r.rows_per_call:.1f} vs {fb.rows_per_call.median:.1f} normal"
        threshold = _threshold(ctx, fb.rows_per_call, 1.0, ctx.settings.rows_spread_floor)
        expected = fb.rows_per_call.median
        found += _anomaly(
            ctx, "rows_per_call_jump", fp, r.rows_per_call, threshold, expected, why, r.calls
        )
    return found


def temp_spill_growth(ctx: Context) -> list[Anomaly]:
    """A fingerprint writing temp files (sorts, hashes spilling to disk) beyond its normal."""
    s = ctx.settings
    found = []
    for fp, r, fb in _judged(ctx):
        if r.temp_blks_per_s < s.temp_min_blks_per_s:
            continue
        threshold = max(_threshold(ctx, fb.temp_blks_per_s, ctx.k), s.temp_min_blks_per_s)
        expected = ctx.k * fb.temp_blks_per_s.median
        mb = r.temp_blks_per_s * 8 / 1024
        why = f"temp writes {mb:.1f} MB/s vs {fb.temp_blks_per_s.median * 8 / 1024:.1f} MB/s normal"
        found += _anomaly(
            ctx, "temp_spill_growth", fp, r.temp_blks_per_s, threshold, expected, why, r.calls
        )
    return found


# -- server rules -----------------------------------------------------------------------------


def lock_waits(ctx: Context) -> list[Anomaly]:
    """Sessions waiting on locks; the subject is the blocking session's last fingerprint."""
    act = ctx.interval.activity
    if act is None or act.samples == 0:
        return []
    s = ctx.settings
    base = ctx.baseline.lock_waiting
    threshold = max(s.lock_min_waiting, base.threshold(s.mad_k, s.spread_floor_fraction))
    blocker = top_blocker(act)
    subject = blocker.fingerprint if blocker is not None else SERVER_LOCKS
    why = f"{act.lock_waiting_mean:.1f} sessions waiting on locks on average"
    if blocker is not None:
        idle = ", idle in transaction" if blocker.idle_in_transaction else ""
        why += f"; blocked by {blocker.fingerprint}{idle} ({blocker.blocked_sessions} waits)"
    return _anomaly(ctx, "lock_waits", subject, act.lock_waiting_mean, threshold, base.median, why)


def top_blocker(activity: ActivitySummary) -> FingerprintActivity | None:
    """The fingerprint whose sessions blocked the most others (None when no blocker is known)."""
    blockers = [fa for fa in activity.by_fingerprint if fa.blocking > 0]
    if not blockers:
        return None
    return max(blockers, key=lambda fa: (fa.blocked_sessions, fa.blocking, fa.fingerprint))


def connection_saturation(ctx: Context) -> list[Anomaly]:
    """Peak sessions close to max_connections."""
    act = ctx.interval.activity
    if act is None or act.max_connections <= 0:
        return []
    ratio = act.sessions_max / act.max_connections
    why = f"{act.sessions_max} of {act.max_connections} connections in use at peak"
    threshold = ctx.settings.connections_ratio
    return _anomaly(ctx, "connection_saturation", SERVER_CONNECTIONS, ratio, threshold, 0.0, why)


def cpu_saturation(ctx: Context) -> list[Anomaly]:
    """Busy sessions against the server's cores (``cpu_cores``, read from the server by the
    watcher when it can: querywatch.source.cores). Busy is the mean number of sessions active
    and not waiting on a lock in the interval's pg_stat_activity samples (their own statements
    still running included, which pg_stat_statements does not show until they finish); without
    samples, the DB time per second (running time included)."""
    cores = ctx.settings.cpu_cores
    if not cores:
        return []
    act = ctx.interval.activity
    if act is not None and act.samples > 0:
        busy = max(act.active_mean - act.lock_waiting_mean, 0.0)
        why = f"{busy:.1f} sessions active on average for {cores} CPU cores"
    else:
        busy = ctx.total_db_ms_per_s / 1000.0
        why = f"statements keep {busy:.2f} of {cores} CPU cores busy"
    threshold = ctx.settings.cpu_ratio * cores
    expected = ctx.baseline.db_ms_per_s.median / 1000.0
    return _anomaly(ctx, "cpu_saturation", SERVER_CPU, busy, threshold, expected, why)


def traffic_surge(ctx: Context) -> list[Anomaly]:
    """Typical statements all grew together (a traffic surge, not one query's regression)."""
    base = ctx.baseline.traffic_calls_per_s.median
    if base <= 0:
        return []
    total = ctx.total_calls_per_s / base
    k = min(ctx.traffic_factor, total)
    why = (
        f"traffic x{ctx.traffic_factor:.2f} for typical statements, "
        f"{ctx.total_calls_per_s:.1f} calls/s vs {base:.1f} normal"
    )
    threshold = ctx.settings.traffic_surge_factor
    return _anomaly(ctx, "traffic_surge", SERVER_TRAFFIC, k, threshold, 1.0, why)


RULES: tuple[Rule, ...] = (
    db_time_surge,
    call_rate_spike,
    latency_regression,
    new_expensive_fingerprint,
    rows_per_call_jump,
    temp_spill_growth,
    lock_waits,
    connection_saturation,
    cpu_saturation,
    traffic_surge,
)

SYMPTOM_RULES = frozenset({"connection_saturation", "cpu_saturation"})
"""Server-wide rules that describe an effect; their anomalies join the cause's incident."""


def _x(observed: float, normal: float) -> str:
    return f"{observed / normal:.1f}" if normal > 0 else "inf"
