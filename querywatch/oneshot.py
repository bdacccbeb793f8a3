"""One-shot diagnosis of a server querywatch never watched: no store, no watcher, one connection.

:func:`diagnose_now` takes a snapshot, samples pg_stat_activity every second and a snapshot every
``step_s`` (so onset and lock logic see short intervals) for ``sample_s``, fingerprints the
statements, and diagnoses the sample against the long-run baseline that the first snapshot holds
(each entry's counters since pg_stat_statements' reset). This is the command a responder runs at
3 a.m. before anything is installed: ``querywatch diagnose --dsn DSN --now``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import activity, collector, headroom
from .diagnose import LONG_RUN, DiagnoseSettings, diagnose
from .longrun import MIN_AGE_S, LongRun, long_run, min_age
from .model import (
    ActivitySample,
    Counters,
    Diagnosis,
    Interval,
    IntervalSummary,
    Snapshot,
    Statement,
)
from .source.capabilities import with_note
from .source.cores import server_cores
from .source.identify import Identified, identify
from .source.postgres import PostgresSource

log = logging.getLogger("querywatch.oneshot")

SAMPLE_S = 10.0
STEP_S = 2.0
ACTIVITY_S = 1.0


@dataclass
class _Sampling:
    """What the sample collected so far."""

    identified: Identified
    intervals: list[tuple[Interval, list[ActivitySample]]] = field(default_factory=list)
    samples: list[ActivitySample] = field(default_factory=list)


def diagnose_now(
    source: PostgresSource,
    sample_s: float = SAMPLE_S,
    settings: DiagnoseSettings = DiagnoseSettings(),
    *,
    step_s: float = STEP_S,
    activity_s: float = ACTIVITY_S,
    sleep: Callable[[float], None] = time.sleep,
    connected: Callable[[], None] | None = None,
    min_age_s: float = MIN_AGE_S,
) -> Diagnosis:
    """Diagnose the next ``sample_s`` seconds against the long run (connects, then closes);
    ``connected`` is called once the connection is up (the CLI says it is sampling then);
    ``min_age_s`` is the ``[detect] long_run_min_age`` setting (querywatch.longrun.min_age)."""
    caps = source.connect()
    if connected is not None:
        connected()
    try:
        first = source.snapshot()
        sampling = _Sampling(identify(source, first.statements))
        last = _sample(source, first, sampling, sample_s, step_s, activity_s, sleep)
        keys = {d.key for interval, _ in sampling.intervals for d in interval.statements}
        identify(source, keys, sampling.identified)
        cores = server_cores(source)  # for the headroom line (querywatch.capacity)
    finally:
        source.close()
    found = sampling.identified
    age = min_age(step_s, min_age_s)
    lr = long_run(first, found.fingerprints, own=frozenset(found.own), min_age_s=age)
    window = [_summary(i, samples, found) for i, samples in sampling.intervals]
    for _, samples in sampling.intervals:  # texts of sampled statements (e.g. a lock's blocker)
        for session in (s for sample in samples for s in sample.sessions):
            if session.fingerprint and session.query:
                found.texts.setdefault(session.fingerprint, session.query)
    log.info("sampled %.1f s; comparing with %s", last.taken_at - first.taken_at, lr.note())
    result = _diagnose(lr, window, found, settings)
    known = headroom.KnownCores(cores.count, cores.how) if cores is not None else None
    result = headroom.assessed(result, known, _db_ms_per_s(window), replicas=None)
    return with_note(result, caps.visibility_note())


def _db_ms_per_s(window: list[IntervalSummary]) -> float | None:
    """The server's DB (execution) time per second over the sample's complete intervals."""
    used = [s for s in window if s.complete and s.seconds > 0]
    seconds = sum(s.seconds for s in used)
    spent = sum(c.exec_ms for s in used for c in s.by_fingerprint.values())
    return spent / seconds if seconds > 0 else None


def _sample(
    source: PostgresSource,
    first: Snapshot,
    sampling: _Sampling,
    sample_s: float,
    step_s: float,
    activity_s: float,
    sleep: Callable[[float], None],
) -> Snapshot:
    """Activity every ``activity_s``, a snapshot (closing an interval) every ``step_s``."""
    started = time.monotonic()
    steps = max(1, round(sample_s / step_s))
    previous = first
    for n in range(1, steps + 1):
        deadline = started + sample_s * n / steps
        while (wait := deadline - time.monotonic()) > 0:
            sleep(min(activity_s, wait))
            if deadline - time.monotonic() > activity_s / 4:
                sampling.samples.append(source.sample_activity())
        current = source.snapshot()
        sampling.intervals.append((collector.delta(previous, current), sampling.samples))
        sampling.samples = []
        previous = current
    return previous


def _summary(
    interval: Interval, samples: list[ActivitySample], found: Identified
) -> IntervalSummary:
    by_fp: dict[str, Counters] = {}
    for d in interval.statements:
        fp = found.fingerprints.get(d.key)
        if fp is None or fp in found.own or not d.key.toplevel:
            continue
        known = by_fp.get(fp)
        by_fp[fp] = d.counters if known is None else known.plus(d.counters)
    return IntervalSummary(
        interval.start,
        interval.end,
        interval.complete,
        by_fp,
        interval.database,
        activity.summarize(samples),
    )


def _diagnose(
    lr: LongRun,
    window: list[IntervalSummary],
    found: Identified,
    settings: DiagnoseSettings,
) -> Diagnosis:
    fingerprints = {fp for s in window for fp in s.by_fingerprint}
    fingerprints |= {a.fingerprint for s in window if s.activity for a in s.activity.by_fingerprint}
    statements = {
        fp: Statement(fp, found.texts.get(fp, ""), tuple(sorted(found.queryids.get(fp, ()))))
        for fp in fingerprints
    }
    baseline = [lr.summary()] if lr.seconds > 0 and lr.by_fingerprint else []
    return diagnose(
        baseline,
        window,
        statements,
        [],
        settings,
        baseline_kind=LONG_RUN,
        baseline_note=lr.note(),
    )
