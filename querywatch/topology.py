"""Replication sampling for one watched server: once per interval, on the watcher's connection.

The watcher calls :meth:`TopologyMonitor.on_interval` after each stored interval and
:meth:`TopologyMonitor.on_failure` when the server cannot be read. Each call reads the server's
state (querywatch.source.replication), compares it with its last sample (querywatch.replication:
promotion, new timeline, unreachable, another server behind the DSN), judges each replica's lag
against its own history, stores it all (querywatch.store.replication) and sends the alerts through
the dispatcher: a failover ("replica db-2 promoted at 10:42:05 (timeline 1 -> 2); db-1
unreachable since 10:41:58"), a primary gone, a replica lagging (firing, then resolved).

Nothing here raises into the watcher: a failed read or write is logged and tried again next time.
Servers are told apart by their name in the store, so a promotion moves no history: each server
keeps its own intervals, node states and events.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from . import replication as rp
from .alerts import Dispatcher, Notification
from .durations import clock
from .errors import SourceError, StoreError
from .model import Interval
from .replication import (
    Finding,
    NodeState,
    Peer,
    ReplicaState,
    ReplicationSettings,
    SlotState,
    TopologyEvent,
)
from .source import replication as source
from .source.postgres import PostgresSource
from .store import Store

log = logging.getLogger("querywatch.topology")

STATUS = "replication:"  # status key prefix: a server's role, replicas and findings
Page = tuple[Literal["firing", "resolved"], str, TopologyEvent, str, float]
PAGED = frozenset({rp.PROMOTED, rp.IDENTITY, rp.MOVED})  # events that page as a failover


@dataclass
class TopologyMonitor:
    """Samples one server's replication state each interval and pages its failovers and lag."""

    store: Store
    server_id: int
    server_name: str
    source: PostgresSource
    settings: ReplicationSettings = field(default_factory=ReplicationSettings)
    labels: Mapping[str, str] = field(default_factory=dict)
    dispatcher: Dispatcher | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._last: NodeState | None = None  # the last sample
        self._known: NodeState | None = None  # the last reachable sample
        self._loaded = False
        self._history: dict[str, deque[ReplicaState]] = {}  # lag history per replica
        self._high: dict[str, int] = {}  # high samples in a row per replica
        self._lagging: dict[str, tuple[str, float]] = {}  # replica -> (incident id, since)
        self._down: tuple[str, float] | None = None  # the page of this server unreachable
        self._pages: list[Page] = []  # lag pages to send once their events are stored
        self.findings: list[Finding] = []

    # -- the watcher's hooks ------------------------------------------------------------------------
    def on_interval(self, interval_id: int, interval: Interval) -> None:
        self.sample()

    def on_failure(self, exc: SourceError) -> None:
        if not self.source.connected:  # unreachable (a timeout on a live connection is not)
            self.sample()

    # -- one sample ---------------------------------------------------------------------------------
    def sample(self) -> list[TopologyEvent]:
        """Read, judge, store and page; returns the events found (none when it failed)."""
        now = self.clock()
        try:
            node, replicas, slots = self._read(now)
            self._load(now)
            events = self._events(node)
            replicas = self._named(replicas)
            events += self._judge(replicas, now)
            self.store.record_replication(self.server_id, node, replicas, slots, events)
        except (SourceError, StoreError) as exc:
            log.warning("replication state of %s not sampled: %s", self.server_name, exc)
            self._pages = []
            return []
        self._last = node
        self._known = node if node.reachable else self._known
        self._note(node, replicas, slots)
        self._page(events, node)
        return events

    def _read(self, now: float) -> tuple[NodeState, list[ReplicaState], list[SlotState] | None]:
        if not self.source.connected:
            return NodeState(self.server_name, now, False), [], None
        node = source.read_node(self.source, self.server_name, now, None)
        node = replace(node, system_identifier=self._system_identifier(node))
        replicas = source.read_replicas(self.source, self.server_name, now)
        return node, replicas, source.read_slots(self.source, self.server_name, now)

    def _system_identifier(self, node: NodeState) -> int | None:
        """The known one while the server is the same (address and start time), else read."""
        known = self._known
        if known is not None and (known.address, known.started) == (node.address, node.started):
            return known.system_identifier
        return self.source.system_identifier()

    def _load(self, now: float) -> None:
        """The samples a previous run stored: a promotion while querywatch was down is seen."""
        if self._loaded:
            return
        self._last = self.store.node_state(self.server_id, now)
        self._known = self.store.node_state(self.server_id, now, reachable=True)
        self._loaded = True

    def _events(self, node: NodeState) -> list[TopologyEvent]:
        events = rp.changes(self._last, node, self._known)
        return events + rp.conflicts(self._known, node) if node.reachable else events

    # -- replicas -------------------------------------------------------------------------------------
    def _named(self, replicas: list[ReplicaState]) -> list[ReplicaState]:
        """Each replica named after the watched server it is, when one matches (by name or by
        the application_name that server's replica side reported)."""
        if not replicas:
            return replicas
        names: dict[str, str] = {}
        for server in self.store.servers():
            if server.id == self.server_id:
                continue
            names.setdefault(server.name, server.name)
            known = self.store.node_state(server.id, reachable=True)
            if known is not None and known.application_name:
                names[known.application_name] = server.name
        out = []
        for r in replicas:
            watched = names.get(r.application_name, "")
            out.append(replace(r, name=watched or r.name, watched=watched))
        return out

    def _judge(self, replicas: Sequence[ReplicaState], now: float) -> list[TopologyEvent]:
        events = []
        for replica in replicas:
            history = self._history_of(replica.name, now)
            verdict = rp.judge_lag(replica, list(history), self.settings)
            if verdict is None:
                continue
            self._high[replica.name] = self._high.get(replica.name, 0) + 1 if verdict.high else 0
            if not verdict.high:
                history.append(replica)
            events += self._lag_events(replica, verdict)
        # a lagging replica gone from pg_stat_replication (or its primary gone): resolved, said
        for name in [n for n in self._lagging if n not in {r.name for r in replicas}]:
            ident, since = self._lagging.pop(name)
            text = f"replica {name} no longer streams from {self.server_name}"
            event = TopologyEvent(self.server_name, now, rp.LAG_BACK, text)
            self._pages.append(("resolved", ident, event, text, since))
            events.append(event)
        return events

    def _history_of(self, name: str, now: float) -> deque[ReplicaState]:
        found = self._history.get(name)
        if found is None:
            span = self.settings.history * 60.0
            stored = self.store.replica_lag(self.server_id, now - span, now, name)
            found = self._history[name] = deque(stored, maxlen=self.settings.history)
        return found

    def _lag_events(self, replica: ReplicaState, verdict: rp.LagVerdict) -> list[TopologyEvent]:
        """A lag event (and its page, sent once stored) when the replica starts or stops
        lagging."""
        name, at = replica.name, replica.at
        if name not in self._lagging and self._high[name] >= self.settings.hold:
            self._lagging[name] = ident, since = (f"lag-{self.server_name}-{name}-{int(at)}", at)
            event = TopologyEvent(self.server_name, at, rp.LAG, rp.lag_text(verdict))
            summary = f"{event.detail} on {self.server_name}"
            self._pages.append(("firing", ident, event, summary, since))
            return [event]
        if name in self._lagging and verdict.lag < verdict.threshold:
            ident, since = self._lagging.pop(name)
            text = f"replica {name} caught up: {rp.lag_text(verdict)}"
            event = TopologyEvent(self.server_name, at, rp.LAG_BACK, text)
            self._pages.append(("resolved", ident, event, text, since))
            return [event]
        return []

    # -- findings and status --------------------------------------------------------------------------
    def _note(
        self, node: NodeState, replicas: Sequence[ReplicaState], slots: Sequence[SlotState] | None
    ) -> None:
        if not node.reachable:
            return
        found = rp.slot_findings(slots or (), self.settings)
        lonely = rp.no_replica_finding(node, replicas, self.labels)
        found += [lonely] if lonely is not None else []
        before = {(f.id, f.subject) for f in self.findings}
        for f in found:
            if (f.id, f.subject) not in before:
                log.warning("%s: %s (fix: %s)", f.id, f.message, f.fix)
        self.findings = found
        value = {
            "role": node.role,
            "timeline": node.timeline,
            "upstream": node.upstream,
            "replicas": [r.name for r in replicas],
            "findings": [f.__dict__ for f in found],
        }
        try:
            self.store.set_status(f"{STATUS}{self.server_name}", value)
        except StoreError as exc:
            log.debug("replication status not stored: %s", exc)

    # -- alerts -------------------------------------------------------------------------------------
    def _page(self, events: Sequence[TopologyEvent], node: NodeState) -> None:
        for event in events:
            log.warning("%s: %s (%s)", event.server, event.detail, event.kind)
            if event.kind in PAGED:
                summary = rp.failover_summary(event, node.role, self._peers(node))
                self._send("firing", f"failover-{self.server_name}-{int(event.at)}", event, summary)
            elif event.kind == rp.UNREACHABLE and self._known and self._known.role == "primary":
                self._down = (f"down-{self.server_name}-{int(event.at)}", event.at)
                summary = f"primary {self.server_name} unreachable since {clock(event.at)}"
                self._send("firing", self._down[0], event, summary)
            elif event.kind == rp.REACHABLE and self._down is not None:
                summary = f"{self.server_name} {event.detail} at {clock(event.at)}"
                self._send("resolved", self._down[0], event, summary, self._down[1])
                self._down = None
        pages, self._pages = self._pages, []
        for status, ident, event, summary, since in pages:
            self._send(status, ident, event, summary, since)

    def _peers(self, node: NodeState) -> list[Peer]:
        """The other watched servers of this cluster (same system identifier, when known)."""
        peers = []
        for server in self.store.servers():
            if server.id == self.server_id:
                continue
            last = self.store.node_state(server.id, node.at)
            known = self.store.node_state(server.id, node.at, reachable=True)
            if last is None or known is None:
                continue
            ours, theirs = node.system_identifier, known.system_identifier
            if ours is not None and theirs is not None and ours != theirs:
                continue  # another cluster
            if last.reachable and known.address and known.address == node.address:
                continue  # the same server under another name (e.g. a multi-host DSN)
            since = None
            if not last.reachable:
                since = self.store.unreachable_since(server.id, known.at, node.at)
            peers.append(Peer(server.name, known.role, last.reachable, since, theirs))
        return peers

    def _send(
        self,
        status: Literal["firing", "resolved"],
        ident: str,
        event: TopologyEvent,
        summary: str,
        started: float | None = None,
    ) -> None:
        log.warning("%s %s: %s", ident, status, summary)
        if self.dispatcher is None:
            return
        verdict = "failover" if event.kind in PAGED else "server_unreachable"
        doc: dict[str, object] = {
            "verdict": "replication_lag" if event.rule == rp.LAG_RULE else verdict,
            "summary": summary,
            "rule": event.rule,
            "event": {"server": event.server, "kind": event.kind, "at": event.at},
            "server": self.server_name,  # as every page of a fleet (querywatch.monitor)
            "labels": dict(self.labels),
            "culprits": [],
        }
        at = event.at
        self.dispatcher.notify(
            Notification(status, ident, doc, at, source=self.server_name, started_at=started or at)
        )
