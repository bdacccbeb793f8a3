"""Pure: pg_stat_activity samples of one interval -> an ActivitySummary.

A session waiting on a lock names its blockers through ``pg_blocking_pids``; the blocker's
fingerprint (the statement it ran last, often while now idle in transaction) is what lock
contention is attributed to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .model import ActivitySample, ActivitySummary, FingerprintActivity, SessionSample

IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")


def summarize(samples: Sequence[ActivitySample]) -> ActivitySummary | None:
    """Aggregate the samples taken during one interval (None when there were none)."""
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
        by_fingerprint=tuple(_records(counts)),
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


def _records(counts: dict[str, Counter[str]]) -> list[FingerprintActivity]:
    return [
        FingerprintActivity(
            fingerprint=fp,
            active=c["active"],
            lock_waits=c["lock_waits"],
            blocking=c["blocking"],
            blocked_sessions=c["blocked_sessions"],
            idle_in_transaction=c["idle_in_transaction"],
        )
        for fp, c in sorted(counts.items())
        if any(c.values())
    ]
