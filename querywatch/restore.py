"""A restarted watcher takes back the incidents its previous run left open.

The store keeps every incident that fired (with its diagnosis and timeline). On start the monitor
(querywatch.monitor.Monitor.warm_up) asks :func:`plan` what to do with the open ones of its server:

- *restore*: the incident goes back into the Detector in its state (id, key, opened and fired
  times, rules, subjects: its key and the statements its page named), so the regression that
  still runs joins it instead of paging again, and it resolves as usual after
  ``resolve_intervals`` clean intervals (the clean count starts again at 0: whether the intervals
  before the stop were clean is not stored, so a restart can delay a resolve, never hasten it);
- *close*: when the server's data stopped longer ago than the resolve window plus
  :data:`STALE_MARGIN_S` (the watcher and every collector were down), nothing is known about the
  time in between: the incident is resolved at start with a note saying so, and the resolve is
  sent; if the regression still runs it opens a new incident.

The intervals of each incident, from its onset until it resolved (an open one: until now), are
kept out of the baseline the warm-up seeds (:func:`outside_incidents`), as the live Detector kept
them out: at most ``max_excluded_intervals`` in a row, after which a long incident becomes the
normal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .durations import human
from .model import Incident, IncidentEvent, IncidentState, IntervalSummary

STALE_MARGIN_S = 300.0
"""Missing data beyond the resolve window after which an open incident is closed at start."""

OPEN_STATES = (IncidentState.PENDING, IncidentState.FIRING)


@dataclass(frozen=True)
class Plan:
    """What a restarted monitor does with the open incidents it found in the store."""

    restore: tuple[Incident, ...]  # back into the Detector
    close: tuple[Incident, ...]  # resolved at start (already in state RESOLVED, with a note)


def subjects(incident: Incident, diagnosis: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The incident's key and the fingerprints its stored diagnosis names as culprits: a
    statement named in the page joins the incident after a restart instead of paging again."""
    found = [incident.key, *incident.subjects]
    for culprit in (diagnosis or {}).get("culprits") or ():
        if isinstance(culprit, dict) and culprit.get("fingerprint"):
            found.append(str(culprit["fingerprint"]))
    return tuple(dict.fromkeys(found))


def plan(
    incidents: Iterable[Incident],
    now: float,
    data_until: float | None,
    resolve_s: float,
    margin_s: float = STALE_MARGIN_S,
) -> Plan:
    """Restore the open incidents, or close them all when the data stopped at ``data_until``
    more than ``resolve_s`` + ``margin_s`` before ``now`` (or there is none)."""
    open_ = [i for i in incidents if i.state in OPEN_STATES]
    missing = now - data_until if data_until is not None else float("inf")
    if missing <= resolve_s + margin_s:
        return Plan(tuple(open_), ())
    note = (
        f"resolved at restart: no data for {human(missing)}, longer than the resolve window "
        f"({human(resolve_s)}) and {human(margin_s)}; a regression still running opens a new one"
        if data_until is not None
        else "resolved at restart: no data recorded since it opened"
    )
    return Plan((), tuple(_closed(i, now, note) for i in open_))


def _closed(incident: Incident, at: float, note: str) -> Incident:
    event = IncidentEvent(at, IncidentState.RESOLVED, note)
    return replace(
        incident,
        state=IncidentState.RESOLVED,
        resolved_at=at,
        timeline=(*incident.timeline, event),
    )


def outside_incidents(
    history: Sequence[IntervalSummary], incidents: Sequence[Incident], max_excluded: int
) -> tuple[list[IntervalSummary], int]:
    """``history`` without the complete intervals of each incident, as the live Detector kept
    them out: from the interval that opened it until it resolved (an open one: to the end), at
    most ``max_excluded`` in a row. Returns the kept intervals and how many of the latest run of
    left-out ones reach the end of ``history`` (an incident still open)."""
    spans = _merged(
        (i.opened_at, i.resolved_at if i.resolved_at is not None else float("inf"))
        for i in incidents
    )
    kept: list[IntervalSummary] = []
    excluded: dict[int, int] = {}  # span -> intervals left out of it
    for s in sorted(history, key=lambda s: s.start):
        span = next((n for n, (a, b) in enumerate(spans) if a <= s.end < b), None)
        judged = s.complete and s.seconds > 0
        if judged and span is not None and excluded.get(span, 0) < max_excluded:
            excluded[span] = excluded.get(span, 0) + 1
            continue
        kept.append(s)
    still_open = len(spans) - 1 if spans and spans[-1][1] == float("inf") else None
    return kept, excluded.get(still_open, 0) if still_open is not None else 0


def _merged(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
