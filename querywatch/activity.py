"""Pure: pg_stat_activity samples of one interval -> an ActivitySummary.

A session waiting on a lock names its blockers through ``pg_blocking_pids``; the blocker's
fingerprint (the statement it ran last, often while now idle in transaction) is what lock
contention is attributed to.

Running time. pg_stat_statements adds a statement's time only when it finishes, so four 60 s
statements would show as nothing for a minute, then as a spike. :class:`RunningTime` counts the
time of statements still running, per fingerprint, in a separate figure (``running_ms``) that
detection and diagnosis add to ``exec_ms``. The estimate, per interval [start, end]:

- the watcher samples pg_stat_activity once more right *after* each snapshot; a statement active in
  that sample, with the same (pid, query_start), had not finished at the snapshot, so the snapshot
  does not hold it. Its time up to the snapshot is ``query_seconds - (sample.at - end)`` (from the
  statement's own start, exact, not samples x spacing); the part not yet counted (at most the
  interval's length, so time before the first interval is never invented) is counted now;
- a statement counted before that is no longer active in that sample has finished and
  pg_stat_statements has just added its whole time: what was counted for it is subtracted
  (``running_ms`` is then negative for that interval), so the sum over intervals is what
  pg_stat_statements reports, never counted twice. Consumers floor exec_ms + running_ms at 0.

The only imprecision: a statement finishing between the snapshot and the sample just after it
(milliseconds) lands in the next interval's exec_ms while its credit is subtracted in this one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .model import ActivitySample, ActivitySummary, FingerprintActivity, SessionSample

IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")


Instance = tuple[int, float]
"""A statement execution: the backend's pid and its query_start."""


@dataclass
class RunningTime:
    """Counts the time of statements still running, interval after interval (see the module
    docstring); one per watcher, fed each interval's samples in order."""

    counted: dict[Instance, tuple[str, float]] = field(default_factory=dict)

    def account(
        self, samples: Sequence[ActivitySample], start: float, end: float
    ) -> dict[str, float]:
        """Per fingerprint, ms of running time to add to the interval [start, end]; the last
        sample is the one taken just after the snapshot that ends the interval."""
        last = samples[-1] if samples else None
        if last is None or last.at < end:  # no sample after the snapshot: judged next time
            return {}
        running = _running(last, end)
        found: dict[str, float] = {}
        for instance, (fp, counted_ms) in list(self.counted.items()):
            if instance not in running:  # finished: pg_stat_statements now holds its whole time
                found[fp] = found.get(fp, 0.0) - counted_ms
                del self.counted[instance]
        limit_ms = max(end - start, 0.0) * 1000.0
        for instance, (fp, elapsed_ms) in running.items():
            before = self.counted.get(instance, (fp, 0.0))[1]
            now_ms = min(max(elapsed_ms - before, 0.0), limit_ms)
            self.counted[instance] = (fp, before + now_ms)
            found[fp] = found.get(fp, 0.0) + now_ms
        return {fp: ms for fp, ms in found.items() if ms}

    def reset(self) -> None:
        """Forget what was counted (after a gap: the next interval is not continuous)."""
        self.counted.clear()


def _running(sample: ActivitySample, end: float) -> dict[Instance, tuple[str, float]]:
    """Statements active in ``sample`` that had started before ``end``: their elapsed ms at
    ``end``."""
    out: dict[Instance, tuple[str, float]] = {}
    for s in sample.sessions:
        if s.state != "active" or s.fingerprint is None:
            continue
        if s.query_start is None or s.query_seconds is None:
            continue
        elapsed_s = s.query_seconds - (sample.at - end)
        if elapsed_s > 0:
            out[(s.pid, s.query_start)] = (s.fingerprint, elapsed_s * 1000.0)
    return out


def summarize(
    samples: Sequence[ActivitySample], running: Mapping[str, float] | None = None
) -> ActivitySummary | None:
    """Aggregate the samples taken during one interval (None when there were none);
    ``running`` is :meth:`RunningTime.account`'s figure for the interval."""
    if not samples:
        return None
    counts: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    sessions_max = 0
    for sample in samples:
        _count_sample(sample, counts, totals)
        sessions_max = max(sessions_max, len(sample.sessions))
    n = len(samples)
    return ActivitySummary(
        samples=n,
        sessions_mean=totals["sessions"] / n,
        active_mean=totals["active"] / n,
        idle_in_transaction_mean=totals["idle_in_transaction"] / n,
        lock_waiting_mean=totals["lock_waits"] / n,
        sessions_max=sessions_max,
        max_connections=max(s.max_connections for s in samples),
        by_fingerprint=tuple(_records(counts, running or {})),
    )


def _count_sample(
    sample: ActivitySample, counts: dict[str, Counter[str]], totals: Counter[str]
) -> None:
    by_pid = {s.pid: s for s in sample.sessions}
    blocked_by: Counter[int] = Counter()
    for session in sample.sessions:
        totals["sessions"] += 1
        _count_session(session, counts, totals)
        if _waits_on_lock(session):
            blocked_by.update(set(session.blocking_pids))
    for pid, blocked in blocked_by.items():
        blocker = by_pid.get(pid)
        if blocker is None or blocker.fingerprint is None or _waits_on_lock(blocker):
            continue  # only root blockers count: a waiter queued ahead of others is a victim
        entry = counts.setdefault(blocker.fingerprint, Counter())
        entry["blocking"] += 1
        entry["blocked_sessions"] += blocked


def _count_session(
    session: SessionSample, counts: dict[str, Counter[str]], totals: Counter[str]
) -> None:
    key = session.fingerprint
    entry = counts.setdefault(key, Counter()) if key is not None else Counter()
    if session.state == "active":
        totals["active"] += 1
        entry["active"] += 1
        if _waits_on_lock(session):
            totals["lock_waits"] += 1
            entry["lock_waits"] += 1
    elif session.state in IDLE_IN_TRANSACTION:
        totals["idle_in_transaction"] += 1
        entry["idle_in_transaction"] += 1


def _waits_on_lock(session: SessionSample) -> bool:
    return session.state == "active" and session.wait_event_type == "Lock"


def _records(
    counts: dict[str, Counter[str]], running: Mapping[str, float]
) -> list[FingerprintActivity]:
    empty: Counter[str] = Counter()
    return [
        FingerprintActivity(
            fingerprint=fp,
            active=c["active"],
            lock_waits=c["lock_waits"],
            blocking=c["blocking"],
            blocked_sessions=c["blocked_sessions"],
            idle_in_transaction=c["idle_in_transaction"],
            running_ms=round(running.get(fp, 0.0), 3),
        )
        for fp in sorted(counts.keys() | running.keys())
        for c in (counts.get(fp, empty),)
        if any(c.values()) or running.get(fp)
    ]


def running_ms(summary: ActivitySummary | None) -> dict[str, float]:
    """Per fingerprint, the running time an interval's activity adds to its exec_ms."""
    if summary is None:
        return {}
    return {fa.fingerprint: fa.running_ms for fa in summary.by_fingerprint if fa.running_ms}
