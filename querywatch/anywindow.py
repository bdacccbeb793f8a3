"""Diagnose any stored window: what to read from the store, then :func:`diagnose_any`.

The onset inside the window is the start of the first incident recorded in it, else the change
point of its top fingerprints' DB time. The baseline is the clean history before the window, the
window's own intervals before the onset, or the long run pg_stat_statements held when querywatch
first met the server; with a long run stored, an onset counts only when what precedes it is normal
against it (see :func:`querywatch.diagnose.choose_baseline`).

Short windows are read as raw intervals. A long one (with its history, longer than ``RAW_SPAN_S``
and more raw statement rows than ``RAW_ROWS``, e.g. 24 hours of 1,000 fingerprints: 8.6 million)
is read from the rollups with lean sums (store/dbtime.py): the fingerprints that rose most between
``COARSE`` parts of the window, then the per-minute series of each around its rise for the change
point. The window is then four pieces, before the onset, the minute before it, its minute and the
rest, so an onset is known to within a minute; the sampled sessions (lock waits) are not read for
long windows, nor are long catch-ups left out of their history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise

from . import collector
from .diagnose import (
    LONG_RUN,
    DiagnoseSettings,
    Point,
    change_point,
    choose_baseline,
    diagnose,
    diagnose_any,
    rises,
)
from .model import Counters, Diagnosis, IntervalSummary
from .store.dbtime import Sums
from .store.protocol import StoreProtocol

RAW_ROWS = 100_000  # raw statement rows (intervals x statements) a diagnosis reads at most...
RAW_SPAN_S = 3600.0  # ... unless the window and its history are this short (an incident's)
MIN_PRE_MINUTES = 3  # minutes of a long window before its onset that can be its baseline
COARSE = 24  # parts of a long window in which the fingerprints that rose are looked for
LEAD_S = 600.0  # the per-minute series around a rise starts this long before its part
MINUTE = 60.0
HOUR = 3600.0

Spans = Sequence[tuple[float, float]]


def diagnose_stored(
    store: StoreProtocol,
    server_id: int,
    start: float,
    end: float,
    settings: DiagnoseSettings,
    *,
    baseline_s: float,
    spans: Spans,
    interval_s: float,
    enough_intervals: int,
) -> Diagnosis:
    """Diagnose [start, end) of one server. ``spans`` are earlier incidents (not a normal to
    compare with); ``interval_s`` the collection interval, as far as the caller knows it."""
    span = end - start + baseline_s
    rows = span / max(interval_s, 1.0) * len(store.known_keys(server_id))
    if span > RAW_SPAN_S and rows > RAW_ROWS:
        return _diagnose_rollups(
            store, server_id, start, end, settings, baseline_s, spans, interval_s, enough_intervals
        )
    history = store.summaries(server_id, start - baseline_s, start)
    typical = collector.typical_seconds(history) or interval_s
    baseline = [
        s
        for s in history
        if s.end <= start
        and not _overlaps(s.start, s.end, spans)
        and collector.baseline_worthy(s, typical)
    ]
    window = [s for s in store.summaries(server_id, start, end) if s.start >= start]
    step = collector.typical_seconds(window) or typical
    fingerprints = {fp for s in window for fp in s.by_fingerprint}
    fingerprints |= {a.fingerprint for s in window if s.activity for a in s.activity.by_fingerprint}
    statements = store.statements(sorted(fingerprints), server_id=server_id)
    deploys = store.deploys(start - baseline_s, end)
    long_run, note = _long_run(store, server_id, start)
    return diagnose_any(
        window,
        statements,
        deploys,
        settings,
        requested=(start, end),
        history=baseline,
        long_run=long_run,
        long_run_note=note,
        onset=_incident_onset(store, server_id, start, end, step),
        enough_intervals=enough_intervals,
    )


def _overlaps(start: float, end: float, spans: Spans) -> bool:
    return any(a < end and start < b for a, b in spans)


def _long_run(
    store: StoreProtocol, server_id: int, at: float
) -> tuple[IntervalSummary | None, str]:
    """The stored long run, when there is one worth comparing with."""
    lr = store.long_run(server_id, at)
    if lr is None or not lr.trusted or lr.seconds <= 0 or not lr.by_fingerprint:
        return None, ""
    return lr.summary(), lr.note()


def _incident_onset(
    store: StoreProtocol, server_id: int, start: float, end: float, interval_s: float
) -> float | None:
    """The start of the first interval of the earliest incident that fired inside the window
    (an incident opens at the end of its first anomalous interval)."""
    onsets = [
        i.opened_at - interval_s
        for i in (s.incident for s in store.incidents(server_id))
        if i.fired_at is not None and start < i.opened_at - interval_s < end
    ]
    return min(onsets, default=None)


# -- long windows, from the rollups -------------------------------------------------------------
def _diagnose_rollups(
    store: StoreProtocol,
    server_id: int,
    start: float,
    end: float,
    settings: DiagnoseSettings,
    baseline_s: float,
    spans: Spans,
    interval_s: float,
    enough_intervals: int,
) -> Diagnosis:
    a, b = _floor(start, MINUTE), math.ceil(end / MINUTE) * MINUTE
    onset = _incident_onset(store, server_id, a, b, interval_s)
    if onset is None:
        onset = _long_onset(store, server_id, a, b, settings)
    pieces: list[IntervalSummary] = []
    if onset is not None and _floor(onset, MINUTE) - MINUTE >= a + MIN_PRE_MINUTES * MINUTE:
        onset = _floor(onset, MINUTE)
        cuts = (a, onset - MINUTE, onset, onset + MINUTE, b)
        pieces = [_piece(store, server_id, lo, hi) for lo, hi in pairwise(cuts)]
    whole = pieces or [_piece(store, server_id, a, b)]
    since = _floor(a - baseline_s, MINUTE)
    before = _piece(store, server_id, since, a)  # the history before the window, if clean
    history = [] if before.seconds <= 0 or _overlaps(since, a, spans) else [before]
    long_run, note = _long_run(store, server_id, start)
    statements = store.statements(_fingerprints(whole), server_id=server_id)
    kind, baseline, window = choose_baseline(
        history,
        pieces[:1],
        pieces[1:],
        whole,
        long_run,
        statements,
        settings,
        enough_s=enough_intervals * interval_s,
    )
    found_d = diagnose(
        baseline,
        [w for w in window if w.seconds > 0],
        statements,
        store.deploys(start - baseline_s, end),
        settings,
        requested=(start, end),
        baseline_kind=kind,
        baseline_note=note if kind == LONG_RUN else "",
        resolution=MINUTE,
    )
    if window is not whole:
        return replace(found_d, window_start=a, window_end=b)
    return found_d


def _long_onset(
    store: StoreProtocol, server_id: int, start: float, end: float, settings: DiagnoseSettings
) -> float | None:
    """The change point of a long window, in two steps: the fingerprints that rose most between
    about ``COARSE`` parts of it (every fingerprint), then the per-minute series of each around
    where it rose, until one holds a change point."""
    size = max(MINUTE, _floor((end - start) / COARSE, MINUTE))
    lo, hi = start, end
    if size >= HOUR:  # whole hours, from the hour rollups (the edges only hold candidates)
        size, lo, hi = _floor(size, HOUR), math.ceil(start / HOUR) * HOUR, _floor(end, HOUR)
    sums, seconds = store.db_time(server_id, lo, hi, size)
    coarse = _as_points(sums, seconds)
    for fp, j in rises(coarse):  # the largest rise first; j: its first part after the rise
        around = max(coarse[j - 1].start - LEAD_S, start), min(coarse[j].start + size, end)
        minute_sums, minute_seconds = store.db_time(server_id, *around, MINUTE, [fp])
        found = change_point(_as_points(minute_sums, minute_seconds), settings)
        if found is not None:
            return found.at
    return None


def _as_points(sums: Sums, seconds: dict[float, float]) -> list[Point]:
    """Every bucket with complete data as a point (a fingerprint that did not run: none)."""
    return [
        Point(t, secs, {fp: v[1] for fp, v in sums.get(t, {}).items()})
        for t, secs in sorted(seconds.items())
        if secs > 0
    ]


def _piece(store: StoreProtocol, server_id: int, start: float, end: float) -> IntervalSummary:
    """[start, end) (minute-aligned) as one complete interval holding its complete seconds:
    it starts where they must so that its rates are right."""
    totals, seconds = _totals(store, server_id, start, end)
    return IntervalSummary(end - seconds, end, True, totals)


def _totals(
    store: StoreProtocol, server_id: int, start: float, end: float
) -> tuple[dict[str, Counters], float]:
    """Per-fingerprint calls and exec ms and the complete seconds over [start, end)
    (minute-aligned): whole hours from the hour rollups, the minutes around them from the minute
    rollups (and the raw intervals not rolled up yet)."""
    h0, h1 = math.ceil(start / HOUR) * HOUR, _floor(end, HOUR)
    parts = [(start, end, MINUTE)]
    if h1 > h0:
        parts = [(start, h0, MINUTE), (h0, h1, HOUR), (h1, end, MINUTE)]
    calls: dict[str, float] = {}
    ms: dict[str, float] = {}
    seconds = 0.0
    for lo, hi, step in parts:
        if hi <= lo:
            continue
        sums, covered = store.db_time(server_id, lo, hi, step, group=hi - lo)
        for by_fp in sums.values():
            for fp, (n, t) in by_fp.items():
                calls[fp] = calls.get(fp, 0.0) + n
                ms[fp] = ms.get(fp, 0.0) + t
        seconds += sum(covered.values())
    return {fp: Counters(calls=n, exec_ms=ms[fp]) for fp, n in calls.items()}, seconds


def _fingerprints(pieces: Sequence[IntervalSummary]) -> list[str]:
    return sorted({fp for p in pieces for fp in p.by_fingerprint})


def _floor(t: float, step: float) -> float:
    return math.floor(t / step) * step
