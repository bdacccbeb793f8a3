"""Pure: anomalies over time become incidents, pending -> firing -> resolved, one per root cause.

:func:`step` is the state machine over one interval. A new anomaly opens a *pending* incident, or
a *firing* one at once when its severity is at least ``far_factor``; a pending incident fires once
its signal held for ``marginal_intervals`` consecutive intervals and is dropped silently at its
first clean interval (a signal flapping on and off at a marginal level never pages); a firing
incident resolves after ``resolve_intervals`` consecutive clean intervals, and any anomaly in
between resets that count (a flapping signal pages once). Only *fired* and *resolved* are
transitions that notify.

Root causes: anomalies about one fingerprint share its key; lock waits are keyed by the blocking
session's fingerprint (the rule names it as subject); server-wide anomalies by their subject, except
symptoms (CPU, connections) that join the incident of the cause seen with them. Statements that
regress together on one table (their onsets in the same or adjacent intervals, a relation in
common) are one cause: one incident, which lists every statement among its ``subjects``.

:class:`Detector` ties baseline, rules and incidents together for a watcher fed one interval at a
time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from querywatch.detect.baseline import Baseline, Rates, RollingBaseline, interval_rates
from querywatch.detect.prior import Prior
from querywatch.detect.rules import SYMPTOM_RULES, make_context, run_rules
from querywatch.detect.settings import DetectSettings
from querywatch.model import Anomaly, Incident, IncidentEvent, IncidentState, IntervalSummary

IncidentSettings = DetectSettings
"""Incidents read ``far_factor``, ``marginal_intervals`` and ``resolve_intervals``."""

Relations = Mapping[str, frozenset[str]]
"""Fingerprint -> the tables its statement reads or writes (querywatch.relations)."""
NO_RELATIONS: Relations = MappingProxyType({})


@dataclass(frozen=True)
class Transition:
    """A change that notifies: an incident fired or resolved at ``at``."""

    status: IncidentState
    incident: Incident
    at: float
    anomalies: tuple[Anomaly, ...] = ()


def root_cause_key(anomaly: Anomaly) -> str:
    """The incident key of an anomaly: its subject (a fingerprint, the blocker's fingerprint for
    lock waits, or a ``server:...`` name)."""
    return anomaly.subject


def incident_id(key: str, opened_at: float) -> str:
    """Deterministic short id: the same key opened at the same time gives the same id."""
    return hashlib.sha256(f"{key}@{opened_at!r}".encode()).hexdigest()[:12]


def group(
    anomalies: Sequence[Anomaly],
    incidents: Sequence[Incident],
    relations: Relations = NO_RELATIONS,
    adjacent_since: float | None = None,
) -> dict[str, list[Anomaly]]:
    """Anomalies by incident key.

    A cause joins the open incident that already lists its subject; else the incident of a cause
    that shares a relation with it and began with it: in this interval, or in an incident opened
    at or after ``adjacent_since`` (the previous interval's end); else its subject is its key.
    Symptoms join the most severe cause of this interval or, when there is none, the most
    recently fired open incident that is not itself a symptom.
    """
    causes = [a for a in anomalies if a.rule not in SYMPTOM_RULES]
    keys = _cause_keys(causes, incidents, relations, adjacent_since)
    symptom_keys = {root_cause_key(a) for a in anomalies if a.rule in SYMPTOM_RULES}
    cause = _cause_key(causes, incidents, symptom_keys, keys)
    grouped: dict[str, list[Anomaly]] = {}
    for a in anomalies:
        if a.rule in SYMPTOM_RULES:
            key = cause if cause is not None else root_cause_key(a)
        else:
            key = keys[root_cause_key(a)]
        grouped.setdefault(key, []).append(a)
    return grouped


def _cause_keys(
    causes: Sequence[Anomaly],
    incidents: Sequence[Incident],
    relations: Relations,
    adjacent_since: float | None,
) -> dict[str, str]:
    """Each cause's subject -> the key of its incident; the most severe new cause names a group."""
    live = [i for i in incidents if i.state is not IncidentState.RESOLVED]
    keys = {subject: i.key for i in live for subject in _members(i)}
    tables: dict[str, set[str]] = {  # incidents new causes may join -> the relations they touch
        i.key: {t for s in _members(i) for t in relations.get(s, ())}
        for i in live
        if adjacent_since is not None and i.opened_at >= adjacent_since
    }
    for a in sorted(causes, key=lambda a: (-a.severity, root_cause_key(a))):
        subject = root_cause_key(a)
        if subject in keys:
            continue
        mine = relations.get(subject, frozenset())
        key = next((k for k, touched in tables.items() if mine & touched), subject)
        keys[subject] = key
        if mine:
            tables.setdefault(key, set()).update(mine)
    return keys


def _members(incident: Incident) -> tuple[str, ...]:
    return incident.subjects or (incident.key,)


def _cause_key(
    causes: Sequence[Anomaly],
    incidents: Sequence[Incident],
    symptom_keys: set[str],
    keys: Mapping[str, str],
) -> str | None:
    if causes:
        return keys[root_cause_key(max(causes, key=lambda a: a.severity))]
    firing = [i for i in incidents if i.state is IncidentState.FIRING and i.key not in symptom_keys]
    return max(firing, key=lambda i: i.fired_at or 0.0).key if firing else None


def step(
    incidents: Sequence[Incident],
    anomalies: Sequence[Anomaly],
    at: float,
    settings: DetectSettings,
    relations: Relations = NO_RELATIONS,
    adjacent_since: float | None = None,
) -> tuple[list[Incident], list[Transition]]:
    """Advance open incidents by one interval ending at ``at``.

    Returns the incidents after the interval (those resolved now included once, in state
    RESOLVED; the caller drops them next time) and the transitions that should notify.
    ``relations`` and ``adjacent_since`` group statements of one table with one onset
    (:func:`group`).
    """
    grouped = group(anomalies, incidents, relations, adjacent_since)
    out: list[Incident] = []
    transitions: list[Transition] = []
    seen: set[str] = set()
    for incident in incidents:
        if incident.state is IncidentState.RESOLVED or incident.key in seen:
            continue
        seen.add(incident.key)
        found = grouped.get(incident.key, [])
        advanced, transition = _advance(incident, found, at, settings)
        if advanced is not None:
            out.append(advanced)
        if transition is not None:
            transitions.append(transition)
    for key, found in grouped.items():
        if key not in seen:
            opened, transition = _open(key, found, at, settings)
            out.append(opened)
            if transition is not None:
                transitions.append(transition)
    return out, transitions


def _open(
    key: str, found: Sequence[Anomaly], at: float, s: DetectSettings
) -> tuple[Incident, Transition | None]:
    pending = Incident(
        id=incident_id(key, at),
        key=key,
        state=IncidentState.PENDING,
        opened_at=at,
        fired_at=None,
        resolved_at=None,
        rules=_rules((), found),
        timeline=(IncidentEvent(at, IncidentState.PENDING, _detail(found)),),
        marginal_intervals=1,
        subjects=_subjects((key,), found),
    )
    if _severity(found) >= s.far_factor or s.marginal_intervals <= 1:
        return _fire(pending, found, at)
    return pending, None


def _advance(
    incident: Incident, found: Sequence[Anomaly], at: float, s: DetectSettings
) -> tuple[Incident | None, Transition | None]:
    if incident.state is IncidentState.PENDING:
        if not found:
            return None, None
        held = replace(
            incident,
            rules=_rules(incident.rules, found),
            marginal_intervals=incident.marginal_intervals + 1,
            subjects=_subjects(_members(incident), found),
        )
        if _severity(found) >= s.far_factor or held.marginal_intervals >= s.marginal_intervals:
            return _fire(held, found, at)
        return held, None
    if found:
        return _still_firing(incident, found, at), None
    clean = replace(incident, clean_intervals=incident.clean_intervals + 1)
    if clean.clean_intervals < s.resolve_intervals:
        return clean, None
    detail = f"resolved after {clean.clean_intervals} clean intervals"
    resolved = replace(
        clean,
        state=IncidentState.RESOLVED,
        resolved_at=at,
        timeline=(*clean.timeline, IncidentEvent(at, IncidentState.RESOLVED, detail)),
    )
    return resolved, Transition(IncidentState.RESOLVED, resolved, at)


def _still_firing(incident: Incident, found: Sequence[Anomaly], at: float) -> Incident:
    rules = _rules(incident.rules, found)
    subjects = _subjects(_members(incident), found)
    joined = set(subjects) - set(_members(incident))
    timeline = incident.timeline
    added = [a for a in found if a.rule not in incident.rules or root_cause_key(a) in joined]
    if added:
        timeline = (*timeline, IncidentEvent(at, IncidentState.FIRING, _detail(added)))
    return replace(incident, rules=rules, subjects=subjects, timeline=timeline, clean_intervals=0)


def _fire(incident: Incident, found: Sequence[Anomaly], at: float) -> tuple[Incident, Transition]:
    fired = replace(
        incident,
        state=IncidentState.FIRING,
        fired_at=at,
        clean_intervals=0,
        timeline=(*incident.timeline, IncidentEvent(at, IncidentState.FIRING, _detail(found))),
    )
    return fired, Transition(IncidentState.FIRING, fired, at, tuple(found))


def _severity(found: Sequence[Anomaly]) -> float:
    return max((a.severity for a in found), default=0.0)


def _rules(known: tuple[str, ...], found: Iterable[Anomaly]) -> tuple[str, ...]:
    rules = list(known)
    for a in found:
        if a.rule not in rules:
            rules.append(a.rule)
    return tuple(rules)


def _subjects(known: tuple[str, ...], found: Iterable[Anomaly]) -> tuple[str, ...]:
    subjects = list(known)
    for a in found:
        if a.rule not in SYMPTOM_RULES and root_cause_key(a) not in subjects:
            subjects.append(root_cause_key(a))
    return tuple(subjects)


def _detail(found: Sequence[Anomaly]) -> str:
    ordered = sorted(found, key=lambda a: -a.severity)
    return "; ".join(f"{a.rule} (severity {a.severity:.1f}): {a.evidence}" for a in ordered)


# -- the stateful convenience wrapper ---------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What one interval changed: its anomalies, the transitions to notify, the incidents."""

    at: float
    learning: bool
    anomalies: tuple[Anomaly, ...]
    transitions: tuple[Transition, ...]
    incidents: tuple[Incident, ...]  # after this interval; RESOLVED ones appear this once
    traffic_factor: float = 1.0
    baseline_intervals: int = 0
    baseline_kind: str = "history"  # "learning", "long_run" (a prior) or "history"


class Detector:
    """Feed intervals one by one; keeps the trailing baseline window and the open incidents.

    Nothing pages while fewer than ``learning_intervals`` complete intervals are known. Intervals
    with a gap are skipped. While an incident is open (pending or firing), intervals stay out of
    the baseline, for at most ``max_excluded_intervals`` in a row, so a long incident does not
    become the new normal at once.
    """

    def __init__(
        self,
        settings: DetectSettings = DetectSettings(),
        history: Iterable[IntervalSummary] = (),
    ) -> None:
        self.settings = settings
        self._rolling = RollingBaseline(settings)
        self._incidents: list[Incident] = []
        self._excluded = 0
        self.prior: Prior | None = None
        for interval in history:
            if interval.complete and interval.seconds > 0:
                self._rolling.add(interval, interval_rates(interval), refresh=False)
        self._rolling.refresh_all()

    @property
    def learning(self) -> bool:
        return len(self._rolling) < self.settings.learning_intervals

    @property
    def incidents(self) -> tuple[Incident, ...]:
        """Open incidents (pending and firing)."""
        return tuple(self._incidents)

    def restore(self, incidents: Iterable[Incident], excluded: int = 0) -> tuple[Incident, ...]:
        """Take back the open incidents a previous run left (a restarted watcher): they advance
        and resolve as if the run had not stopped, and a firing one does not fire again.

        ``excluded`` is how many intervals since the earliest onset the caller kept out of the
        history it seeded the baseline with (they count toward ``max_excluded_intervals``).
        Resolved incidents and a second incident of one key are ignored; returns those taken.
        """
        taken: list[Incident] = []
        keys = {i.key for i in self._incidents}
        for incident in incidents:
            if incident.state is IncidentState.RESOLVED or incident.key in keys:
                continue
            keys.add(incident.key)
            taken.append(replace(incident, subjects=_members(incident)))
        self._incidents.extend(taken)
        if taken:
            most = self.settings.max_excluded_intervals
            self._excluded = min(max(self._excluded, excluded), most)
        return tuple(taken)

    def use_prior(self, long_run: IntervalSummary, min_history_s: float) -> None:
        """Judge against this long-run baseline while the own history is still learning."""
        self.prior = Prior(long_run, self.settings, min_history_s=min_history_s)

    def _baseline(self, observed: Mapping[str, Rates]) -> tuple[Baseline, Prior | None]:
        baseline = self._rolling.baseline()
        if not baseline.learning or self.prior is None:
            return baseline, None
        prior = self.prior.baseline(observed)
        return (baseline, None) if prior is None else (prior, self.prior)

    def observe(
        self, interval: IntervalSummary, relations: Relations = NO_RELATIONS
    ) -> Observation:
        """Judge one interval; ``relations`` (fingerprint -> tables) lets statements that
        regress together on one table share one incident."""
        if not interval.complete or interval.seconds <= 0:
            return self._observation(interval.end, self.learning, (), (), tuple(self._incidents))
        observed = interval_rates(interval)
        baseline, prior = self._baseline(observed)
        anomalies: list[Anomaly] = []
        k = 1.0
        if not baseline.learning:
            ctx = make_context(interval, baseline, self.settings, observed)
            anomalies, k = run_rules(ctx), ctx.traffic_factor
            if prior is not None:
                anomalies = [a for a in anomalies if prior.judges(a)]
        adjacent = interval.start - interval.seconds / 2  # opened at the previous interval's end
        incidents, transitions = step(
            self._incidents, anomalies, interval.end, self.settings, relations, adjacent
        )
        self._incidents = [i for i in incidents if i.state is not IncidentState.RESOLVED]
        self._accept(interval, observed)
        # ``learning`` is about the own history: a prior judges meanwhile, it does not end learning
        learning = prior is not None or baseline.learning
        kind = "long_run" if prior is not None else "learning" if learning else "history"
        return self._observation(
            interval.end, learning, anomalies, transitions, tuple(incidents), k, kind
        )

    def _accept(self, interval: IntervalSummary, observed: Mapping[str, Rates]) -> None:
        if self._incidents and self._excluded < self.settings.max_excluded_intervals:
            self._excluded += 1
            return
        if not self._incidents:
            self._excluded = 0
        self._rolling.add(interval, observed)

    def _observation(
        self,
        at: float,
        learning: bool,
        anomalies: Sequence[Anomaly],
        transitions: Sequence[Transition],
        incidents: tuple[Incident, ...],
        k: float = 1.0,
        kind: str = "history",
    ) -> Observation:
        return Observation(
            at=at,
            learning=learning,
            anomalies=tuple(anomalies),
            transitions=tuple(transitions),
            incidents=incidents,
            traffic_factor=k,
            baseline_intervals=len(self._rolling),
            baseline_kind=kind,
        )
