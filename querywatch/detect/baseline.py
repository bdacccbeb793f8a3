"""Pure: what is normal for each fingerprint, as robust statistics over recent history.

Every statistic is a :class:`Robust` pair (median, median absolute deviation) so that one bad
interval in the history moves nothing. Per fingerprint the samples are the intervals in which it
ran (``calls > 0``): its rate *while it runs*, so a statement that runs every few minutes is
compared with its own bursts, not with the zeros between them. DB time is ``exec_ms`` as
pg_stat_statements reports it (the same figure :mod:`querywatch.diagnose` attributes).

Two ways to build a :class:`Baseline`:

- :func:`build_baseline` from a sequence of intervals (tests, one-shot callers). With at least
  ``seasonal_after_days`` of history and a time ``at``, only the intervals of the same hour of the
  week are used, so Monday 9:00 is compared with earlier Mondays 9:00.
- :class:`RollingBaseline`, the incremental form the :class:`~querywatch.detect.Detector` keeps:
  per-fingerprint arrays over a trailing window, refreshed a slice at a time, so one interval costs
  the same whether the store holds an hour or a week.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from querywatch.detect.settings import DetectSettings
from querywatch.model import Counters, IntervalSummary

MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of a normal distribution
WEEK_S = 7 * 24 * 3600.0
HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class Robust:
    """Median and median absolute deviation of a series."""

    median: float = 0.0
    mad: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Robust:
        ordered = sorted(values)
        if not ordered:
            return cls()
        med = float(_median_sorted(ordered))
        # deviations below and above the median are two ascending runs: timsort merges them in
        # linear time, and map() keeps the per-value work in C
        split = len(ordered) // 2
        below = list(map(med.__sub__, reversed(ordered[:split])))
        above = list(map(med.__rsub__, ordered[split:]))
        return cls(med, _median_sorted(sorted(map(abs, below + above))))

    def spread(self, floor_fraction: float, floor: float = 0.0) -> float:
        """MAD as a sigma, floored at a fraction of the median (a flat series is not infinitely
        sensitive) and at an absolute floor."""
        return max(MAD_TO_SIGMA * self.mad, floor_fraction * abs(self.median), floor)

    def threshold(self, k: float, floor_fraction: float, floor: float = 0.0) -> float:
        """``median + k x spread``: the value above which a sample is abnormal."""
        return self.median + k * self.spread(floor_fraction, floor)


@dataclass(frozen=True, slots=True)
class Rates:
    """One fingerprint's figures in one interval, per second or per call."""

    calls: float
    calls_per_s: float
    mean_ms: float
    db_ms_per_s: float
    rows_per_call: float
    temp_blks_per_s: float


def rates(counters: Counters, seconds: float, running_ms: float = 0.0) -> Rates:
    """``running_ms``: time of statements still running (querywatch.activity.RunningTime), in
    DB time only (the mean per call is of finished calls)."""
    calls = counters.calls
    return Rates(
        calls=calls,
        calls_per_s=calls / seconds,
        mean_ms=counters.exec_ms / calls if calls else 0.0,
        db_ms_per_s=max(counters.exec_ms + running_ms, 0.0) / seconds,
        rows_per_call=counters.rows / calls if calls else 0.0,
        temp_blks_per_s=counters.temp_blks_written / seconds,
    )


def interval_rates(interval: IntervalSummary) -> dict[str, Rates]:
    """Rates of every fingerprint that ran in the interval (calls > 0) or was running in it
    (DB time of statements not finished yet, from the activity samples)."""
    seconds = interval.seconds
    act = interval.activity
    running = {fa.fingerprint: fa.running_ms for fa in act.by_fingerprint} if act else {}
    found = {
        fp: rates(c, seconds, running.get(fp, 0.0))
        for fp, c in interval.by_fingerprint.items()
        if c.calls > 0
    }
    for fp, ms in running.items():
        if fp not in found and ms > 0:
            found[fp] = rates(Counters(), seconds, ms)
    return found


@dataclass(frozen=True, slots=True)
class Totals:
    """Server-wide figures of one interval."""

    calls_per_s: float
    db_ms_per_s: float
    lock_waiting: float


def totals(interval: IntervalSummary, observed: Mapping[str, Rates]) -> Totals:
    calls = sum(r.calls_per_s for r in observed.values())
    db = sum(r.db_ms_per_s for r in observed.values())
    waiting = interval.activity.lock_waiting_mean if interval.activity is not None else 0.0
    return Totals(calls, db, waiting)


@dataclass(frozen=True)
class FingerprintBaseline:
    """What is normal for one fingerprint; ``samples`` counts the intervals in which it ran."""

    fingerprint: str
    samples: int
    calls_per_s: Robust
    mean_ms: Robust
    db_ms_per_s: Robust
    rows_per_call: Robust
    temp_blks_per_s: Robust


@dataclass(frozen=True)
class Baseline:
    """What is normal for the server: ``intervals`` complete intervals back, per fingerprint."""

    intervals: int
    learning: bool
    traffic_calls_per_s: Robust
    db_ms_per_s: Robust
    by_fingerprint: Mapping[str, FingerprintBaseline]
    lock_waiting: Robust = Robust()


def fingerprint_baseline(
    fingerprint: str,
    calls_per_s: Sequence[float],
    mean_ms: Sequence[float],
    rows_per_call: Sequence[float],
    temp_blks_per_s: Sequence[float],
) -> FingerprintBaseline:
    """Robust statistics of one fingerprint from its per-interval series (equal lengths)."""
    db = [c * m for c, m in zip(calls_per_s, mean_ms, strict=True)]
    return FingerprintBaseline(
        fingerprint=fingerprint,
        samples=len(calls_per_s),
        calls_per_s=Robust.of(calls_per_s),
        mean_ms=Robust.of(mean_ms),
        db_ms_per_s=Robust.of(db),
        rows_per_call=Robust.of(rows_per_call),
        temp_blks_per_s=Robust.of(temp_blks_per_s),
    )


def server_baseline(
    window: Sequence[Totals],
    by_fingerprint: Mapping[str, FingerprintBaseline],
    settings: DetectSettings,
) -> Baseline:
    return Baseline(
        intervals=len(window),
        learning=len(window) < settings.learning_intervals,
        traffic_calls_per_s=Robust.of(t.calls_per_s for t in window),
        db_ms_per_s=Robust.of(t.db_ms_per_s for t in window),
        by_fingerprint=by_fingerprint,
        lock_waiting=Robust.of(t.lock_waiting for t in window),
    )


def build_baseline(
    history: Sequence[IntervalSummary], settings: DetectSettings, at: float | None = None
) -> Baseline:
    """Baseline from the complete intervals of ``history`` (oldest first).

    Uses the last ``settings.window_intervals`` of them, or, once the history spans
    ``settings.seasonal_after_days`` and ``at`` is given, those in the same hour of the week as
    ``at`` (when there are at least ``learning_intervals`` of them).
    """
    usable = [i for i in history if i.complete and i.seconds > 0]
    window = _seasonal(usable, settings, at) or usable[-settings.window_intervals :]
    series: dict[str, list[Rates]] = {}
    window_totals = []
    for interval in window:
        observed = interval_rates(interval)
        window_totals.append(totals(interval, observed))
        for fp, r in observed.items():
            series.setdefault(fp, []).append(r)
    by_fp = {fp: _from_rates(fp, rs) for fp, rs in series.items()}
    return server_baseline(window_totals, MappingProxyType(by_fp), settings)


def hour_of_week(ts: float) -> int:
    """0..167 counted from Thursday 1970-01-01 00:00 UTC (any fixed origin works)."""
    return int((ts % WEEK_S) // HOUR_S)


def _seasonal(
    usable: Sequence[IntervalSummary], settings: DetectSettings, at: float | None
) -> list[IntervalSummary]:
    if at is None or not usable:
        return []
    if usable[-1].end - usable[0].start < settings.seasonal_after_days * 86400.0:
        return []
    hour = hour_of_week(at)
    same = [i for i in usable if hour_of_week((i.start + i.end) / 2) == hour]
    return same if len(same) >= settings.learning_intervals else []


def _from_rates(fp: str, rs: Sequence[Rates]) -> FingerprintBaseline:
    return fingerprint_baseline(
        fp,
        [r.calls_per_s for r in rs],
        [r.mean_ms for r in rs],
        [r.rows_per_call for r in rs],
        [r.temp_blks_per_s for r in rs],
    )


def _median_sorted(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class _Series:
    """One fingerprint's samples in the trailing window, as compact float arrays.

    Dropping the oldest sample only moves ``head``; the arrays are compacted once half of them
    is dead, so eviction costs O(1) amortized.
    """

    __slots__ = ("calls_per_s", "head", "mean_ms", "rows_per_call", "seq", "temp_blks_per_s")

    def __init__(self) -> None:
        self.head = 0
        self.seq = array("q")
        self.calls_per_s = array("d")
        self.mean_ms = array("d")
        self.rows_per_call = array("d")
        self.temp_blks_per_s = array("d")

    def __len__(self) -> int:
        return len(self.seq) - self.head

    def first_seq(self) -> int:
        return self.seq[self.head]

    def append(self, seq: int, r: Rates) -> None:
        self.seq.append(seq)
        self.calls_per_s.append(r.calls_per_s)
        self.mean_ms.append(r.mean_ms)
        self.rows_per_call.append(r.rows_per_call)
        self.temp_blks_per_s.append(r.temp_blks_per_s)

    def drop_first(self) -> None:
        self.head += 1
        if self.head >= 32 and 2 * self.head >= len(self.seq):
            for a in self._arrays():
                del a[: self.head]
            self.head = 0

    def baseline(self, fp: str) -> FingerprintBaseline:
        h = self.head
        return fingerprint_baseline(
            fp,
            self.calls_per_s[h:],
            self.mean_ms[h:],
            self.rows_per_call[h:],
            self.temp_blks_per_s[h:],
        )

    def _arrays(self) -> tuple[array[int], array[float], array[float], array[float], array[float]]:
        return (self.seq, self.calls_per_s, self.mean_ms, self.rows_per_call, self.temp_blks_per_s)


class RollingBaseline:
    """A trailing window of accepted intervals with per-fingerprint baselines kept up to date.

    ``add`` costs one append per fingerprint that ran; the robust statistics of
    ``ceil(fingerprints / refresh_every)`` fingerprints are recomputed per ``add`` (round robin),
    and those of a fingerprint at once when it is new or its samples doubled since they were last
    computed (cheap: its series is short, and doubling makes the cost amortized O(1)). A
    fingerprint's statistics are so at most ``refresh_every`` intervals old and never based on
    fewer than half of its samples, which robust statistics over a long window tolerate.
    """

    def __init__(self, settings: DetectSettings) -> None:
        self._settings = settings
        self._seq = 0
        self._window: deque[tuple[int, Totals, tuple[str, ...]]] = deque()
        self._series: dict[str, _Series] = {}
        self._cache: dict[str, FingerprintBaseline] = {}
        self._view = MappingProxyType(self._cache)
        self._round: deque[str] = deque()
        self._queued: set[str] = set()
        self._server: Baseline | None = None

    def __len__(self) -> int:
        return len(self._window)

    def add(
        self, interval: IntervalSummary, observed: Mapping[str, Rates], *, refresh: bool = True
    ) -> None:
        """Accept one complete interval (with its rates) into the window; ``refresh=False``
        (for a bulk preload followed by :meth:`refresh_all`) skips the round-robin refresh."""
        seq = self._seq = self._seq + 1
        self._window.append((seq, totals(interval, observed), tuple(observed)))
        stale = []
        for fp, r in observed.items():
            s = self._series.get(fp)
            if s is None:
                s = self._series[fp] = _Series()
            s.append(seq, r)
            known = self._cache.get(fp)
            if known is None or len(s) >= 2 * known.samples:
                stale.append(fp)
        while len(self._window) > self._settings.window_intervals:
            self._evict()
        for fp in stale:
            if refresh:
                self._cache[fp] = self._series[fp].baseline(fp)
            if fp not in self._queued:
                self._queued.add(fp)
                self._round.append(fp)
        if refresh:
            self._refresh(math.ceil(len(self._round) / max(1, self._settings.refresh_every)))
        self._server = None

    def refresh_all(self) -> None:
        """Recompute every fingerprint's statistics now."""
        self._refresh(len(self._round))
        self._server = None

    def baseline(self) -> Baseline:
        """The current baseline; its ``by_fingerprint`` is a live read-only view."""
        if self._server is None:
            self._server = server_baseline(
                [t for _, t, _ in self._window], self._view, self._settings
            )
        return self._server

    def _evict(self) -> None:
        seq, _, fps = self._window.popleft()
        for fp in fps:
            s = self._series[fp]
            if len(s) and s.first_seq() == seq:
                s.drop_first()
            if not len(s):
                del self._series[fp]
                self._cache.pop(fp, None)

    def _refresh(self, count: int) -> None:
        for _ in range(min(count, len(self._round))):
            fp = self._round.popleft()
            s = self._series.get(fp)
            if s is None:
                self._queued.discard(fp)
                continue
            self._cache[fp] = s.baseline(fp)
            self._round.append(fp)


def long_run_baseline(interval: IntervalSummary, settings: DetectSettings) -> Baseline:
    """A prior from one long interval (pg_stat_statements' counters since its reset).

    Each fingerprint's medians are its long-run rates; a long-run mean has no MAD, so the spread
    comes from the floors alone. It counts as ``learning_intervals`` samples (at least
    ``min_samples``) so the rules judge against it until the store holds history of its own.
    """
    samples = max(settings.min_samples, settings.learning_intervals)
    observed = interval_rates(interval) if interval.seconds > 0 else {}
    by_fp = {fp: _prior(fp, r, samples) for fp, r in observed.items()}
    total = totals(interval, observed)
    return Baseline(
        intervals=samples,
        learning=False,
        traffic_calls_per_s=Robust(total.calls_per_s),
        db_ms_per_s=Robust(total.db_ms_per_s),
        by_fingerprint=MappingProxyType(by_fp),
    )


def _prior(fp: str, r: Rates, samples: int) -> FingerprintBaseline:
    return FingerprintBaseline(
        fingerprint=fp,
        samples=samples,
        calls_per_s=Robust(r.calls_per_s),
        mean_ms=Robust(r.mean_ms),
        db_ms_per_s=Robust(r.db_ms_per_s),
        rows_per_call=Robust(r.rows_per_call),
        temp_blks_per_s=Robust(r.temp_blks_per_s),
    )
