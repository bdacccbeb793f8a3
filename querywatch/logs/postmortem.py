"""A post-mortem from logs: the incidents querywatch would have opened, had it been watching.

``logs --store --incidents`` replays detection over the intervals just loaded from a log, oldest
first, exactly as ``watch`` judges each new interval (the same detector, diagnosis and incident
records, with no alert sent), so the dashboard and the incident report show them. The detector
learns from the first intervals (``learning_intervals``) as a fresh watcher would; history stored
before the span seeds its baseline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..detect import Detector
from ..model import Interval
from ..monitor import Monitor
from ..store.protocol import StoreProtocol

log = logging.getLogger("querywatch.logs")

WARM_UP_S = 6 * 3600.0  # stored history before the span that seeds the baseline


@dataclass(frozen=True)
class Found:
    """An incident the replay opened: its id, state, when it opened, and its summary."""

    id: str
    state: str
    opened_at: float
    summary: str


def replay(
    store: StoreProtocol, server_id: int, server: str, start: float, end: float
) -> list[Found]:
    """Detect over the stored intervals of [start, end]; the incidents opened in that span."""
    known = {s.incident.id for s in store.incidents(server_id, limit=10_000)}
    monitor = Monitor(store, server_id, server, Detector())
    monitor.warm_up(start, WARM_UP_S)
    for summary in store.summaries(server_id, start, end + 1):
        monitor.on_interval(0, Interval(summary.start, summary.end, (), None))
    found = [
        Found(
            s.incident.id,
            s.incident.state.value,
            s.incident.opened_at,
            str((s.diagnosis or {}).get("summary", "")),
        )
        for s in store.incidents(server_id, limit=10_000)
        if s.incident.id not in known
    ]
    return sorted(found, key=lambda f: f.opened_at)
