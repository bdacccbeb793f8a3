"""Pure: replication health and failover detection over records read from each server.

Each watched server is sampled once per interval (querywatch.source.replication) into a
:class:`NodeState` (its role, timeline, identity, replay position), the :class:`ReplicaState` of
every replica its ``pg_stat_replication`` lists (a primary), and its :class:`SlotState` rows.
This module judges them; it reads no database and no clock.

- ``rules/replication_lag``: a replica's replay lag is far above its own baseline (the median of
  its recent history) and above an absolute floor, for ``hold`` samples in a row; it resolves
  once the lag is back under the floor.
- ``rules/failover``: a server's role or identity changed (:func:`changes`): a replica promoted
  (``pg_is_in_recovery()`` flipped to false), a primary turned replica, a new timeline, a server
  that became unreachable or reachable again, a DSN that now reaches another system identifier
  or another address.
- ``rules/standby_conflicts``: queries on a replica cancelled by recovery conflicts
  (``pg_stat_database_conflicts`` moved).
- ``findings/replication_slot_inactive``, ``findings/replication_slot_wal``: a slot nobody
  consumes that holds WAL, a slot whose consumer is far behind.
- ``findings/primary_without_replica``: a production primary (label ``env`` = ``prod`` or
  ``production``) that no replica streams from: a single point of failure.

>>> old = NodeState("db-2", 10.0, True, in_recovery=True, timeline=1, system_identifier=7)
>>> new = NodeState("db-2", 11.0, True, in_recovery=False, timeline=2, system_identifier=7)
>>> [(e.kind, e.detail) for e in changes(old, new)]
[('promoted', 'promoted to primary (timeline 1 -> 2)')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from .durations import clock
from .errors import ConfigError
from .text import figure

LAG_RULE = "rules/replication_lag"
FAILOVER_RULE = "rules/failover"
CONFLICTS_RULE = "rules/standby_conflicts"
SLOT_INACTIVE = "findings/replication_slot_inactive"
SLOT_WAL = "findings/replication_slot_wal"
NO_REPLICA = "findings/primary_without_replica"
RULE_IDS = (LAG_RULE, FAILOVER_RULE, CONFLICTS_RULE)
FINDING_IDS = (SLOT_INACTIVE, SLOT_WAL, NO_REPLICA)
PRODUCTION = frozenset({"prod", "production"})  # values of the ``env`` label meaning production

# event kinds on a server's timeline (querywatch.store.replication keeps them)
PROMOTED = "promoted"
DEMOTED = "demoted"
NEW_TIMELINE = "new_timeline"
UNREACHABLE = "unreachable"
REACHABLE = "reachable"
IDENTITY = "identity_changed"
MOVED = "node_changed"
LAG = "replication_lag"
LAG_BACK = "replication_lag_resolved"
CONFLICTS = "standby_conflicts"
SETTLED = "failover_settled"  # the new topology held: the failover page resolves
FAILOVER_KINDS = frozenset({PROMOTED, IDENTITY, MOVED})  # the events that page as a failover
EVENT_RULES: Mapping[str, str] = {
    PROMOTED: FAILOVER_RULE,
    DEMOTED: FAILOVER_RULE,
    NEW_TIMELINE: FAILOVER_RULE,
    SETTLED: FAILOVER_RULE,
    UNREACHABLE: FAILOVER_RULE,
    REACHABLE: FAILOVER_RULE,
    IDENTITY: FAILOVER_RULE,
    MOVED: FAILOVER_RULE,
    LAG: LAG_RULE,
    LAG_BACK: LAG_RULE,
    CONFLICTS: CONFLICTS_RULE,
}
MiB = 1024.0 * 1024.0
# the verdicts of topology pages (TopologyIncident.kind)
FAILOVER_PAGE = "failover"
DOWN_PAGE = "server_unreachable"
LAG_PAGE = "replication_lag"


@dataclass(frozen=True)
class ReplicaState:
    """One replica as its primary sees it (a ``pg_stat_replication`` row) at ``at``.

    ``server`` is the primary's name in the store; ``name`` the replica's: the name of the watched
    server it matched (``watched``, else ""), otherwise its ``application_name`` (with the client
    address when two replicas share one). Lag is replay lag: seconds (``replay_lag``, None when
    the server has no figure yet) and bytes of WAL the replica has not replayed."""

    server: str
    name: str
    application_name: str
    client_addr: str
    state: str
    sync_state: str
    replay_lag_s: float | None
    replay_lag_bytes: float | None
    at: float
    watched: str = ""


@dataclass(frozen=True)
class NodeState:
    """One server as sampled at ``at``; ``reachable`` False means it could not be read (every
    other field is then None or empty). ``upstream`` is the host:port a replica streams from
    (its ``primary_conninfo``, never a password); replica-side lag is the WAL received and not
    replayed, and the time since the last replayed transaction while there is some."""

    server: str
    at: float
    reachable: bool
    in_recovery: bool | None = None
    timeline: int | None = None
    system_identifier: int | None = None
    started: float | None = None
    address: str = ""
    upstream: str = ""
    application_name: str = ""
    replay_paused: bool | None = None
    replay_lag_s: float | None = None
    replay_lag_bytes: float | None = None
    conflicts: int | None = None

    @property
    def role(self) -> str:
        if not self.reachable or self.in_recovery is None:
            return "unknown"
        return "replica" if self.in_recovery else "primary"


@dataclass(frozen=True)
class SlotState:
    """A replication slot on a server: ``retained_bytes`` of WAL it keeps (None when it keeps
    none: no restart_lsn)."""

    server: str
    slot_name: str
    slot_type: str
    active: bool
    retained_bytes: float | None
    wal_status: str
    at: float


@dataclass(frozen=True)
class TopologyEvent:
    """Something that changed on a server's timeline (see the kinds above)."""

    server: str
    at: float
    kind: str
    detail: str

    @property
    def rule(self) -> str:
        return EVENT_RULES.get(self.kind, FAILOVER_RULE)


@dataclass(frozen=True)
class TopologyIncident:
    """A page about the topology, open until resolved, kept in the store so that a restarted
    watcher goes on with it (no second page) and one event seen by several watched entries
    pages once.

    ``key`` says what it is about, the same whoever sees it: ``lag:<system id>:<replica's
    application_name>``, ``failover:<system id>``, ``down:<system id>:<postmaster start>``.
    ``server_id`` is the server it is about (the replica, the new primary, the server gone; the
    lowest id among watched entries that reach the same server), ``observer`` the server whose
    watcher resolves it: the one that opened a lag page (its view of the lag), the owner
    otherwise. ``kind`` is the page's verdict (``replication_lag``, ``failover``,
    ``server_unreachable``); ``subject`` the replica or server named."""

    server_id: int
    key: str
    id: str
    kind: str
    subject: str
    observer: int
    opened_at: float
    summary: str
    resolved_at: float | None = None


def identity(node: NodeState | None) -> tuple[int, float] | None:
    """What tells one running server apart, whatever name or DSN reaches it: its cluster's
    system identifier and its postmaster's start time (a replica shares the first with its
    primary, never the second). None when either is unknown.

    >>> identity(NodeState("db", 1.0, True, system_identifier=7, started=5.5))
    (7, 5.5)
    """
    if node is None or node.system_identifier is None or node.started is None:
        return None
    return node.system_identifier, node.started


def lag_key(node: NodeState, application_name: str, owner: int) -> str:
    """The lag incident of one replica: its cluster and the name it streams under."""
    return f"lag:{_cluster(node, owner)}:{application_name}"


def failover_key(node: NodeState, owner: int) -> str:
    return f"failover:{_cluster(node, owner)}"


def down_key(node: NodeState, owner: int) -> str:
    return f"down:{_cluster(node, owner)}:{node.started if node.started is not None else ''}"


def _cluster(node: NodeState, owner: int) -> str:
    sid = node.system_identifier
    return str(sid) if sid is not None else f"server{owner}"


def settled(node: NodeState, peers: Sequence[Peer]) -> bool:
    """The new topology holds: ``node`` (the new primary) is reachable and takes writes (not in
    recovery), and no other server of its cluster does: each peer is gone (unreachable) or
    follows (a replica).

    >>> new = NodeState("db-2", 9.0, True, in_recovery=False)
    >>> settled(new, [Peer("db-1", "primary", False, 5.0)])
    True
    >>> settled(new, [Peer("db-1", "primary", True, None)])
    False
    """
    if node.role != "primary":
        return False
    return all(not p.reachable or p.role != "primary" for p in peers)


def settled_summary(
    node: NodeState, peers: Sequence[Peer], samples: int, primary: str | None = None
) -> str:
    """The resolve notice of a failover: the new topology and how long it held. ``primary`` is
    the new primary's name as the page gave it ("replica db-2 promoted"), when the entry that
    saw it settle is another one reaching it (a multi-host DSN)."""
    name = primary or node.server
    parts = [f"failover over: {name} is the primary (timeline {node.timeline})"]
    parts += [
        f"{p.name} {'unreachable' if not p.reachable else 'follows as a ' + p.role}"
        for p in peers
        if p.name not in (node.server, name)
    ]
    return "; ".join(parts) + f"; stable for {samples} intervals"


@dataclass(frozen=True)
class Finding:
    """A replication finding with its documented id and the exact fix."""

    id: str
    server: str
    subject: str
    message: str
    fix: str


@dataclass(frozen=True)
class ReplicationSettings:
    """The ``[replication]`` table of querywatch.toml."""

    lag_s: float = 30.0  # replay lag below this never alerts
    lag_bytes: float = 256 * MiB  # the same in bytes, when the server gives no seconds
    lag_factor: float = 5.0  # and it must be this many times the replica's usual lag
    hold: int = 2  # samples in a row above the threshold before it fires
    history: int = 360  # samples of lag history the baseline is taken from
    min_history: int = 10  # samples needed before the baseline counts (the floor alone before)
    slot_inactive_bytes: float = 1 * MiB  # an inactive slot holding this much WAL is a finding
    slot_retained_bytes: float = 1024 * MiB  # an active slot holding this much WAL is a finding
    settle: int = 3  # samples in a row the new topology holds before a failover resolves


_COUNTS = frozenset({"hold", "history", "min_history", "settle"})


def settings_from_mapping(table: Mapping[str, object]) -> ReplicationSettings:
    """``[replication]`` of querywatch.toml as settings; a wrong key or value is a ConfigError."""
    known = ReplicationSettings.__dataclass_fields__
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"[replication]: unknown setting {key!r} (known: {', '.join(known)})")
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number < 0:
            raise ConfigError(f"[replication] {key}: {value!r} is not a number >= 0")
        values[key] = int(number) if key in _COUNTS else float(number)
    return ReplicationSettings(**values)


def settings_from_sections(sections: Mapping[str, Mapping[str, object]]) -> ReplicationSettings:
    """The ``[replication]`` table of querywatch.toml's tables (defaults when absent)."""
    return settings_from_mapping(sections.get("replication", {}))


# -- failover: what changed between two samples of one server ------------------------------------
def changes(
    previous: NodeState | None, current: NodeState, known: NodeState | None = None
) -> list[TopologyEvent]:
    """Events between a server's last sample ``previous``, its last reachable one ``known``
    (default: ``previous`` when reachable) and ``current``: reachability is compared with the
    last sample, role and identity with the last reachable one. A first sample: no event."""
    if previous is None:
        return []
    known = known if known is not None else (previous if previous.reachable else None)
    at, name = current.at, current.server
    if not current.reachable:
        if not previous.reachable:
            return []
        role = known.role if known is not None else "server"
        return [TopologyEvent(name, at, UNREACHABLE, f"{role} unreachable")]
    events = []
    if not previous.reachable:
        events.append(TopologyEvent(name, at, REACHABLE, f"reachable again, {current.role}"))
    if known is not None:
        events.extend(_identity(known, current))
        events.extend(_role(known, current))
    return events


def _identity(previous: NodeState, current: NodeState) -> list[TopologyEvent]:
    before, after = previous.system_identifier, current.system_identifier
    if before is not None and after is not None and before != after:
        detail = f"the DSN now reaches another cluster (system identifier {before} -> {after})"
        return [TopologyEvent(current.server, current.at, IDENTITY, detail)]
    if previous.address and current.address and previous.address != current.address:
        detail = f"the DSN now reaches another server ({previous.address} -> {current.address})"
        return [TopologyEvent(current.server, current.at, MOVED, detail)]
    return []


def _role(previous: NodeState, current: NodeState) -> list[TopologyEvent]:
    name, at = current.server, current.at
    line = f"timeline {previous.timeline} -> {current.timeline}"
    new_timeline = (
        previous.timeline is not None
        and current.timeline is not None
        and current.timeline != previous.timeline
    )
    if previous.in_recovery and current.in_recovery is False:
        detail = "promoted to primary" + (f" ({line})" if new_timeline else "")
        return [TopologyEvent(name, at, PROMOTED, detail)]
    if previous.in_recovery is False and current.in_recovery:
        upstream = f" of {current.upstream}" if current.upstream else ""
        return [TopologyEvent(name, at, DEMOTED, f"now a replica{upstream}")]
    if new_timeline:
        return [TopologyEvent(name, at, NEW_TIMELINE, f"new {line}")]
    return []


def conflicts(previous: NodeState | None, current: NodeState) -> list[TopologyEvent]:
    """Queries a replica cancelled by recovery conflicts since the previous sample."""
    if previous is None or previous.conflicts is None or current.conflicts is None:
        return []
    moved = current.conflicts - previous.conflicts
    if moved <= 0:
        return []
    detail = f"{moved} queries cancelled by recovery conflicts since {clock(previous.at)}"
    return [TopologyEvent(current.server, current.at, CONFLICTS, detail)]


@dataclass(frozen=True)
class Peer:
    """Another watched server as the store last knew it, for a failover's message."""

    name: str
    role: str  # its role when last reachable: primary, replica or unknown
    reachable: bool
    since: float | None  # unreachable since (its first unreachable sample), when it is not
    system_identifier: int | None = None


def failover_summary(event: TopologyEvent, role: str, peers: Sequence[Peer]) -> str:
    """One sentence for the page: "replica db-2 promoted at 10:42:05 (timeline 1 -> 2); db-1
    unreachable since 10:41:58". Peers are the other servers of the same cluster."""
    if event.kind == PROMOTED:
        timeline = event.detail.removeprefix("promoted to primary").strip()
        head = f"replica {event.server} promoted at {clock(event.at)} {timeline}".strip()
    else:
        head = f"{event.server}: {event.detail} at {clock(event.at)}, now {role}"
    return "; ".join([head, *(_peer_line(p) for p in peers if p.name != event.server)])


def _peer_line(peer: Peer) -> str:
    if not peer.reachable:
        since = f" since {clock(peer.since)}" if peer.since is not None else ""
        return f"{peer.name} unreachable{since}"
    if peer.role == "primary":
        return f"{peer.name} is still a primary: two servers accept writes"
    return f"{peer.name} is a {peer.role}"


# -- replication lag ------------------------------------------------------------------------------
def lag_value(replica: ReplicaState, settings: ReplicationSettings) -> tuple[float, float] | None:
    """(lag, its floor) in seconds when the server gives seconds, else in bytes."""
    if replica.replay_lag_s is not None:
        return replica.replay_lag_s, settings.lag_s
    if replica.replay_lag_bytes is not None:
        return replica.replay_lag_bytes, settings.lag_bytes
    return None


def lag_threshold(history: Sequence[float], floor: float, settings: ReplicationSettings) -> float:
    """The lag above which a sample is high: the floor, or ``lag_factor`` x the median of the
    replica's history when that is larger (a replica that always lags a little, e.g. a delayed
    one). A history shorter than ``min_history`` is not a baseline yet: the floor alone.

    >>> lag_threshold([0.0, 0.1, 0.2] * 4, 30.0, ReplicationSettings())
    30.0
    >>> lag_threshold([10.0, 12.0, 14.0] * 4, 30.0, ReplicationSettings())
    60.0
    >>> lag_threshold([10.0, 12.0, 14.0], 30.0, ReplicationSettings())
    30.0
    """
    usual = median(history) if len(history) >= settings.min_history else 0.0
    return max(floor, settings.lag_factor * usual)


PAUSED = "replay paused"  # the state of a replica whose replay is paused (its own view)


def own_lag(node: NodeState) -> ReplicaState | None:
    """A replica's lag as the replica itself sees it (WAL received and not replayed, seconds
    since the last replayed transaction while there is some), when its primary is not watched
    or sees nothing; None for a primary or an unreachable server.

    >>> own_lag(NodeState("db-2", 9.0, True, in_recovery=True, replay_paused=True,
    ...     replay_lag_s=12.0, application_name="db-2")).state
    'replay paused'
    """
    if node.role != "replica":
        return None
    state = PAUSED if node.replay_paused else "replaying"
    return ReplicaState(
        server=node.server,
        name=node.server,
        application_name=node.application_name,
        client_addr="",
        state=state,
        sync_state="",
        replay_lag_s=node.replay_lag_s,
        replay_lag_bytes=node.replay_lag_bytes,
        at=node.at,
        watched=node.server,
    )


@dataclass(frozen=True)
class LagVerdict:
    """A replica's lag judged: ``high`` this sample, ``firing`` after ``hold`` high samples."""

    replica: str
    lag: float
    unit: str  # "s" or "bytes"
    threshold: float
    high: bool
    paused: bool = False  # the replica says its replay is paused (pg_wal_replay_pause)


def judge_lag(
    replica: ReplicaState, history: Sequence[ReplicaState], settings: ReplicationSettings
) -> LagVerdict | None:
    """The replica's current lag against the floor and its own history (earlier samples)."""
    found = lag_value(replica, settings)
    if found is None:
        return None
    lag, floor = found
    unit = "s" if replica.replay_lag_s is not None else "bytes"
    past = [v[0] for v in (lag_value(h, settings) for h in history[-settings.history :]) if v]
    threshold = lag_threshold(past, floor, settings)
    paused = replica.state == PAUSED
    return LagVerdict(replica.name, lag, unit, threshold, lag >= threshold, paused)


def lag_text(verdict: LagVerdict) -> str:
    paused = "; its replay is paused (pg_wal_replay_pause)" if verdict.paused else ""
    return (
        f"replica {verdict.replica} replays {_amount(verdict.lag, verdict.unit)} behind "
        f"(threshold {_amount(verdict.threshold, verdict.unit)}){paused}"
    )


def _amount(value: float, unit: str) -> str:
    return f"{figure(value)} s" if unit == "s" else f"{figure(value / MiB)} MiB"


# -- findings -------------------------------------------------------------------------------------
def slot_findings(slots: Sequence[SlotState], settings: ReplicationSettings) -> list[Finding]:
    """Inactive slots that hold WAL, and active ones whose consumer is far behind."""
    found = []
    for slot in slots:
        held = slot.retained_bytes or 0.0
        drop = f"SELECT pg_drop_replication_slot('{_literal(slot.slot_name)}');"
        if not slot.active and held >= settings.slot_inactive_bytes:
            message = (
                f"replication slot {slot.slot_name} ({slot.slot_type}) is inactive and holds "
                f"{figure(held / MiB)} MiB of WAL on {slot.server}; it grows until the disk fills"
            )
            found.append(Finding(SLOT_INACTIVE, slot.server, slot.slot_name, message, drop))
        elif slot.active and held >= settings.slot_retained_bytes:
            message = (
                f"replication slot {slot.slot_name} holds {figure(held / MiB)} MiB of WAL on "
                f"{slot.server}: its consumer is far behind"
            )
            fix = "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();"
            found.append(Finding(SLOT_WAL, slot.server, slot.slot_name, message, fix))
    return found


def _literal(name: str) -> str:
    return name.replace("'", "''")


def is_production(labels: Mapping[str, str]) -> bool:
    """A server is production when its ``env`` label says so (prod or production)."""
    return str(labels.get("env", "")).strip().lower() in PRODUCTION


def no_replica_finding(
    node: NodeState, replicas: Sequence[ReplicaState], labels: Mapping[str, str]
) -> Finding | None:
    """A production primary that no replica streams from: a single point of failure."""
    if node.role != "primary" or replicas or not is_production(labels):
        return None
    message = (
        f"{node.server} is a production primary (env={labels.get('env')}) and no replica "
        "streams from it: a single point of failure"
    )
    fix = (
        "pg_basebackup -h PRIMARY -U REPLICATION_USER -D NEW_DATA_DIR -R -X stream "
        "-C -S replica1, then start the replica and watch it as a [[servers]] entry"
    )
    return Finding(NO_REPLICA, node.server, node.server, message, fix)
