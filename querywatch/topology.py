"""Replication sampling for one watched server: once per interval, on the watcher's connection.

The watcher calls :meth:`TopologyMonitor.on_interval` after each stored interval and
:meth:`TopologyMonitor.on_failure` when the server cannot be read. Each call reads the server's
state (querywatch.source.replication), compares it with its last sample (querywatch.replication:
promotion, new timeline, unreachable, another server behind the DSN), judges the lag of each
replica it lists (the primary's view) and its own lag when it is a replica (the replica's view:
received and not replayed, replay paused), stores it all (querywatch.store.replication) and sends
the alerts through the dispatcher.

Pages are topology incidents kept in the store (``Store.open_topology_incident``): a restarted
watcher goes on with the incident it had open (no second page, and its resolve notice later), and
one event seen under several names pages once. An incident's key names what it is about whoever
sees it (the cluster's system identifier and the replica's application_name, the cluster of a
failover, the server gone), so the primary's view and the replica's view of one lag, two entries
reaching one server (a name and a multi-host DSN), or two watchers, open it once.

- a failover (a promotion, a DSN reaching another server): "replica db-2 promoted at 10:42:05
  (timeline 1 -> 2); db-1 unreachable since 10:41:58"; it resolves once the new topology held for
  ``settle`` samples in a row: the new primary takes writes and every other server of its cluster
  is gone or follows as a replica (a second primary keeps it open);
- a primary gone: resolved when the same server is reachable again;
- a replica lagging: resolved by the view that opened it once the lag is back under its
  threshold (or the replica no longer streams).

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
    TopologyIncident,
)
from .source import replication as source
from .source.postgres import PostgresSource
from .store.protocol import StoreProtocol

log = logging.getLogger("querywatch.topology")

STATUS = "replication:"  # status key prefix: a server's role, replicas and findings
Status = Literal["firing", "resolved"]
PAGED = frozenset({rp.PROMOTED, rp.IDENTITY, rp.MOVED})  # events that page as a failover
DEFER_SAMPLES = 3  # samples an alias's failover waits for the server's own watcher, at most
STALE_SAMPLES = 5  # a view that made no sample for this many intervals hands its lag page over


@dataclass(frozen=True)
class Page:
    """A notification to send once the sample is judged."""

    status: Status
    incident: TopologyIncident
    event: TopologyEvent
    summary: str


@dataclass
class TopologyMonitor:
    """Samples one server's replication state each interval and pages its failovers and lag."""

    store: StoreProtocol
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
        self._owners: dict[str, int] = {}  # replica name -> the watched server it is
        self._lagging: dict[str, TopologyIncident] = {}  # lag pages this view opened
        self._joined: dict[str, TopologyIncident] = {}  # lag pages another view opened
        self._down: TopologyIncident | None = None  # the page of this server unreachable
        self._deferred: list[tuple[TopologyEvent, NodeState, int]] = []  # an alias's failovers
        self._stable = 0  # samples in a row the new topology of an open failover held
        self._pages: list[Page] = []
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
        try:
            node, replicas, slots = self._read(self.clock())
        except SourceError as exc:
            log.warning("replication state of %s not read: %s", self.server_name, exc)
            return []
        return self.judge(node, replicas, slots)

    def judge(
        self,
        node: NodeState,
        replicas: list[ReplicaState],
        slots: list[SlotState] | None = None,
    ) -> list[TopologyEvent]:
        """Judge, store and page one sample of the server (``sample`` reads it); returns the
        events found (none when the store failed)."""
        now = node.at
        self._pages = []
        try:
            self._load(now)
            events = self._events(node)
            replicas = self._named(replicas, node)
            events += self._judge(replicas, node, now)
            self._incidents(events, node)
            self.store.record_replication(self.server_id, node, replicas, slots, events)
            self._settle(node)
        except StoreError as exc:
            log.warning("replication state of %s not stored: %s", self.server_name, exc)
            self._flush()  # the incidents opened or resolved before the failure are paged
            return []
        self._last = node
        self._known = node if node.reachable else self._known
        self._note(node, replicas, slots)
        self._flush()
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
        """What a previous run stored: its last samples (a promotion while querywatch was down
        is seen) and the pages it had open (continued, not sent again)."""
        if self._loaded:
            return
        self._last = self.store.node_state(self.server_id, now)
        self._known = self.store.node_state(self.server_id, now, reachable=True)
        down = rp.down_key(self._known, self.server_id) if self._known is not None else None
        for incident in self.store.topology_incidents():
            if incident.kind == rp.LAG_PAGE and incident.observer == self.server_id:
                self._lagging[incident.subject] = incident
            elif incident.kind == rp.DOWN_PAGE and incident.key == down:
                self._down = incident
        self._loaded = True

    def _events(self, node: NodeState) -> list[TopologyEvent]:
        events = rp.changes(self._last, node, self._known)
        return events + rp.conflicts(self._known, node) if node.reachable else events

    # -- who is who ---------------------------------------------------------------------------------
    def _watched(self) -> list[tuple[int, str, NodeState]]:
        """Every other watched server with its last reachable sample."""
        found = []
        for server in self.store.servers():
            if server.id == self.server_id:
                continue
            known = self.store.node_state(server.id, reachable=True)
            if known is not None:
                found.append((server.id, server.name, known))
        return found

    def _owner(self, node: NodeState, *, live: bool = False) -> int:
        """The server ``node`` is, as the store knows it: the lowest id among the watched
        entries that reach it (this one, a multi-host DSN, a second name); with ``live``, among
        those whose watcher still samples them."""
        ident = rp.identity(node)
        if ident is None:
            return self.server_id
        same = [sid for sid, _, known in self._watched() if rp.identity(known) == ident]
        same = [sid for sid in same if not live or self._live(sid, node.at)]
        return min([self.server_id, *same])

    def _name_of(self, server_id: int) -> str:
        if server_id == self.server_id:
            return self.server_name
        return next((s.name for s in self.store.servers() if s.id == server_id), self.server_name)

    # -- replicas -------------------------------------------------------------------------------------
    def _named(self, replicas: list[ReplicaState], node: NodeState) -> list[ReplicaState]:
        """Each replica named after the watched server it is, when one matches (by name or by
        the application_name that server's replica side reported, in the same cluster)."""
        if not replicas:
            return replicas
        names: dict[str, tuple[str, int]] = {}
        for sid, name, known in sorted(self._watched(), key=lambda w: -w[0]):  # lowest id wins
            names.setdefault(name, (name, sid))
            ours, theirs = node.system_identifier, known.system_identifier
            same = ours is None or theirs is None or ours == theirs
            if known.application_name and known.role == "replica" and same:
                names[known.application_name] = (name, sid)
        out = []
        for r in replicas:
            watched, owner = names.get(r.application_name, ("", 0))
            if owner:
                self._owners[watched] = owner
            out.append(replace(r, name=watched or r.name, watched=watched))
        return out

    def _judge(
        self, replicas: Sequence[ReplicaState], node: NodeState, now: float
    ) -> list[TopologyEvent]:
        """The lag of each replica listed, and this server's own when it is a replica."""
        events = []
        views = [(r, False) for r in replicas]
        own = rp.own_lag(node)
        views += [(own, True)] if own is not None else []
        for replica, mine in views:
            history = self._history_of(replica.name, now, mine)
            verdict = rp.judge_lag(replica, list(history), self.settings)
            if verdict is None:
                continue
            self._high[replica.name] = self._high.get(replica.name, 0) + 1 if verdict.high else 0
            if not verdict.high:
                history.append(replica)
            events += self._lag_events(replica, verdict, node, mine)
        # a lagging replica gone from the view (or this server gone): resolved, said
        seen = {r.name for r, _ in views}
        for name in [n for n in self._joined if n not in seen]:
            del self._joined[name]
        for name in [n for n in self._lagging if n not in seen]:
            text = f"replica {name} no longer streams from {self.server_name}"
            if name == self.server_name:
                text = f"{name} is no longer a replica streaming" if node.reachable else text
            event = TopologyEvent(self.server_name, now, rp.LAG_BACK, text)
            if self._resolve(self._lagging.pop(name), event, text):
                events.append(event)
        return events

    def _history_of(self, name: str, now: float, mine: bool) -> deque[ReplicaState]:
        found = self._history.get(name)
        if found is None:
            start = now - self.settings.history * 60.0
            if mine:  # the replica's own view: its node states
                nodes = self.store.node_states(self.server_id, start, now)
                stored = [r for r in map(rp.own_lag, nodes) if r is not None]
            else:
                stored = self.store.replica_lag(self.server_id, start, now, name)
            found = self._history[name] = deque(stored, maxlen=self.settings.history)
        return found

    def _lag_events(
        self, replica: ReplicaState, verdict: rp.LagVerdict, node: NodeState, mine: bool
    ) -> list[TopologyEvent]:
        """A lag event and its page when the replica starts lagging (unless another view or
        name of it has paged already), and when the lag this view paged is over."""
        name, at = replica.name, replica.at
        joined = self._joined.pop(name, None) if not verdict.high else None
        if joined is not None and not self._live(joined.observer, at):
            self._lagging[name] = joined  # its view is no longer sampled: this one resolves
        if name in self._lagging and verdict.lag < verdict.threshold:
            text = f"replica {name} caught up: {rp.lag_text(verdict)}"
            event = TopologyEvent(self.server_name, at, rp.LAG_BACK, text)
            return [event] if self._resolve(self._lagging.pop(name), event, text) else []
        busy = name in self._lagging or name in self._joined
        if busy or self._high[name] < self.settings.hold:
            return []
        owner = self._owner(node) if mine else self._owners.get(name) or self._owner(node)
        where = "" if mine else f" on {self.server_name}"
        event = TopologyEvent(self.server_name, at, rp.LAG, rp.lag_text(verdict))
        candidate = TopologyIncident(
            server_id=owner,
            key=rp.lag_key(node, replica.application_name if replica.watched else name, owner),
            id=f"lag-{self.server_name}-{name}-{int(at)}",
            kind=rp.LAG_PAGE,
            subject=name,
            observer=self.server_id,
            opened_at=at,
            summary=f"{event.detail}{where}",
        )
        incident = self.store.open_topology_incident(candidate)
        if incident.id != candidate.id:
            log.info("%s: lag of %s paged already (%s)", self.server_name, name, incident.id)
            self._joined[name] = incident
            return []
        self._lagging[name] = incident
        self._pages.append(Page("firing", incident, event, incident.summary))
        return [event]

    def _live(self, server_id: int, now: float) -> bool:
        """Whether the server's watcher still samples it: a sample within ``STALE_SAMPLES`` of
        this server's intervals (a watcher stopped for good, or an entry removed, is not)."""
        last = self.store.node_state(server_id, now)
        step = now - self._last.at if self._last is not None else 0.0
        return last is not None and (step <= 0 or now - last.at <= STALE_SAMPLES * step)

    def _resolve(self, incident: TopologyIncident, event: TopologyEvent, summary: str) -> bool:
        """Close the incident in the store and page its resolve notice (once, whoever closes)."""
        if not self.store.resolve_topology_incident(incident.server_id, incident.id, event.at):
            return False
        self._pages.append(Page("resolved", incident, event, summary))
        return True

    # -- failover and a primary gone --------------------------------------------------------------------
    def _incidents(self, events: Sequence[TopologyEvent], node: NodeState) -> None:
        deferred, self._deferred = self._deferred, []
        for event, seen, waited in deferred:
            self._failover(event, seen, waited=waited + 1)
        moved = any(e.kind in (rp.MOVED, rp.IDENTITY) for e in events)
        for event in events:
            log.warning("%s: %s (%s)", event.server, event.detail, event.kind)
            if event.kind in PAGED and not (moved and event.kind == rp.PROMOTED):
                self._failover(event, node)
            elif event.kind == rp.UNREACHABLE:
                self._gone(event)
            elif event.kind == rp.REACHABLE and self._down is not None:
                if not moved:  # the same server back (a DSN now reaching another says nothing)
                    summary = f"{self.server_name} {event.detail} at {clock(event.at)}"
                    self._resolve(self._down, event, summary)
                self._down = None

    def _failover(self, event: TopologyEvent, node: NodeState, waited: int = 0) -> None:
        """Open the cluster's failover page. A DSN that now reaches a server watched under
        another name waits until that server's watcher has sampled it since (``DEFER_SAMPLES``
        of its own samples at most), so that server's own page ("replica db-2 promoted") goes
        first and this one joins it."""
        owner = self._owner(node)
        if owner != self.server_id and waited < DEFER_SAMPLES:
            last = self.store.node_state(owner)
            if last is None or last.at < event.at:
                self._deferred.append((event, node, waited))
                return
        summary = rp.failover_summary(event, node.role, self._peers(node))
        candidate = TopologyIncident(
            server_id=owner,
            key=rp.failover_key(node, owner),
            id=f"failover-{self.server_name}-{int(event.at)}",
            kind=rp.FAILOVER_PAGE,
            subject=self._name_of(owner),
            observer=owner,
            opened_at=event.at,
            summary=summary,
        )
        incident = self.store.open_topology_incident(candidate)
        if incident.id != candidate.id:
            log.info("%s: failover paged already (%s)", self.server_name, incident.id)
            return
        self._stable = 0
        self._pages.append(Page("firing", incident, event, summary))

    def _gone(self, event: TopologyEvent) -> None:
        known = self._known
        if known is None or known.role != "primary" or self._down is not None:
            return
        owner = self._owner(known)
        candidate = TopologyIncident(
            server_id=owner,
            key=rp.down_key(known, owner),
            id=f"down-{self.server_name}-{int(event.at)}",
            kind=rp.DOWN_PAGE,
            subject=self.server_name,
            observer=self.server_id,
            opened_at=event.at,
            summary=f"primary {self._name_of(owner)} unreachable since {clock(event.at)}",
        )
        self._down = incident = self.store.open_topology_incident(candidate)
        if incident.id == candidate.id:
            self._pages.append(Page("firing", incident, event, incident.summary))

    def _settle(self, node: NodeState) -> None:
        """Resolve the open failover of this server's cluster once the new topology held
        ``settle`` samples in a row, seen from its primary (the first of the entries that reach
        it whose watcher still samples it)."""
        open_ = [i for i in self.store.topology_incidents() if self._ours(i, node)]
        mine = bool(open_) and node.reachable and self._owner(node, live=True) == self.server_id
        peers = self._peers(node) if mine else []
        if not mine or not rp.settled(node, peers):
            self._stable = 0
            return
        self._stable += 1
        if self._stable < self.settings.settle:
            return
        summary = rp.settled_summary(node, peers, self._stable, open_[0].subject)
        event = TopologyEvent(self.server_name, node.at, rp.SETTLED, summary)
        if any([self._resolve(i, event, summary) for i in open_]):
            self.store.add_topology_events(self.server_id, [event])
        self._stable = 0

    def _ours(self, incident: TopologyIncident, node: NodeState) -> bool:
        """A failover of this server's cluster (of this server, when its cluster is unknown)."""
        if incident.kind != rp.FAILOVER_PAGE:
            return False
        if node.system_identifier is None:
            return incident.server_id == self.server_id
        return incident.key == rp.failover_key(node, incident.server_id)

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
    def _peers(self, node: NodeState) -> list[Peer]:
        """The other watched servers of this cluster (same system identifier, when known), not
        counting the entries that reach this same server (a multi-host DSN, a second name) nor
        those whose watcher no longer samples them (stopped, or the entry removed)."""
        peers = []
        ident = rp.identity(node)
        seen = {ident}  # one peer per server: the lowest id among the entries reaching it
        for sid, name, known in sorted(self._watched(), key=lambda w: w[0]):
            last = self.store.node_state(sid, node.at)
            if last is None:
                continue
            if last.reachable and known.address and known.address == node.address:
                continue
            if ident is not None and rp.identity(known) in seen:
                continue  # the same server under another name
            if not self._live(sid, node.at):
                continue  # its watcher no longer samples it: its state is not known
            ours, theirs = node.system_identifier, known.system_identifier
            if ours is not None and theirs is not None and ours != theirs:
                continue  # another cluster
            seen.add(rp.identity(known) if rp.identity(known) is not None else (sid, 0.0))
            since = None
            if not last.reachable:
                since = self.store.unreachable_since(sid, known.at, node.at)
            peers.append(Peer(name, known.role, last.reachable, since, theirs))
        return peers

    def _flush(self) -> None:
        pages, self._pages = self._pages, []
        for page in pages:
            self._send(page)

    def _send(self, page: Page) -> None:
        incident, event = page.incident, page.event
        log.warning("%s %s: %s", incident.id, page.status, page.summary)
        if self.dispatcher is None:
            return
        doc: dict[str, object] = {
            "verdict": incident.kind,
            "summary": page.summary,
            "rule": event.rule,
            "event": {"server": event.server, "kind": event.kind, "at": event.at},
            "server": self.server_name,  # as every page of a fleet (querywatch.monitor)
            "labels": dict(self.labels),
            "culprits": [],
        }
        self.dispatcher.notify(
            Notification(
                page.status,
                incident.id,
                doc,
                event.at,
                source=self.server_name,
                started_at=incident.opened_at,
            )
        )
