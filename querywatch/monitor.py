"""Detection, diagnosis and alerting on top of the collection loop (the `watch` command).

After each stored interval the monitor feeds the interval to the Detector; when an incident fires or
resolves it diagnoses the incident window against the history before it, stores the incident with
its diagnosis and timeline, and hands the notification to the alert dispatcher, which sends apart
from collection. It also writes its own and the channels' status into the store for `status`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import anywindow, collector, headroom, restore
from .alerts import Dispatcher, Notification
from .alerts.outbox import from_json as outbox_json
from .audit.run import AuditScheduler
from .capacity import CapacitySettings
from .detect import Detector, Observation, Transition
from .diagnose import HISTORY, LONG_RUN, DiagnoseSettings
from .durations import clock
from .errors import SourceError
from .longrun import LongRun, long_run, min_age
from .model import Diagnosis, Incident, IncidentState, Interval, IntervalSummary
from .relations import StatementRelations
from .report import diagnosis_to_json
from .source.capabilities import Capabilities, with_note
from .source.identify import identify
from .source.kcache import with_cpu_evidence
from .source.postgres import PostgresSource
from .status import SERVER_INFO
from .store.protocol import StoreProtocol

log = logging.getLogger("querywatch.monitor")

BASELINE_S = 1800.0  # history before an incident that diagnosis compares it with
OPEN = restore.OPEN_STATES
VISIBILITY = "visibility:"  # status key prefix: what the monitoring role can see, per server


@dataclass
class Monitor:
    """Turns stored intervals into incidents, diagnoses and notifications for one server."""

    store: StoreProtocol
    server_id: int
    server_name: str
    detector: Detector
    dispatcher: Dispatcher | None = None
    diagnose_settings: DiagnoseSettings = field(default_factory=DiagnoseSettings)
    baseline_s: float = BASELINE_S
    on_transition: Callable[[Transition, Mapping[str, Any]], None] | None = None
    audits: AuditScheduler | None = None  # audits each deploy once its after-window has passed
    last: Observation | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # the server's (env, team...)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)  # [capacity]

    def __post_init__(self) -> None:
        self._diagnoses: dict[str, dict[str, Any]] = {}
        self._interval_hint = 10.0  # updated from the intervals seen
        self._learning_reason = ""  # why the detector learns instead of using the long run
        # the tables each statement touches, parsed from stored texts when an anomaly names it
        self._relations = StatementRelations(self._text_of)
        self._subjects: dict[str, tuple[str, ...]] = {}  # open incident -> its statements
        self._revisions: dict[str, int] = {}  # open incident -> updates of its page sent
        self._visibility_note: str | None = None  # the role sees only its own statements

    def warm_up(self, now: float, span_s: float) -> int:
        """Seed the baseline with recent stored history so a restarted watcher need not learn
        again. History only feeds the baseline: it opens no incident (nothing is paged for it).
        Long catch-ups (a collector's downtime averaged) and incidents' intervals stay out of
        it; the incidents a previous run left open are restored, or closed when the data
        stopped too long ago (querywatch.restore)."""
        history = self.store.summaries(self.server_id, now - span_s, now)
        typical = collector.typical_seconds(history)
        self._interval_hint = typical or self._interval_hint
        history = [s for s in history if collector.baseline_worthy(s, typical)]
        settings = self.detector.settings
        found = self._open_incidents(now)
        incidents = [s.incident for s in self.store.incidents(self.server_id)]
        done = [i for i in incidents if i.state not in OPEN]  # their spans were kept out too
        history, excluded = restore.outside_incidents(
            history, [*done, *found.restore, *found.close], settings.max_excluded_intervals
        )
        self.detector = Detector(settings, history)
        self._restore(found, excluded)
        return len(history)

    def _open_incidents(self, now: float) -> restore.Plan:
        """The open incidents a previous run left, to restore or (data gone too long) close."""
        stored = [s for s in self.store.incidents(self.server_id) if s.incident.state in OPEN]
        docs = {s.incident.id: s.diagnosis for s in stored}
        incidents = [
            replace(s.incident, subjects=restore.subjects(s.incident, docs[s.incident.id]))
            for s in stored
        ]
        self._diagnoses.update({i: d for i, d in docs.items() if d is not None})
        resolve_s = self.detector.settings.resolve_intervals * self._interval_hint
        last = self.store.last_interval_end(self.server_id)
        return restore.plan(incidents, now, last, resolve_s)

    def _restore(self, found: restore.Plan, excluded: int) -> None:
        for incident in found.close:
            log.warning("incident %s: %s", incident.id, incident.timeline[-1].detail)
            at = incident.resolved_at or 0.0
            self._handle(Transition(IncidentState.RESOLVED, incident, at), self._interval_hint)
        taken = self.detector.restore(found.restore, excluded)
        self._subjects.update({i.id: i.subjects for i in taken})
        self._revisions.update({i.id: self._sent_revisions(i.id) for i in taken})
        for i in taken:
            log.info(
                "incident %s (%s since %s) restored: it resolves once clean, without a new page",
                i.id,
                i.state.value,
                clock(i.fired_at or i.opened_at),
            )

    def _sent_revisions(self, incident: str) -> int:
        """The last update of the incident's page a previous run wrote to the outbox: the next
        one goes on from it (its own idempotency key, not taken for a repeat)."""
        if self.dispatcher is None:
            return 0
        probe = Notification("firing", incident, {}, 0.0, self.server_name)
        found = [0]
        for channel in {e.channel for e in self.dispatcher.entries(probe)}:
            for row in self.store.outbox_rows(channel):
                if row.entry.incident == incident and row.entry.status == "firing":
                    found.append(outbox_json(row.entry.notification).revision)
        return max(found)

    def use_long_run(self, source: PostgresSource, interval_s: float) -> LongRun | None:
        """Read the long-run baseline pg_stat_statements holds, keep it in the store, and judge
        against it while the store's own history is too short (unless it is too young)."""
        try:
            snapshot = source.snapshot()
            found = identify(source, snapshot.statements)
        except SourceError as exc:  # not fatal: the watcher learns as usual
            log.warning("could not read the long-run baseline, learning instead: %s", exc)
            return None
        age = min_age(interval_s, self.detector.settings.long_run_min_age)
        lr = long_run(snapshot, found.fingerprints, own=frozenset(found.own), min_age_s=age)
        self.store.save_long_run(self.server_id, lr)
        wait = self.detector.settings.learning_intervals
        if not lr.trusted:
            self._learning_reason = f"{lr.reason}: learning for {wait} intervals"
            log.info("%s", self._learning_reason)
        elif self.detector.learning:
            self.detector.use_prior(lr.summary(), min_history_s=max(10.0, 3 * interval_s))
            log.info("until %d intervals are stored, comparing with %s", wait, lr.note())
        return lr

    def on_interval(self, interval_id: int, interval: Interval) -> None:
        summaries = self.store.summaries(self.server_id, interval.start, interval.end)
        summary = next((s for s in summaries if s.start == interval.start), None)
        if summary is None:
            return
        if collector.baseline_worthy(summary, self._interval_hint):
            self._observe(summary)
        else:  # a long catch-up (the watcher was down): an unknown mix of before and after, so
            # it is neither judged nor learned; the next interval is judged as usual
            log.info("catch-up of %.0f s after a restart: not judged", summary.seconds)
        if self.audits is not None:
            self.audits.on_interval(interval.end)

    def _observe(self, summary: IntervalSummary) -> None:
        if summary.complete and not summary.catch_up:  # a typical interval
            self._interval_hint = summary.seconds or self._interval_hint
        observation = self.detector.observe(summary, self._relations)
        self.last = observation
        self._prior_given_up()
        for transition in observation.transitions:
            self._handle(transition, summary.seconds)
        self._update_joined(observation, summary.seconds)
        self._save_status(observation)

    def _handle(self, transition: Transition, interval_s: float) -> None:
        incident = transition.incident
        if transition.status is IncidentState.FIRING:
            found = self.diagnose_incident(incident, interval_s, transition.at)
            doc = self._named_doc(diagnosis_to_json(found))
            self._diagnoses[incident.id] = doc
        else:
            kept = self._diagnoses.pop(incident.id, None)
            doc = kept if kept is not None else self._stored_diagnosis(incident, interval_s)
            doc = self._named_doc(doc)
        status: Literal["firing", "resolved"] = (
            "firing" if transition.status is IncidentState.FIRING else "resolved"
        )
        note = Notification(
            status=status,
            incident=incident.id,
            diagnosis=doc,
            at=transition.at,
            source=self.server_name,
            started_at=incident.fired_at,
        )
        # the alert outbox rows go in the incident's transaction: none is lost to a crash
        outbox = self.dispatcher.entries(note) if self.dispatcher is not None else []
        self.store.save_incident(self.server_id, incident, doc, notify=outbox)
        log.warning("incident %s %s: %s", incident.id, status, doc.get("summary", ""))
        if self.dispatcher is not None:
            self.dispatcher.notify(note)
        if self.on_transition is not None:
            self.on_transition(transition, doc)

    def _update_joined(self, observation: Observation, interval_s: float) -> None:
        """A statement that regressed on the same table an interval after its incident fired
        joins it (querywatch.detect.incidents): the incident is diagnosed again and, when the
        diagnosis now names it, stored and sent again under the same id, an update of the page
        (PagerDuty's dedup key and Alertmanager's labels keep one alert)."""
        fired = {t.incident.id for t in observation.transitions}
        before, self._subjects = self._subjects, {i.id: i.subjects for i in observation.incidents}
        self._revisions = {i: n for i, n in self._revisions.items() if i in self._subjects}
        for incident in observation.incidents:
            known, paged = before.get(incident.id), self._diagnoses.get(incident.id)
            if known is None or paged is None or incident.id in fired:
                continue
            joined = set(incident.subjects) - set(known)
            if not joined or incident.state is not IncidentState.FIRING:
                continue
            found = self.diagnose_incident(incident, interval_s, observation.at)
            doc = self._named_doc(diagnosis_to_json(found))
            if joined & (_named(doc) - _named(paged)):
                self._diagnoses[incident.id] = doc
                self._send_update(incident, doc, observation.at)

    def _send_update(self, incident: Incident, doc: dict[str, Any], at: float) -> None:
        self._revisions[incident.id] = self._revisions.get(incident.id, 0) + 1
        note = Notification(
            status="firing",
            incident=incident.id,
            diagnosis=doc,
            at=at,
            source=self.server_name,
            started_at=incident.fired_at,
            revision=self._revisions[incident.id],
        )
        outbox = self.dispatcher.entries(note) if self.dispatcher is not None else []
        self.store.save_incident(self.server_id, incident, doc, notify=outbox)
        log.warning("incident %s updated: %s", incident.id, doc.get("summary", ""))
        if self.dispatcher is not None:
            self.dispatcher.notify(note)

    def _named_doc(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """An incident's diagnosis naming its server and the server's labels, so that every
        alert (and the stored incident) says which server of a fleet it is about."""
        return {**doc, "server": self.server_name, "labels": dict(self.labels)}

    def diagnose_incident(self, incident: Incident, interval_s: float, now: float) -> Diagnosis:
        start = incident.opened_at - interval_s
        return self.diagnose_window(start, now)

    def diagnose_window(self, start: float, end: float) -> Diagnosis:
        """Diagnose [start, end): the onset inside it (an incident recorded in it, else a change
        point) against the clean history before it, the window before the onset or the long run
        (querywatch.anywindow); earlier incidents are not a normal to compare with."""
        if self.last is None:  # not watching (diagnose, the web): the interval the watch stored
            self._interval_hint = self._stored_interval() or self._interval_hint
        found = anywindow.diagnose_stored(
            self.store,
            self.server_id,
            start,
            end,
            self._diagnose_settings(),
            baseline_s=self.baseline_s,
            spans=self._incident_spans(start),
            interval_s=self._interval_hint,
            enough_intervals=self.detector.settings.learning_intervals,
        )
        found = self._with_cpu(found)
        found = self._with_capacity(found)
        return with_note(found, self._visibility())  # a role that sees only its own statements

    def note_visibility(self, caps: Capabilities) -> str:
        """Warn (log and ``status``) when the role sees only its own statements; every
        diagnosis says it too. Returns the note ("" when every statement is visible)."""
        note = caps.visibility_note()
        self.store.set_status(
            f"{VISIBILITY}{self.server_name}",
            {
                "role": caps.role,
                "all_statements": not note,
                "note": note,
                "fix": caps.visibility_fix() if note else "",
            },
        )
        self._visibility_note = note
        if note:
            log.warning(
                "%s: other roles' statements are not watched (fix: %s)", note, caps.visibility_fix()
            )
        return note

    def _visibility(self) -> str:
        """The stored note of the role's visibility (querywatch.status), read once."""
        if self._visibility_note is None:
            stored = self.store.status().get(f"{VISIBILITY}{self.server_name}", {})
            self._visibility_note = str(stored.get("note") or "")
        return self._visibility_note

    def _text_of(self, fingerprint: str) -> str | None:
        found = self.store.statements([fingerprint], server_id=self.server_id).get(fingerprint)
        return found.query if found is not None else None

    def _diagnose_settings(self) -> DiagnoseSettings:
        """The diagnosis thresholds with the server's cores, so that a CPU-saturated window
        tells contention from a regression (querywatch.contention); as set otherwise."""
        s, cores = self.diagnose_settings, self.detector.settings.cpu_cores
        if s.contention.cpu_cores is not None or not cores:
            return s
        return replace(s, contention=replace(s.contention, cpu_cores=cores))

    def _with_cpu(self, found: Diagnosis) -> Diagnosis:
        """Each culprit's share of the server's CPU time as evidence, when pg_stat_kcache
        recorded the window (querywatch.source.kcache); the diagnosis as it is otherwise."""
        window = self.store.cpu_usage(self.server_id, found.window_start, found.window_end)
        if window is None:
            return found
        baseline = self.store.cpu_usage(self.server_id, found.baseline_start, found.baseline_end)
        return with_cpu_evidence(found, window, baseline)

    def _with_capacity(self, found: Diagnosis) -> Diagnosis:
        """The top culprit's capacity against the server's cores, the headroom left and the
        replicas that could take a read-only culprit (querywatch.headroom); as it is when the
        cores are unknown."""
        cores = headroom.cores_of(self.store, self.server_name, self.detector.settings.cpu_cores)
        replicas = self._replicas(found.window_end)
        return headroom.with_capacity(
            found, self.store, self.server_id, cores, replicas, self.capacity
        )

    def _replicas(self, at: float) -> Sequence[headroom.ReplicaState]:
        """The replicas the server listed last at or before ``at`` (querywatch.replication)."""
        return self.store.replicas(self.server_id, at)

    def _prior_given_up(self) -> None:
        prior = self.detector.prior
        if prior is not None and prior.reason and not self._learning_reason:
            wait = self.detector.settings.learning_intervals
            self._learning_reason = f"{prior.reason}: learning for {wait} intervals"
            log.info("%s", self._learning_reason)

    def long_run_baseline(
        self, start: float, history: list[IntervalSummary]
    ) -> tuple[list[IntervalSummary], str, str]:
        """The stored long run, when fewer than ``learning_intervals`` of history precede
        ``start`` (a watch started during an incident), as (baseline, kind, note)."""
        known = sum(1 for s in history if s.complete)
        enough = known >= self.detector.settings.learning_intervals
        lr = None if enough else self.store.long_run(self.server_id, start)
        if lr is None or not lr.trusted or lr.seconds <= 0 or not lr.by_fingerprint:
            return history, HISTORY, ""
        return [lr.summary()], LONG_RUN, lr.note()

    def _stored_interval(self) -> float | None:
        """The collection interval the watcher stored for this server (querywatch.status), so
        that an earlier incident's span ("a few intervals before it opened") is not 3 x 10 s of
        a 1 s watch: that hid the whole clean history before it."""
        info = self.store.status().get(f"{SERVER_INFO}{self.server_name}", {})
        value = info.get("interval_s")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return None

    def _incident_spans(self, before: float) -> list[tuple[float, float]]:
        """Time spans of earlier incidents: they are not the normal to compare with."""
        spans = []
        for stored in self.store.incidents(self.server_id):
            i = stored.incident
            if i.fired_at is None or i.opened_at >= before:
                continue
            # the incident started up to a few intervals before it opened (pending, onset)
            spans.append((i.opened_at - 3 * self._interval_hint, i.resolved_at or before))
        return spans

    def _stored_diagnosis(self, incident: Incident, interval_s: float) -> dict[str, Any]:
        """The diagnosis saved when the incident fired, or a fresh one of its window."""
        for stored in self.store.incidents(self.server_id):
            if stored.incident.id == incident.id and stored.diagnosis:
                return stored.diagnosis
        end = incident.resolved_at or self.store.last_interval_end(self.server_id) or 0.0
        return diagnosis_to_json(self.diagnose_incident(incident, interval_s, end))

    def _save_status(self, observation: Observation) -> None:
        open_incidents = [i for i in observation.incidents if i.state is not IncidentState.RESOLVED]
        self.store.set_status(
            f"detector:{self.server_name}",
            {
                "learning": observation.learning,
                "baseline": observation.baseline_kind,
                "learning_reason": self._learning_reason if observation.learning else "",
                "baseline_intervals": observation.baseline_intervals,
                "traffic_factor": round(observation.traffic_factor, 3),
                "cpu_cores": self.detector.settings.cpu_cores,  # for top --capacity
                "open_incidents": [
                    {"id": i.id, "key": i.key, "state": i.state.value} for i in open_incidents
                ],
            },
        )
        if self.dispatcher is not None:
            channels = [
                {
                    "name": c.name,
                    "target": c.target,
                    "sent": c.sent,
                    "failed": c.failed,
                    "pending": c.pending,
                    "dropped": c.dropped,
                    "last_error": c.last_error,
                    "last_success_at": c.last_success_at,
                    "last_failure_at": c.last_failure_at,
                }
                for c in self.dispatcher.status()
            ]
            self.store.set_status("alerts", {"channels": channels})


def _named(doc: Mapping[str, Any]) -> set[str]:
    """The fingerprints a diagnosis document names as culprits."""
    return {str(c.get("fingerprint")) for c in doc.get("culprits") or () if isinstance(c, dict)}
