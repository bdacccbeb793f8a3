"""Pure: which statements explain the extra database time, and did a deploy start it.

For each fingerprint f, DB time per second T_f = calls/s c_f x mean ms m_f, in the baseline (0)
and in the window (1); incomplete intervals are left out and rates divide by the seconds the
complete ones cover. With the overall traffic factor k = (calls/s in 1) / (calls/s in 0):

- expected_f = k x T0_f, what uniform traffic growth would explain;
- excess_f = T1_f - expected_f = (c1 - k c0) m0  [frequency part]  +  c1 (m1 - m0)  [per-call part];
- a fingerprint absent from the baseline is a new query: its whole T1 is excess.

Verdicts: ``lock_contention`` when sampled sessions mostly wait on locks (culprit 1 is the
fingerprint the blocking sessions ran last); ``traffic_surge`` when traffic grew and the culprits'
excess is a small part of the increase; ``query_regression`` when a few fingerprints hold the
excess; ``healthy`` otherwise. A deploy is suspect only when a culprit that is new or changed
started within ``suspect_window_s`` after it. Times are POSIX seconds; text says HH:MM:SS UTC.

Contention (:mod:`querywatch.contention`): when the busy statements ran slower together, or the
ones carrying a traffic surge did, each statement's mean rise up to that common factor s is
contention, not its own excess: it is handed to what added the load (the traffic, and the
culprits by their own excess: extra calls, a new statement, a per-call rise beyond s). A server
slowed by a surge is then a ``traffic_surge``, and a statement whose extra calls slowed everyone
carries their slowdown, instead of each slowed statement posing as a regression. When nothing
added load (no culprit, traffic below the slowdown threshold) the rise is not set apart (a table
they share may have changed): the statements stay culprits and the summary says they slowed
together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from querywatch.contention import (
    Change,
    Contention,
    ContentionSettings,
    busy_cores,
    contention,
    shares,
    weighted_median,
)
from querywatch.durations import clock
from querywatch.errors import InputError
from querywatch.model import (
    Culprit,
    CulpritKind,
    Deploy,
    DeployVerdict,
    Diagnosis,
    FingerprintActivity,
    IntervalSummary,
    Rate,
    Statement,
    Verdict,
)
from querywatch.text import figure, one_line

HISTORY = "history"  # the intervals before the window
PRE_ONSET = "pre_onset"  # the window's own intervals before the onset it holds
LONG_RUN = "long_run"  # pg_stat_statements' cumulative counters since they started counting
BASELINE_KINDS = (HISTORY, PRE_ONSET, LONG_RUN)


MIN_SEGMENT = 3  # complete intervals on each side of a change point, at least
ENOUGH_HISTORY = 12  # intervals of history that are a baseline even when the window holds more
TOP_SERIES = 25  # fingerprints (by DB time) whose series a change point is searched in
CHANGE_T = 5.0  # a change point's mean shift in pooled standard errors, at least


# typical statements below this share of their baseline rate: throughput fell (said in the summary)
THROUGHPUT_FELL = 0.9


@dataclass(frozen=True)
class DiagnoseSettings:
    """Thresholds of :func:`diagnose`, with their defaults."""

    max_culprits: int = 5  # culprits listed at most
    min_excess_ms_per_s: float = 5.0  # below this excess DB time (ms per s) a statement is noise
    min_excess_ratio: float = 0.5  # a known statement must exceed its expectation by 50%
    # when traffic also surged, the culprits must hold this share of the DB time increase for
    # a query regression; below it the verdict is a traffic surge
    regression_share: float = 0.5
    surge_factor: float = 1.5  # traffic factor k from which a uniform growth is a surge
    min_lock_waiting: float = 1.0  # sessions waiting on locks on average, at least
    lock_wait_share: float = 0.5  # ... and at least this share of the active sessions
    suspect_window_s: float = 300.0  # a culprit must start within this after a deploy
    change_factor: float = 1.5  # calls/s or mean changing by this factor is a change
    onset_fraction: float = 0.5  # onset: DB time/s above expected + this x the excess
    # a slowdown the busy statements shared (querywatch.contention); cpu_cores tells saturation
    contention: ContentionSettings = field(default_factory=ContentionSettings)


@dataclass(frozen=True, slots=True)
class Load:
    """Calls per second and mean milliseconds of one fingerprint over some intervals."""

    calls_per_s: float = 0.0
    mean_ms: float = 0.0
    # time of statements still running (querywatch.activity.RunningTime), less what was counted
    # of those that finished (their whole time is in mean_ms): DB time, not calls
    running_ms_per_s: float = 0.0

    @property
    def ms_per_s(self) -> float:
        return max(self.calls_per_s * self.mean_ms + self.running_ms_per_s, 0.0)

    @property
    def ran(self) -> bool:
        return self.calls_per_s > 0 or self.running_ms_per_s > 0


@dataclass(frozen=True)
class Workload:
    """Per-fingerprint load over the complete intervals of a span."""

    seconds: float
    by_fingerprint: Mapping[str, Load]

    @property
    def calls_per_s(self) -> float:
        return sum(load.calls_per_s for load in self.by_fingerprint.values())

    @property
    def ms_per_s(self) -> float:
        return sum(load.ms_per_s for load in self.by_fingerprint.values())


@dataclass(frozen=True)
class Attribution:
    """How much of one fingerprint's window DB time uniform traffic growth does not explain."""

    fingerprint: str
    baseline: Load
    window: Load
    expected_ms_per_s: float
    frequency_ms_per_s: float
    per_call_ms_per_s: float  # its own: beyond the contention the server shared
    contention_ms_per_s: float = 0.0  # its mean rise up to the shared slowdown, at window calls

    @property
    def new(self) -> bool:
        return not self.baseline.ran and self.window.ran

    @property
    def excess_ms_per_s(self) -> float:
        return self.window.ms_per_s - self.expected_ms_per_s - self.contention_ms_per_s

    @property
    def kind(self) -> CulpritKind:
        if self.new:
            return CulpritKind.NEW_QUERY
        if self.frequency_ms_per_s > self.per_call_ms_per_s:
            return CulpritKind.FREQUENCY
        return CulpritKind.LATENCY


@dataclass(frozen=True)
class LockPicture:
    """pg_stat_activity samples of the window, summed over its intervals."""

    samples: int
    active_mean: float
    lock_waiting_mean: float
    by_fingerprint: Mapping[str, FingerprintActivity]


@dataclass(frozen=True)
class _Context:
    """Everything the verdict-specific steps share."""

    window: Sequence[IntervalSummary]
    base: Workload
    win: Workload
    factor: float
    attributions: Mapping[str, Attribution]
    positive_excess: float
    statements: Mapping[str, Statement]
    settings: DiagnoseSettings
    resolution: float  # how precisely an onset is known (see judge_deploys)
    contention: Contention = field(default_factory=Contention)
    given: Mapping[str, float] = field(default_factory=dict)  # contention handed to culprits
    contention_ms_per_s: float = 0.0  # the DB time the shared slowdown cost
    # False: nothing added the load behind the shared slowdown (no culprit, traffic flat), so it
    # is not set apart: each statement's rise stays its own, and the summary says they share it
    caused: bool = True


def workload(intervals: Iterable[IntervalSummary]) -> Workload:
    """Calls/s and mean ms per fingerprint over the complete intervals only."""
    used = [i for i in intervals if i.complete and i.seconds > 0]
    seconds = sum(i.seconds for i in used)
    calls: dict[str, float] = {}
    ms: dict[str, float] = {}
    running: dict[str, float] = {}
    for interval in used:
        for fp, counters in interval.by_fingerprint.items():
            calls[fp] = calls.get(fp, 0.0) + counters.calls
            ms[fp] = ms.get(fp, 0.0) + counters.exec_ms
        for fa in interval.activity.by_fingerprint if interval.activity else ():
            running[fa.fingerprint] = running.get(fa.fingerprint, 0.0) + fa.running_ms
    loads = {
        fp: Load(_ratio(n, seconds), _ratio(ms[fp], n), running.get(fp, 0.0) / seconds)
        for fp, n in calls.items()
        if n > 0
    }
    for fp, extra in running.items():  # statements that only ran, none finished yet
        if fp not in loads and extra > 0:
            loads[fp] = Load(running_ms_per_s=extra / seconds)
    return Workload(seconds, loads)


def traffic_factor(base: Workload, win: Workload) -> float:
    """How much the typical statement's call rate changed: the call-weighted median of the
    per-fingerprint ratios (window calls/s over baseline calls/s).

    DESIGN.md defines k as total calls/s in the window over the baseline's; that ratio lets one
    amplified statement (an N+1 issuing most of the calls) pose as a traffic surge, so querywatch
    takes the median over statements instead, weighted by their baseline calls. A uniform x3 still
    gives 3; one statement x10 among steady ones gives about 1. Falls back to the total ratio when
    no statement is in both windows, and to 1.0 when the baseline saw no calls.
    """
    ratios = [
        (w.calls_per_s / b.calls_per_s, b.calls_per_s)
        for fp, b in base.by_fingerprint.items()
        if b.calls_per_s > 0
        for w in (win.by_fingerprint.get(fp, Load()),)
    ]
    if not ratios:
        return win.calls_per_s / base.calls_per_s if base.calls_per_s > 0 else 1.0
    return weighted_median(ratios)


def attribute(
    base: Workload, win: Workload, allowance: Mapping[str, float] | None = None
) -> dict[str, Attribution]:
    """Split each fingerprint's excess DB time into frequency and per-call parts; a mean rise
    up to its ``allowance`` factor (contention the server shared, 1 by default) is set apart.

    When both the calls and the mean rose, their joint part (extra calls x extra ms per call) is
    split evenly between the two (the symmetric, Shapley split): a query called 8x more whose
    calls then ran 2x slower on the CPUs it saturated is a frequency culprit, not a latency one.
    """
    k = traffic_factor(base, win)
    result: dict[str, Attribution] = {}
    for fp in sorted(base.by_fingerprint.keys() | win.by_fingerprint.keys()):
        b = base.by_fingerprint.get(fp, Load())
        w = win.by_fingerprint.get(fp, Load())
        shared = (allowance or {}).get(fp, 1.0)
        more_calls = w.calls_per_s - k * b.calls_per_s
        slower = w.mean_ms - shared * b.mean_ms
        joint = more_calls * slower if b.calls_per_s > 0 else 0.0  # a new statement: all its own
        frequency = more_calls * b.mean_ms + joint / 2
        per_call = w.calls_per_s * slower - joint / 2
        slowed = w.calls_per_s * (shared - 1.0) * b.mean_ms
        result[fp] = Attribution(fp, b, w, k * b.ms_per_s, frequency, per_call, slowed)
    return result


def changes(base: Workload, win: Workload) -> list[Change]:
    """Each fingerprint's calls/s and mean in both spans, for :func:`querywatch.contention`."""
    out = []
    for fp in sorted(base.by_fingerprint.keys() | win.by_fingerprint.keys()):
        b = base.by_fingerprint.get(fp, Load())
        w = win.by_fingerprint.get(fp, Load())
        out.append(Change(fp, b.calls_per_s, b.mean_ms, w.calls_per_s, w.mean_ms))
    return out


def window_contention(
    window: Sequence[IntervalSummary], base: Workload, win: Workload, s: DiagnoseSettings
) -> Contention:
    """The slowdown the busy statements shared in ``window`` (querywatch.contention), with
    its sessions busy on CPU from the activity samples (else its DB time)."""
    samples = [
        (i.activity.samples, i.activity.active_mean, i.activity.lock_waiting_mean)
        for i in _complete(window)
        if i.activity is not None
    ]
    busy = busy_cores(samples, win.ms_per_s)
    k = traffic_factor(base, win)
    return contention(changes(base, win), k, s.surge_factor, busy, s.contention)


def lock_picture(intervals: Iterable[IntervalSummary]) -> LockPicture:
    """Sample-weighted session means and per-fingerprint lock counts of the intervals."""
    samples = 0
    active = waiting = 0.0
    sums: dict[str, FingerprintActivity] = {}
    for activity in (i.activity for i in intervals if i.activity is not None):
        samples += activity.samples
        active += activity.active_mean * activity.samples
        waiting += activity.lock_waiting_mean * activity.samples
        for fa in activity.by_fingerprint:
            sums[fa.fingerprint] = _add_activity(sums.get(fa.fingerprint), fa)
    return LockPicture(samples, _ratio(active, samples), _ratio(waiting, samples), sums)


def diagnose(
    baseline: Sequence[IntervalSummary],
    window: Sequence[IntervalSummary],
    statements: Mapping[str, Statement],
    deploys: Sequence[Deploy],
    settings: DiagnoseSettings = DiagnoseSettings(),
    requested: tuple[float, float] | None = None,
    *,
    baseline_kind: str = HISTORY,
    baseline_note: str = "",
    resolution: float | None = None,
) -> Diagnosis:
    """Attribute the window's DB time, pick a verdict, name culprits and judge deploys.

    ``requested`` is the window the caller asked for: it is reported when no interval falls in it.
    ``baseline_kind`` says what ``baseline`` is (:data:`BASELINE_KINDS`): the history before the
    window, the window's own intervals before an onset, or one synthetic interval holding
    pg_stat_statements' long-run counters; ``baseline_note`` says it in words (a default is made).
    ``resolution`` is how precisely the window's intervals place an onset (by default the median
    interval length): a window of rolled-up pieces knows it to the minute.
    """
    if baseline_kind not in BASELINE_KINDS:
        raise InputError(
            f"diagnose: baseline_kind {baseline_kind!r} is not one of {BASELINE_KINDS}"
        )
    base, win = workload(baseline), workload(window)
    fallback = requested[0] if requested else _span(baseline, 0.0)[1]
    w_start, w_end = _span(window, fallback)
    if requested and not window:
        w_start, w_end = requested
    b_start, b_end = _span(baseline, w_start)
    # a long run may start days earlier: only deploys that could explain the window are listed
    since = (
        b_start if baseline_kind != LONG_RUN else min(w_start, b_end) - settings.suspect_window_s
    )
    listed = sorted((d for d in deploys if since <= d.at <= w_end), key=lambda d: d.at)
    k, culprits = 1.0, tuple[Culprit, ...]()
    step = _resolution(window) if resolution is None else resolution
    if base.seconds == 0:
        verdict, summary = Verdict.HEALTHY, _learning_summary(w_start)
    elif win.seconds == 0:
        verdict, summary = Verdict.HEALTHY, _no_data_summary(w_start, w_end)
    else:
        ctx = _context(window, base, win, statements, settings, step)
        verdict, culprits = _choose(ctx)
        summary = _summary(verdict, culprits, ctx, listed, (w_start, w_end))
        k = ctx.factor
    learning = base.seconds == 0
    note = "" if learning else baseline_note or _baseline_note(baseline_kind, b_start, b_end)
    if note and baseline_kind != HISTORY and win.seconds > 0:  # the usual comparison goes unsaid
        summary = f"{summary} Compared with {note}."
    judged = (
        _learning_deploys(listed) if learning else judge_deploys(listed, culprits, settings, step)
    )
    return Diagnosis(
        window_start=w_start,
        window_end=w_end,
        baseline_start=b_start,
        baseline_end=b_end,
        verdict=verdict,
        summary=summary,
        traffic_factor=k,
        culprits=culprits,
        deploys=judged,
        learning=learning,
        baseline_kind=baseline_kind,
        baseline_note=note,
    )


def _baseline_note(kind: str, start: float, end: float) -> str:
    """What a diagnosis compared with, in words, when the caller did not say."""
    if kind == LONG_RUN:
        return f"the long-run average since {_day_clock(start)}"
    if kind == PRE_ONSET:
        return f"this window before its onset, {clock(start)}-{clock(end)} UTC"
    return f"the history before the window, {clock(start)}-{clock(end)} UTC"


def _day_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Point:
    """One step of a DB time series: execution ms per fingerprint over ``seconds`` of complete
    data starting at ``start`` (an interval, or a rollup bucket)."""

    start: float
    seconds: float
    ms: Mapping[str, float]


@dataclass(frozen=True)
class ChangePoint:
    """Where one fingerprint's DB time per second rose the most: ``index`` is the first point
    after the change, ``at`` its start."""

    index: int
    at: float
    fingerprint: str
    before_ms_per_s: float
    after_ms_per_s: float
    score: float


def points_of(intervals: Iterable[IntervalSummary], top: int = TOP_SERIES) -> list[Point]:
    """The complete intervals as points of the ``top`` fingerprints by DB time."""
    used = _complete(intervals)
    totals: dict[str, float] = {}
    for interval in used:
        for fp, counters in interval.by_fingerprint.items():
            totals[fp] = totals.get(fp, 0.0) + counters.exec_ms
    picked = sorted(totals, key=lambda fp: (-totals[fp], fp))[:top]
    return [
        Point(
            i.start,
            i.seconds,
            {fp: i.by_fingerprint[fp].exec_ms for fp in picked if fp in i.by_fingerprint},
        )
        for i in used
    ]


def change_point(
    points: Sequence[Point],
    settings: DiagnoseSettings = DiagnoseSettings(),
    min_segment: int = MIN_SEGMENT,
) -> ChangePoint | None:
    """The split of ``points`` in two where one fingerprint's DB time per second rose the most.

    For each fingerprint, every split with at least ``min_segment`` points on each side is scored
    by its mean shift times sqrt(n1 n2 / n) (prefix sums: linear in the points); the best split
    counts when the shift is at least ``min_excess_ms_per_s`` and ``min_excess_ratio`` of the
    mean before, and at least ``CHANGE_T`` pooled standard errors. The best such fingerprint wins.
    Only rises count: a fall (an incident ending, traffic easing) is no onset.
    """
    pts = sorted((p for p in points if p.seconds > 0), key=lambda p: p.start)
    n = len(pts)
    if n < 2 * min_segment:
        return None
    best: tuple[float, int, float, float] | None = None
    winner, series = "", list[float]()
    for fp in sorted({fp for p in pts for fp in p.ms}):
        xs = [p.ms.get(fp, 0.0) / p.seconds for p in pts]
        found = _best_split(xs, min_segment, settings)
        if found is not None and (best is None or found[0] > best[0]):
            best, winner, series = found, fp, xs
    if best is None:
        return None
    score, j, before, after = best
    j = _step_back(series, j, min_segment)
    return ChangePoint(j, pts[j].start, winner, before, after, score)


def _step_back(xs: Sequence[float], j: int, min_segment: int) -> int:
    """A change that keeps growing pulls the best split late: step back over the points that
    are already more than halfway from the level before (its median) to the next point, and
    beyond that level's noise (3 median absolute deviations)."""
    level = statistics.median(xs[:j])
    noise = 3 * statistics.median(abs(x - level) for x in xs[:j])
    while j > min_segment and xs[j - 1] - level > max(0.5 * (xs[j] - level), noise):
        j -= 1
    return j


def rises(points: Sequence[Point], count: int = 3) -> list[tuple[str, int]]:
    """The ``count`` fingerprints whose DB time per second rose the most from one part of
    ``points`` to the next (by the score of :func:`change_point`, any split, nothing tested),
    each with the index of its first point after the rise: where to look closer."""
    pts = sorted((p for p in points if p.seconds > 0), key=lambda p: p.start)
    found = []
    for fp in {fp for p in pts for fp in p.ms}:
        split = _max_split([p.ms.get(fp, 0.0) / p.seconds for p in pts], 1)
        if split is not None:
            found.append((-split[0], fp, split[1]))
    return [(fp, j) for _, fp, j in sorted(found)[:count]]


def _max_split(xs: Sequence[float], min_segment: int) -> tuple[float, int, float, float] | None:
    """The split of ``xs`` with the largest rise score: (score, index, mean before, after)."""
    n = len(xs)
    sums = [0.0]
    for x in xs:
        sums.append(sums[-1] + x)
    total = sums[-1]
    best: tuple[float, int, float, float] | None = None
    for j in range(min_segment, n - min_segment + 1):
        before = sums[j] / j
        after = (total - sums[j]) / (n - j)
        score = (after - before) * math.sqrt(j * (n - j) / n)
        if score > 0 and (best is None or score > best[0]):
            best = (score, j, before, after)
    return best


def _best_split(
    xs: Sequence[float], min_segment: int, s: DiagnoseSettings
) -> tuple[float, int, float, float] | None:
    """:func:`_max_split`, when its rise is large and clear enough (see change_point)."""
    best = _max_split(xs, min_segment)
    if best is None:
        return None
    _, j, before, after = best
    shift = after - before
    if shift < s.min_excess_ms_per_s or shift < s.min_excess_ratio * before:
        return None
    first, rest = xs[:j], xs[j:]
    spread = sum((x - before) ** 2 for x in first) + sum((x - after) ** 2 for x in rest)
    sd = math.sqrt(spread / max(len(xs) - 2, 1))
    if sd > 0 and shift / (sd * math.sqrt(1 / len(first) + 1 / len(rest))) < CHANGE_T:
        return None
    return best


def diagnose_any(
    window: Sequence[IntervalSummary],
    statements: Mapping[str, Statement],
    deploys: Sequence[Deploy],
    settings: DiagnoseSettings = DiagnoseSettings(),
    requested: tuple[float, float] | None = None,
    *,
    history: Sequence[IntervalSummary] = (),
    long_run: IntervalSummary | None = None,
    long_run_note: str = "",
    onset: float | None = None,
    enough_intervals: int = ENOUGH_HISTORY,
) -> Diagnosis:
    """Diagnose any window, with the best baseline there is.

    The onset candidate inside the window is ``onset`` (e.g. the start of the first interval of
    an incident recorded in it) or else the :func:`change_point` of its intervals; the window's
    intervals before it are ``pre_onset`` (less the interval right before it, which may hold the
    change's start). The baseline is chosen by :func:`choose_baseline`.
    """
    used = _complete(window)
    split = _split(used, onset, settings)
    pre = used[: split - 1] if split is not None else []
    after = [i for i in window if i.start >= used[split - 1].start] if split is not None else []
    kind, baseline, compared = choose_baseline(
        history,
        pre,
        after,
        window,
        long_run,
        statements,
        settings,
        enough_s=enough_intervals * _resolution(used),
    )
    note = long_run_note if kind == LONG_RUN else ""
    d = diagnose(
        baseline,
        compared,
        statements,
        deploys,
        settings,
        requested,
        baseline_kind=kind,
        baseline_note=note,
    )
    if compared is window:
        return d
    w_start, w_end = _span(window, d.window_start)
    return replace(d, window_start=w_start, window_end=w_end)


def choose_baseline(
    history: Sequence[IntervalSummary],
    pre: Sequence[IntervalSummary],
    after: Sequence[IntervalSummary],
    whole: Sequence[IntervalSummary],
    long_run: IntervalSummary | None,
    statements: Mapping[str, Statement],
    settings: DiagnoseSettings,
    *,
    enough_s: float,
) -> tuple[str, Sequence[IntervalSummary], Sequence[IntervalSummary]]:
    """(baseline kind, baseline, what to compare with it) for a window ``whole`` whose onset
    candidate splits it into ``pre`` and ``after`` (both empty without one).

    1. The clean ``history`` before the window when it holds ``enough_s`` seconds.
    2. Without a ``long_run``: the pre-onset part, else the (short) history, else nothing.
    3. With a ``long_run``, the onset is accepted only when what precedes it (the short history
       and the pre-onset part) is normal against the long run (:func:`normal_against`):
       otherwise the window began in the incident, and a later rise (CPU contention, say) is no
       onset to compare with; the whole window is compared with the long run. An accepted onset
       is compared with the pre-onset part when that holds enough (the server's recent normal,
       at the watcher's resolution), else with the long run.
    """
    history_s, pre_s = workload(history).seconds, workload(pre).seconds
    if history_s >= enough_s or (long_run is None and history_s >= max(pre_s, 1e-9)):
        return HISTORY, history, whole
    if long_run is None:
        return (PRE_ONSET, pre, after) if pre else (HISTORY, history, whole)
    if not pre or not normal_against(long_run, [*history, *pre], statements, settings):
        return LONG_RUN, [long_run], whole
    if pre_s >= enough_s:
        return PRE_ONSET, pre, after
    return LONG_RUN, [long_run], after


def normal_against(
    long_run: IntervalSummary,
    part: Sequence[IntervalSummary],
    statements: Mapping[str, Statement],
    settings: DiagnoseSettings,
) -> bool:
    """Whether ``part`` is the server's normal: diagnosed against the long run, it is healthy."""
    if workload(part).seconds <= 0:
        return True
    found = diagnose([long_run], part, statements, (), settings, baseline_kind=LONG_RUN)
    return found.verdict == Verdict.HEALTHY


def _split(
    used: Sequence[IntervalSummary], onset: float | None, settings: DiagnoseSettings
) -> int | None:
    """Index of the first complete interval after the onset, when enough intervals precede it."""
    if onset is not None:
        index = next((n for n, i in enumerate(used) if i.end > onset), len(used))
        if index >= MIN_SEGMENT and index < len(used):
            return index
    found = change_point(points_of(used), settings)
    return found.index if found is not None else None


def _context(
    window: Sequence[IntervalSummary],
    base: Workload,
    win: Workload,
    statements: Mapping[str, Statement],
    settings: DiagnoseSettings,
    step: float,
) -> _Context:
    shared = window_contention(window, base, win, settings)
    allowance = {c.fingerprint: shared.allowance(c) for c in changes(base, win)}
    attributions = attribute(base, win, allowance)
    k = traffic_factor(base, win)
    drivers = {
        a.fingerprint: a.excess_ms_per_s for a in attributions.values() if _significant(a, settings)
    }
    total = sum(a.contention_ms_per_s for a in attributions.values())
    # the traffic adds load once it rose by as much as a slowdown counts (a few % more does not)
    rose = k >= settings.contention.slow_factor
    given = shares(total, (k - 1.0) * base.ms_per_s if rose else 0.0, drivers)
    caused = bool(given) or rose
    if not caused:  # a table or plan they share may have changed as well as the host's load
        attributions = attribute(base, win)
    positive = sum(max(a.excess_ms_per_s, 0.0) for a in attributions.values())
    positive += sum(given.values())
    return _Context(
        window,
        base,
        win,
        k,
        attributions,
        positive,
        statements,
        settings,
        step,
        shared,
        given,
        total,
        caused,
    )


def _resolution(window: Sequence[IntervalSummary]) -> float:
    """The length of one interval: an onset is only known to within it."""
    lengths = sorted(s.seconds for s in window if s.seconds > 0)
    return lengths[len(lengths) // 2] if lengths else 0.0


def judge_deploys(
    deploys: Sequence[Deploy],
    culprits: Sequence[Culprit],
    settings: DiagnoseSettings,
    resolution: float = 0.0,
) -> tuple[DeployVerdict, ...]:
    """Suspect the deploy right before a changed culprit's onset; clear every other one.

    An onset is the start of the first interval that shows the change, so a deploy inside that
    interval (up to ``resolution`` seconds after the onset) still comes before the change.
    """
    claims: dict[int, list[tuple[int, Culprit]]] = {}
    for n, culprit in enumerate(culprits, start=1):
        onset = culprit.onset + resolution if culprit.onset is not None else None
        index = _nearest_before(deploys, onset, settings.suspect_window_s + resolution)
        if index is not None:
            claims.setdefault(index, []).append((n, culprit))
    return tuple(
        _deploy_verdict(d, claims.get(i, []), deploys, culprits, settings)
        for i, d in enumerate(deploys)
    )


def _deploy_verdict(
    deploy: Deploy,
    claims: Sequence[tuple[int, Culprit]],
    deploys: Sequence[Deploy],
    culprits: Sequence[Culprit],
    settings: DiagnoseSettings,
) -> DeployVerdict:
    for n, culprit in claims:
        change = _change(culprit, settings)
        if change:
            delay = max((culprit.onset or deploy.at) - deploy.at, 0.0)
            reason = f"culprit {n} started {delay:.0f} s after it: {change}"
            return DeployVerdict(deploy.version, deploy.at, True, reason)
    if claims:
        reason = f"workload unchanged: culprit {claims[0][0]} started after it with steady load"
    elif not culprits:
        reason = "workload unchanged"
    else:
        reason = _innocent_reason(deploy, deploys, culprits, settings.suspect_window_s)
    return DeployVerdict(deploy.version, deploy.at, False, reason)


def _learning_deploys(deploys: Sequence[Deploy]) -> tuple[DeployVerdict, ...]:
    return tuple(
        DeployVerdict(d.version, d.at, False, "still learning: no baseline") for d in deploys
    )


def _innocent_reason(
    deploy: Deploy, deploys: Sequence[Deploy], culprits: Sequence[Culprit], within: float
) -> str:
    for n, c in enumerate(culprits, start=1):
        if c.onset is not None and deploy.at <= c.onset <= deploy.at + within:
            later = _nearest_before(deploys, c.onset, within)
            closer = f"deploy {deploys[later].version}" if later is not None else "another deploy"
            return f"{closer} came later, closer to culprit {n}'s onset"
    return f"no culprit started within {_duration(within)} after it"


def _nearest_before(deploys: Sequence[Deploy], onset: float | None, within: float) -> int | None:
    """Index of the latest deploy at or before ``onset`` and at most ``within`` seconds before."""
    if onset is None:
        return None
    found = [i for i, d in enumerate(deploys) if d.at <= onset <= d.at + within]
    return max(found, key=lambda i: deploys[i].at) if found else None


def _change(c: Culprit, settings: DiagnoseSettings) -> str:
    """What changed about a culprit against the baseline, or '' when nothing did."""
    if c.kind is CulpritKind.NEW_QUERY:
        return "new query"
    calls = _factor(c.calls_per_s)
    if calls >= settings.change_factor or 0 < calls <= 1 / settings.change_factor:
        return f"calls/s x{figure(calls)}"
    mean = _factor(c.mean_ms)
    if mean >= settings.change_factor or 0 < mean <= 1 / settings.change_factor:
        return f"mean x{figure(mean)}"
    return ""


def _choose(ctx: _Context) -> tuple[Verdict, tuple[Culprit, ...]]:
    s = ctx.settings
    locks = lock_picture(ctx.window)
    waiting = locks.lock_waiting_mean
    if waiting >= s.min_lock_waiting and waiting >= s.lock_wait_share * max(
        locks.active_mean, waiting
    ):
        return Verdict.LOCK_CONTENTION, _lock_culprits(ctx, locks)
    culprits = _excess_culprits(ctx)
    increase = ctx.win.ms_per_s - ctx.base.ms_per_s
    explained = sum(c.excess_ms_per_s for c in culprits)
    surging = ctx.factor >= s.surge_factor and increase >= s.min_excess_ms_per_s
    if surging and explained < s.regression_share * increase:
        return Verdict.TRAFFIC_SURGE, culprits
    if culprits:
        return Verdict.QUERY_REGRESSION, culprits
    return Verdict.HEALTHY, ()


def _significant(a: Attribution, s: DiagnoseSettings) -> bool:
    excess = a.excess_ms_per_s
    if excess < s.min_excess_ms_per_s:
        return False
    return a.new or excess >= s.min_excess_ratio * a.expected_ms_per_s


def _excess_culprits(ctx: _Context) -> tuple[Culprit, ...]:
    def held(a: Attribution) -> float:  # its own excess and the contention its load caused
        return a.excess_ms_per_s + ctx.given.get(a.fingerprint, 0.0)

    ranked = sorted(
        (a for a in ctx.attributions.values() if _significant(a, ctx.settings)),
        key=lambda a: (-held(a), a.fingerprint),
    )[: ctx.settings.max_culprits]
    return tuple(_culprit(a, a.kind, _onset(a, ctx), ctx, ()) for a in ranked)


def _lock_culprits(ctx: _Context, locks: LockPicture) -> tuple[Culprit, ...]:
    """The blocking fingerprint first, then the waiting ones by excess DB time."""
    blocker = _blocker_culprit(ctx, locks)
    head = (blocker,) if blocker else ()
    room = ctx.settings.max_culprits - len(head)
    skip = {c.fingerprint for c in head}
    waiters = [fa for fa in locks.by_fingerprint.values() if fa.lock_waits > 0]
    waiters = [fa for fa in waiters if fa.fingerprint not in skip]
    waiters.sort(
        key=lambda fa: (-_attribution_of(ctx, fa.fingerprint).excess_ms_per_s, -fa.lock_waits)
    )
    return head + tuple(_waiter_culprit(ctx, locks, fa) for fa in waiters[: max(room, 0)])


def _blocker_culprit(ctx: _Context, locks: LockPicture) -> Culprit | None:
    blockers = sorted((fa for fa in locks.by_fingerprint.values() if fa.blocking), key=_by_blocking)
    if not blockers:
        return None
    top = blockers[0]
    blocked = _ratio(top.blocked_sessions, top.blocking)
    evidence = (
        f"blocked {blocked:.1f} sessions on average in {_ratio(top.blocking, locks.samples):.0%}"
        " of samples",
        f"{locks.lock_waiting_mean:.1f} of {locks.active_mean:.1f} active sessions wait on locks",
    )
    onset = _activity_onset(ctx.window, top.fingerprint, blocking=True)
    a = _attribution_of(ctx, top.fingerprint)
    return _culprit(a, CulpritKind.BLOCKING, onset, ctx, evidence)


def _waiter_culprit(ctx: _Context, locks: LockPicture, fa: FingerprintActivity) -> Culprit:
    a = _attribution_of(ctx, fa.fingerprint)
    waiting = _ratio(fa.lock_waits, locks.samples)
    evidence = (f"{waiting:.1f} sessions running it waited on a lock on average",)
    onset = _activity_onset(ctx.window, fa.fingerprint, blocking=False)
    return _culprit(a, a.kind, onset, ctx, evidence)


def _by_blocking(fa: FingerprintActivity) -> tuple[int, int, str]:
    return (-fa.blocking, -fa.blocked_sessions, fa.fingerprint)


def _attribution_of(ctx: _Context, fingerprint: str) -> Attribution:
    found = ctx.attributions.get(fingerprint)
    return found or Attribution(fingerprint, Load(), Load(), 0.0, 0.0, 0.0)


LONG_CATCH_UP_INTERVALS = 3.0  # as querywatch.collector.LONG_CATCH_UP (a pure module apart)


def _onset(a: Attribution, ctx: _Context) -> float | None:
    """Start of the first complete window interval where the fingerprint clearly exceeds."""
    expected = a.expected_ms_per_s + a.contention_ms_per_s
    threshold = expected + ctx.settings.onset_fraction * a.excess_ms_per_s
    for interval in _complete(ctx.window):
        if interval.catch_up and interval.seconds > LONG_CATCH_UP_INTERVALS * ctx.resolution:
            continue  # a watcher's downtime averaged: the change is placed where it is seen next
        counters = interval.by_fingerprint.get(a.fingerprint)
        extra = _running_ms(interval, a.fingerprint)
        if (counters is None or counters.calls <= 0) and extra <= 0:
            continue
        spent = (counters.exec_ms if counters is not None else 0.0) + extra
        if a.new or spent / interval.seconds > threshold:
            return interval.start
    return None


def _running_ms(interval: IntervalSummary, fingerprint: str) -> float:
    for fa in interval.activity.by_fingerprint if interval.activity else ():
        if fa.fingerprint == fingerprint:
            return fa.running_ms
    return 0.0


def _activity_onset(
    window: Sequence[IntervalSummary], fingerprint: str, *, blocking: bool
) -> float | None:
    for interval in sorted(window, key=lambda i: i.start):
        for fa in interval.activity.by_fingerprint if interval.activity else ():
            if fa.fingerprint == fingerprint and (fa.blocking if blocking else fa.lock_waits) > 0:
                return interval.start
    return None


def _culprit(
    a: Attribution,
    kind: CulpritKind,
    onset: float | None,
    ctx: _Context,
    extra: tuple[str, ...],
) -> Culprit:
    statement = ctx.statements.get(a.fingerprint)
    given = ctx.given.get(a.fingerprint, 0.0) if kind is not CulpritKind.BLOCKING else 0.0
    excess = a.excess_ms_per_s + given
    share = _ratio(max(excess, 0.0), ctx.positive_excess)
    caused = (
        (f"+{figure(given)} ms/s of the others' slowdown: contention its load caused",)
        if given >= ctx.settings.min_excess_ms_per_s
        else ()
    )
    return Culprit(
        queryid=str(statement.queryids[0]) if statement and statement.queryids else "",
        fingerprint=a.fingerprint,
        query=statement.query if statement else "",
        kind=kind,
        excess_share=share,
        calls_per_s=Rate(a.baseline.calls_per_s, a.window.calls_per_s),
        mean_ms=Rate(a.baseline.mean_ms, a.window.mean_ms),
        onset=onset,
        evidence=extra + _evidence(a, kind, onset, share, ctx.factor, excess) + caused,
        excess_ms_per_s=excess,
        frequency_ms_per_s=a.frequency_ms_per_s,
        per_call_ms_per_s=a.per_call_ms_per_s,
    )


def _evidence(
    a: Attribution, kind: CulpritKind, onset: float | None, share: float, k: float, excess: float
) -> tuple[str, ...]:
    """Short numeric lines: what changed and since when, its share, overall traffic."""
    since = f" since {clock(onset)}" if onset is not None else ""
    b, w = a.baseline, a.window
    calls = f"{figure(b.calls_per_s)} -> {figure(w.calls_per_s)}"
    mean = f"{figure(b.mean_ms)} ms -> {figure(w.mean_ms)} ms"
    if kind is CulpritKind.NEW_QUERY:
        lines = [f"new{since} (absent from baseline)", f"calls/s {figure(w.calls_per_s)}"]
        lines.append(f"mean {figure(w.mean_ms)} ms")
    elif kind is CulpritKind.FREQUENCY:
        ratio = _ratio(w.calls_per_s, b.calls_per_s)
        lines = [f"calls/s x{figure(ratio)} ({calls}){since}", f"mean {mean}"]
    elif kind is CulpritKind.LATENCY:
        ratio = _ratio(w.mean_ms, b.mean_ms)
        lines = [f"mean x{figure(ratio)} ({mean}){since}", f"calls/s {calls}"]
    else:
        lines = [f"calls/s {calls}", f"mean {mean}"]
    if share > 0:
        lines.append(f"{share:.0%} of the extra DB time (+{figure(excess)} ms/s)")
    lines.append(f"traffic overall x{figure(k)}")
    return tuple(lines)


def _summary(
    verdict: Verdict,
    culprits: Sequence[Culprit],
    ctx: _Context,
    deploys: Sequence[Deploy],
    window: tuple[float, float],
) -> str:
    if verdict is Verdict.LOCK_CONTENTION:
        return _lock_summary(culprits, ctx, window[0])
    shared = _contention_words(culprits, ctx)
    if verdict is Verdict.TRAFFIC_SURGE:
        return _surge_summary(ctx) + (f" {shared[0].upper()}{shared[1:]}." if shared else "")
    if verdict is Verdict.QUERY_REGRESSION:
        found = _regression_summary(culprits[0], ctx, deploys, window[0])
        return found + (f" {shared[0].upper()}{shared[1:]}." if shared else "")
    between = f"between {clock(window[0])} and {clock(window[1])} UTC"
    figures = (
        f"database time {ctx.base.ms_per_s:.0f} -> {ctx.win.ms_per_s:.0f} ms/s, "
        f"traffic x{figure(ctx.factor)}"
    )
    if shared:
        return f"No single query changed {between}: {figures}; {shared}."
    return f"Nothing abnormal {between}: {figures}, no statement stands out."


def _contention_words(culprits: Sequence[Culprit], ctx: _Context) -> str:
    """The slowdown the server shared and what caused it, or '' when there was none (or it
    is too small to matter)."""
    total = ctx.contention_ms_per_s
    if not ctx.contention.found or total < ctx.settings.min_excess_ms_per_s:
        return ""
    if not ctx.caused:
        return (
            f"{ctx.contention.what()} with no load added: look for a cause they share (a table "
            "or plan they use) or contention outside them (another process on the host, I/O)"
        )
    listed = {c.fingerprint for c in culprits}
    to_culprits = sum(v for fp, v in ctx.given.items() if fp in listed)
    rose = ctx.factor >= ctx.settings.contention.slow_factor  # as in _context
    traffic = total - sum(ctx.given.values()) if rose else 0.0
    min_ms = ctx.settings.min_excess_ms_per_s
    causes = ["the extra traffic"] if traffic >= min_ms else []
    if to_culprits >= min_ms:
        causes.append("culprit 1's load" if len(culprits) == 1 else "the culprits' load")
    return f"{ctx.contention.words()}, caused by {' and '.join(causes) or 'the extra load'}"


def _regression_summary(
    top: Culprit, ctx: _Context, deploys: Sequence[Deploy], start: float
) -> str:
    when = clock(top.onset if top.onset is not None else start)
    what = _what_changed(top)
    judged = judge_deploys(deploys, (top,), ctx.settings, ctx.resolution)
    suspects = [v for v in judged if v.suspect]
    if suspects:
        seen = ", first seen" if top.kind is CulpritKind.NEW_QUERY else ""
        what += f"{seen} right after deploy {suspects[0].version} at {clock(suspects[0].at)}"
    elif deploys:
        what += f" (deploy {deploys[-1].version} at {clock(deploys[-1].at)} is not a suspect)"
    traffic = _traffic_words(top, ctx)
    return (
        f"{top.excess_share:.0%} of the extra database time since {when} UTC comes from "
        f"`{one_line(top.query or top.fingerprint, 80)}`; {what}; {traffic}."
    )


def _traffic_words(top: Culprit, ctx: _Context) -> str:
    """What traffic overall did beside the culprit: rose too, fell (requests queue behind it,
    so throughput collapses while the culprit takes ever more time), or stayed."""
    k, s = ctx.factor, ctx.settings
    if k >= s.surge_factor:
        return f"traffic overall rose {figure(k)}x too, but this statement grew beyond that"
    if k < THROUGHPUT_FELL:
        before = top.calls_per_s.baseline * top.mean_ms.baseline
        after = top.calls_per_s.window * top.mean_ms.window
        grew = (
            f"this statement's time rose {figure(after / before)}x"
            if before > 0
            else f"this new statement took {figure(after)} ms/s"
        )
        return f"throughput fell to {figure(k)}x while {grew}"
    return f"traffic overall changed only {figure(k)}x, so this is not a traffic surge"


def _what_changed(top: Culprit) -> str:
    if top.kind is CulpritKind.NEW_QUERY:
        return "it is a new statement, absent from the baseline"
    if top.kind is CulpritKind.FREQUENCY:
        return f"its calls/s went up {figure(_factor(top.calls_per_s))}x"
    m = top.mean_ms
    change = f"{figure(m.baseline)} -> {figure(m.window)} ms"
    return f"its mean time went up {figure(_factor(m))}x ({change})"


def _surge_summary(ctx: _Context) -> str:
    increase = ctx.win.ms_per_s - ctx.base.ms_per_s
    largest = max((a.excess_ms_per_s for a in ctx.attributions.values()), default=0.0)
    share = _ratio(max(largest, 0.0), increase)
    return (
        f"Traffic rose {figure(ctx.factor)}x across all statements; no single query explains it "
        f"(the largest excess is {share:.0%} of the extra DB time): a traffic surge, "
        "not a query regression."
    )


def _lock_summary(culprits: Sequence[Culprit], ctx: _Context, start: float) -> str:
    locks = lock_picture(ctx.window)
    since = clock(min((c.onset for c in culprits if c.onset is not None), default=start))
    head = (
        f"Sessions are mostly waiting on locks since {since} UTC ({locks.lock_waiting_mean:.1f}"
        f" of {locks.active_mean:.1f} active sessions on average over the window)"
    )
    blocker = next((c for c in culprits if c.kind is CulpritKind.BLOCKING), None)
    if blocker is None:
        return f"{head}; the blocker's statement is unknown: look for it in pg_locks."
    query = one_line(blocker.query or blocker.fingerprint, 80)
    return f"{head}; the blocking session last ran `{query}`: end or shorten that transaction."


def _learning_summary(start: float) -> str:
    return (
        f"Still learning: no complete baseline interval before {clock(start)} UTC to compare "
        "the window with yet, so no verdict is possible."
    )


def _no_data_summary(start: float, end: float) -> str:
    return f"No complete interval between {clock(start)} and {clock(end)} UTC to diagnose."


def _span(intervals: Sequence[IntervalSummary], default: float) -> tuple[float, float]:
    if not intervals:
        return default, default
    return min(i.start for i in intervals), max(i.end for i in intervals)


def _complete(intervals: Iterable[IntervalSummary]) -> list[IntervalSummary]:
    return sorted((i for i in intervals if i.complete and i.seconds > 0), key=lambda i: i.start)


def _add_activity(
    total: FingerprintActivity | None, fa: FingerprintActivity
) -> FingerprintActivity:
    if total is None:
        return fa
    return FingerprintActivity(
        fa.fingerprint,
        total.active + fa.active,
        total.lock_waits + fa.lock_waits,
        total.blocking + fa.blocking,
        total.blocked_sessions + fa.blocked_sessions,
        total.idle_in_transaction + fa.idle_in_transaction,
    )


def _factor(rate: Rate) -> float:
    return _ratio(rate.window, rate.baseline)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds % 60 == 0 else f"{seconds:.0f} s"
