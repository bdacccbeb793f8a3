"""Pure: a deploy's before/after comparison per fingerprint, its significance tests and verdict.

The audit compares the stored intervals of a window before a deploy with a window after it. For
each fingerprint it gives calls/s, calls per transaction, mean latency and DB time on both sides,
and tests whether the change is more than noise with a Mann-Whitney U test over the per-interval
samples (normal approximation with tie and continuity corrections; no scipy needed). A change
counts as a regression only when it is large (a factor), significant (p below ``alpha``) and
material (a visible share of the DB time), so the jitter of an innocent deploy does not flag.

A statement's calls/s are judged against the traffic of the others: the diagnosis' traffic factor
(:func:`querywatch.diagnose.traffic_factor`, the call-weighted median of per-statement call
ratios) over every statement but the one judged, never below 1. Transactions/s would not do: in
autocommit code every statement is a transaction, so an N+1 inflates the very factor that should
expose it. A uniform x3 of every statement gives each one x1 against the others' x3.

>>> round(mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]), 4)
0.0122
>>> mann_whitney([1, 1, 1], [1, 1, 1])
1.0
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..diagnose import Workload, traffic_factor, workload
from ..errors import InputError
from ..model import Deploy, IntervalSummary, Statement

LEAVE_OUT_SHARE = 0.05  # share of the calls from which a statement could move the traffic factor
NO_PLANS = "plan history not available (plans are recorded by `querywatch advise`)"


class AuditVerdict(enum.StrEnum):
    PASS = "pass"
    REGRESSED = "regressed"


class ChangeStatus(enum.StrEnum):
    NEW = "new"  # only after the deploy
    GONE = "gone"  # only before it
    KEPT = "kept"  # on both sides


class ReasonKind(enum.StrEnum):
    FREQUENCY = "frequency"
    LATENCY = "latency"
    NEW_QUERY = "new_query"


@dataclass(frozen=True)
class AuditSettings:
    """Thresholds of the verdict; every one of them shows in the reasons it produces."""

    alpha: float = 0.01  # significance level of the Mann-Whitney U test
    frequency_factor: float = 2.0  # calls/s after / before, beyond the other statements' traffic
    latency_factor: float = 1.5  # mean latency after / before
    min_latency_delta_ms: float = 0.05  # a smaller rise of the mean is never a regression
    min_db_share: float = 0.005  # share of the after DB time a statement must hold to be judged
    new_query_share: float = 0.10  # a new statement holding this share of DB time regresses
    min_samples: int = 3  # intervals needed on each side to test


@dataclass(frozen=True)
class UTest:
    """A two-sided Mann-Whitney U test of the after samples against the before samples."""

    p_value: float
    n_before: int
    n_after: int


@dataclass(frozen=True)
class Side:
    """One fingerprint on one side of the deploy."""

    calls: float
    calls_per_s: float
    calls_per_xact: float | None  # None when pg_stat_database figures are missing
    mean_ms: float
    db_ms_per_s: float


@dataclass(frozen=True)
class PlanChange:
    """The plan a fingerprint used before and after (short descriptions, e.g. 'Seq Scan on t')."""

    before: str
    after: str


@dataclass(frozen=True)
class Reason:
    fingerprint: str
    kind: ReasonKind
    factor: float  # after / before (for a new statement: its share of the after DB time)
    p_value: float | None
    text: str


@dataclass(frozen=True)
class Change:
    fingerprint: str
    query: str
    status: ChangeStatus
    before: Side | None
    after: Side | None
    frequency_test: UTest | None = None
    latency_test: UTest | None = None
    plan: PlanChange | None = None
    traffic: float = 1.0  # the other statements' traffic factor (>= 1) its calls/s are judged by

    @property
    def db_ms_per_s_change(self) -> float:
        after = self.after.db_ms_per_s if self.after else 0.0
        before = self.before.db_ms_per_s if self.before else 0.0
        return after - before


@dataclass(frozen=True)
class WindowFacts:
    start: float
    end: float
    intervals: int
    seconds: float
    db_ms_per_s: float
    xact_per_s: float | None


@dataclass(frozen=True)
class AuditReport:
    deploy: Deploy
    before: WindowFacts
    after: WindowFacts
    verdict: AuditVerdict
    reasons: tuple[Reason, ...]
    changes: tuple[Change, ...]  # largest DB time change first
    plan_note: str = ""
    settings: AuditSettings = field(default_factory=AuditSettings)
    # the diagnosis' traffic factor over every statement but those flagged for their frequency
    traffic_factor: float = 1.0

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict is AuditVerdict.REGRESSED else 0


# -- statistics ---------------------------------------------------------------------------------
def mann_whitney(before: Sequence[float], after: Sequence[float]) -> float:
    """Two-sided p-value of the U test (normal approximation, tie and continuity corrected)."""
    n1, n2 = len(before), len(after)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranks, ties = _ranks([*before, *after])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = max(abs(u1 - mean) - 0.5, 0.0) / math.sqrt(variance)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) and the tie term sum(t^3 - t) over groups of equal values."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    return ranks, ties


def u_test(before: Sequence[float], after: Sequence[float], min_samples: int) -> UTest | None:
    if len(before) < min_samples or len(after) < min_samples:
        return None
    return UTest(mann_whitney(before, after), len(before), len(after))


# -- windows ------------------------------------------------------------------------------------
def split(
    summaries: Iterable[IntervalSummary], at: float, before_s: float, after_s: float
) -> tuple[list[IntervalSummary], list[IntervalSummary]]:
    """Complete intervals wholly before and wholly after ``at`` (the one spanning it is dropped)."""
    usable = [s for s in summaries if s.complete and s.seconds > 0]
    before = [s for s in usable if s.end <= at and s.start >= at - before_s - 1e-6]
    after = [s for s in usable if s.start >= at and s.end <= at + after_s + 1e-6]
    return before, after


def _xacts(interval: IntervalSummary) -> float | None:
    db = interval.database
    return db.xact_commit + db.xact_rollback if db is not None else None


def _facts(intervals: Sequence[IntervalSummary]) -> WindowFacts:
    seconds = sum(s.seconds for s in intervals)
    db_ms = sum(c.exec_ms for s in intervals for c in s.by_fingerprint.values())
    xacts = [_xacts(s) for s in intervals]
    known = [x for x in xacts if x is not None]
    xact_per_s = sum(known) / seconds if known and len(known) == len(xacts) and seconds else None
    return WindowFacts(
        start=min((s.start for s in intervals), default=0.0),
        end=max((s.end for s in intervals), default=0.0),
        intervals=len(intervals),
        seconds=seconds,
        db_ms_per_s=db_ms / seconds if seconds else 0.0,
        xact_per_s=xact_per_s,
    )


def _side(fp: str, intervals: Sequence[IntervalSummary], facts: WindowFacts) -> Side | None:
    calls = sum(s.by_fingerprint[fp].calls for s in intervals if fp in s.by_fingerprint)
    if calls <= 0:
        return None
    ms = sum(s.by_fingerprint[fp].exec_ms for s in intervals if fp in s.by_fingerprint)
    xacts = facts.xact_per_s * facts.seconds if facts.xact_per_s is not None else None
    return Side(
        calls=calls,
        calls_per_s=calls / facts.seconds,
        calls_per_xact=calls / xacts if xacts else None,
        mean_ms=ms / calls,
        db_ms_per_s=ms / facts.seconds,
    )


def frequency_samples(
    fp: str, intervals: Sequence[IntervalSummary], traffic: float = 1.0
) -> list[float]:
    """Per interval: calls/s divided by ``traffic``, zero where the statement did not run."""
    return [
        (s.by_fingerprint[fp].calls if fp in s.by_fingerprint else 0.0) / s.seconds / traffic
        for s in intervals
    ]


@dataclass(frozen=True)
class Traffic:
    """Both windows' workloads and the traffic factor over all their statements."""

    before: Workload
    after: Workload
    factor: float

    @classmethod
    def of(cls, before: Sequence[IntervalSummary], after: Sequence[IntervalSummary]) -> Traffic:
        b, a = workload(before), workload(after)
        return cls(b, a, traffic_factor(b, a))

    def without(self, fingerprints: Collection[str]) -> float:
        """The traffic factor of every statement but ``fingerprints``."""
        if not fingerprints:
            return self.factor
        b = {fp: v for fp, v in self.before.by_fingerprint.items() if fp not in fingerprints}
        a = {fp: v for fp, v in self.after.by_fingerprint.items() if fp not in fingerprints}
        return traffic_factor(Workload(self.before.seconds, b), Workload(self.after.seconds, a))

    def judging(self, fp: str, settings: AuditSettings) -> float:
        """The traffic ``fp``'s calls/s are judged by: the others' factor, at least 1, so a
        statement's own calls never inflate it. Left out only when it could matter: its raw
        calls/s ratio could regress, and it holds enough of the calls before to move the
        call-weighted median (``LEAVE_OUT_SHARE``). So at most 1 / LEAVE_OUT_SHARE statements
        cost a second median, even when a uniform surge multiplies thousands of them."""
        b, a = self.before.by_fingerprint.get(fp), self.after.by_fingerprint.get(fp)
        if b is None or a is None or a.calls_per_s < settings.frequency_factor * b.calls_per_s:
            return max(1.0, self.factor)
        if b.calls_per_s < LEAVE_OUT_SHARE * self.before.calls_per_s:
            return max(1.0, self.factor)
        return max(1.0, self.without({fp}))


def latency_samples(fp: str, intervals: Sequence[IntervalSummary]) -> list[float]:
    """Per interval where the statement ran: its mean execution time (ms)."""
    return [
        s.by_fingerprint[fp].mean_ms
        for s in intervals
        if fp in s.by_fingerprint and s.by_fingerprint[fp].calls > 0
    ]


# -- the audit ----------------------------------------------------------------------------------
def audit(
    deploy: Deploy,
    before: Sequence[IntervalSummary],
    after: Sequence[IntervalSummary],
    statements: Mapping[str, Statement],
    plans: Mapping[str, PlanChange] | None = None,
    settings: AuditSettings = AuditSettings(),
) -> AuditReport:
    """Compare the windows around ``deploy`` (already split, complete intervals only)."""
    if not before or not after:
        side = "before" if not before else "after"
        raise InputError(
            f"audit {deploy.version}: no complete interval recorded {side} the deploy "
            "(fix: collect longer, or widen --before/--after)"
        )
    b, a = _facts(before), _facts(after)
    traffic = Traffic.of(before, after)
    changes = [
        _change(fp, before, after, b, a, statements, plans or {}, traffic, settings)
        for fp in sorted(
            {fp for s in [*before, *after] for fp, c in s.by_fingerprint.items() if c.calls > 0}
        )
    ]
    changes.sort(key=lambda c: (-abs(c.db_ms_per_s_change), c.fingerprint))
    reasons = tuple(r for c in changes for r in judge(c, a, settings))
    verdict = AuditVerdict.REGRESSED if reasons else AuditVerdict.PASS
    note = "" if plans is not None else NO_PLANS
    amplified = {r.fingerprint for r in reasons if r.kind is ReasonKind.FREQUENCY}
    k = traffic.without(amplified)  # the traffic of the statements that did not multiply
    return AuditReport(deploy, b, a, verdict, reasons, tuple(changes), note, settings, k)


def _change(
    fp: str,
    before: Sequence[IntervalSummary],
    after: Sequence[IntervalSummary],
    b: WindowFacts,
    a: WindowFacts,
    statements: Mapping[str, Statement],
    plans: Mapping[str, PlanChange],
    traffic: Traffic,
    settings: AuditSettings,
) -> Change:
    sb, sa = _side(fp, before, b), _side(fp, after, a)
    status = ChangeStatus.KEPT if sb and sa else ChangeStatus.NEW if sa else ChangeStatus.GONE
    freq = lat = None
    k = 1.0
    if status is ChangeStatus.KEPT:
        n = settings.min_samples
        k = traffic.judging(fp, settings)
        freq = u_test(frequency_samples(fp, before), frequency_samples(fp, after, k), n)
        lat = u_test(latency_samples(fp, before), latency_samples(fp, after), n)
    query = statements[fp].query if fp in statements else ""
    return Change(fp, query, status, sb, sa, freq, lat, plans.get(fp), k)


def judge(change: Change, after: WindowFacts, settings: AuditSettings) -> list[Reason]:
    """The regressions one change amounts to (none for noise, small or immaterial changes)."""
    if change.after is None:
        return []
    share = change.after.db_ms_per_s / after.db_ms_per_s if after.db_ms_per_s else 0.0
    if change.before is None:
        return _new_query(change, share, settings)
    if share < settings.min_db_share:
        return []
    return [r for r in (_frequency(change, settings), _latency(change, settings)) if r]


def _new_query(change: Change, share: float, settings: AuditSettings) -> list[Reason]:
    if share < settings.new_query_share or change.after is None:
        return []
    text = (
        f"new statement holds {share:.0%} of the DB time after the deploy "
        f"({change.after.calls_per_s:.1f} calls/s, mean {change.after.mean_ms:.2f} ms)"
    )
    return [Reason(change.fingerprint, ReasonKind.NEW_QUERY, share, None, text)]


def _frequency(change: Change, settings: AuditSettings) -> Reason | None:
    b, a, test = change.before, change.after, change.frequency_test
    if b is None or a is None or test is None or test.p_value >= settings.alpha:
        return None
    raw = a.calls_per_s / b.calls_per_s
    factor = raw / change.traffic
    if factor < settings.frequency_factor:
        return None
    text = (
        f"calls/s x{raw:.1f} ({b.calls_per_s:.3g} -> {a.calls_per_s:.3g}/s), x{factor:.1f} "
        f"beyond the other statements' traffic (x{change.traffic:.2f}), "
        f"p={test.p_value:.2g}{_plan_text(change)}"
    )
    return Reason(change.fingerprint, ReasonKind.FREQUENCY, factor, test.p_value, text)


def _latency(change: Change, settings: AuditSettings) -> Reason | None:
    b, a, test = change.before, change.after, change.latency_test
    if b is None or a is None or test is None or test.p_value >= settings.alpha:
        return None
    factor = a.mean_ms / b.mean_ms if b.mean_ms > 0 else math.inf
    if factor < settings.latency_factor or a.mean_ms - b.mean_ms < settings.min_latency_delta_ms:
        return None
    text = (
        f"mean latency x{factor:.1f} ({b.mean_ms:.3g} -> {a.mean_ms:.3g} ms), "
        f"p={test.p_value:.2g}{_plan_text(change)}"
    )
    return Reason(change.fingerprint, ReasonKind.LATENCY, factor, test.p_value, text)


def _plan_text(change: Change) -> str:
    plan = change.plan
    if plan is None or plan.before == plan.after:
        return ""
    return f"; plan changed: {plan.before} -> {plan.after}"


# -- scheduling inside `watch` --------------------------------------------------------------------
def due_audits(
    deploys: Iterable[Deploy],
    now: float,
    after_s: float,
    done: Iterable[tuple[str, float]],
    horizon_s: float = 3600.0,
) -> list[Deploy]:
    """Deploys whose after-window has passed, not audited yet, and not older than the horizon.

    ``done`` holds the ``(version, at)`` of deploys already audited.

    >>> d = [Deploy("v1", 100.0), Deploy("v2", 500.0)]
    >>> [x.version for x in due_audits(d, now=1000.0, after_s=600.0, done=[])]
    ['v1']
    >>> due_audits(d, now=1000.0, after_s=600.0, done=[("v1", 100.0)])
    []
    """
    seen = set(done)
    return [
        d
        for d in sorted(deploys, key=lambda d: d.at)
        if (d.version, d.at) not in seen and d.at + after_s <= now <= d.at + after_s + horizon_s
    ]
