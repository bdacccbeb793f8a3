"""The replication history in the store (both engines): node states, replica lag, slots, topology
events."""

from __future__ import annotations

from collections.abc import Callable

from querywatch.replication import (
    NodeState,
    ReplicaState,
    SlotState,
    TopologyEvent,
    TopologyIncident,
)
from querywatch.store import Store


def _replica(at: float, lag: float | None, name: str = "db-2") -> ReplicaState:
    return ReplicaState("db-1", name, name, "127.0.0.1", "streaming", "async", lag, 100.0, at)


def test_replicas_are_those_of_the_last_reachable_sample(any_store: Store) -> None:
    store = any_store
    sid = store.server("db-1").id
    for at, lag in ((10.0, 0.1), (11.0, 2.5)):
        node = NodeState("db-1", at, True, in_recovery=False, timeline=1, system_identifier=7)
        store.record_replication(sid, node, [_replica(at, lag)])
    store.record_replication(sid, NodeState("db-1", 12.0, False))  # unreachable: no rows
    assert store.replicas(sid, at=10.5) == [_replica(10.0, 0.1)]
    assert store.replicas(sid, at=99.0) == [_replica(11.0, 2.5)]
    assert store.replicas(sid, at=5.0) == []
    assert [r.replay_lag_s for r in store.replica_lag(sid, 0.0, 99.0, "db-2")] == [0.1, 2.5]
    assert store.replica_lag(sid, 0.0, 99.0, "other") == []
    last = store.node_state(sid, 99.0)
    reachable = store.node_state(sid, 99.0, reachable=True)
    assert last is not None and not last.reachable
    assert reachable is not None and reachable.at == 11.0 and reachable.system_identifier == 7
    assert store.unreachable_since(sid, 11.0, 99.0) == 12.0


def test_slots_are_replaced_and_events_listed_in_order(any_store: Store) -> None:
    store = any_store
    a, b = store.server("db-1").id, store.server("db-2").id
    slot = SlotState("db-1", "stale", "physical", False, 4e6, "reserved", 10.0)
    store.record_replication(a, NodeState("db-1", 10.0, True), slots=[slot])
    store.record_replication(a, NodeState("db-1", 11.0, True))  # slots not read: kept
    assert store.replication_slots(a) == [slot]
    store.record_replication(a, NodeState("db-1", 12.0, True), slots=[])
    assert store.replication_slots(a) == []
    promoted = TopologyEvent("db-2", 20.0, "promoted", "promoted to primary")
    gone = TopologyEvent("db-1", 19.0, "unreachable", "primary unreachable")
    store.record_replication(b, NodeState("db-2", 20.0, True), events=[promoted])
    store.add_topology_events(a, [gone, gone])  # a repeat is ignored
    assert store.topology_events() == [gone, promoted]
    assert store.topology_events(b) == [promoted]
    assert store.topology_events(None, 19.5, 30.0) == [promoted]


def test_old_samples_are_pruned_with_the_raw_intervals(
    store_location: Callable[[str], str],
) -> None:
    with Store(store_location("s"), clock=lambda: 1e6) as store:
        sid = store.server("db-1").id
        store.record_replication(sid, NodeState("db-1", 10.0, True), [_replica(10.0, 1.0)])
        store.record_replication(sid, NodeState("db-1", 1e6 - 5, True), [_replica(1e6 - 5, 1.0)])
        store.maintain(1e6)
        assert [n.at for n in store.node_states(sid, 0.0, 2e6)] == [1e6 - 5]
        assert len(store.replica_lag(sid, 0.0, 2e6)) == 1


def _incident(server_id: int, ident: str, key: str, observer: int, at: float) -> TopologyIncident:
    return TopologyIncident(server_id, key, ident, "replication_lag", "db-2", observer, at, "s")


def test_one_open_topology_incident_per_key_and_resolved_once(any_store: Store) -> None:
    store = any_store
    a, b = store.server("db-1").id, store.server("db-2").id
    first = _incident(b, "lag-1", "lag:7:db-2", a, 10.0)
    assert store.open_topology_incident(first) == first  # opened by this call
    again = _incident(b, "lag-2", "lag:7:db-2", b, 11.0)  # the same replica seen by another
    assert store.open_topology_incident(again) == first
    elsewhere = _incident(a, "lag-3", "lag:7:db-2", a, 12.0)  # under another server: still one
    assert store.open_topology_incident(elsewhere) == first
    other = _incident(b, "lag-4", "lag:7:db-3", a, 13.0)
    assert store.open_topology_incident(other) == other
    assert [i.id for i in store.topology_incidents()] == ["lag-1", "lag-4"]
    assert store.topology_incidents(a) == []
    assert store.resolve_topology_incident(b, "lag-1", 20.0)
    assert not store.resolve_topology_incident(b, "lag-1", 21.0)  # resolved once
    assert [i.id for i in store.topology_incidents(b)] == ["lag-4"]
    [closed, _] = store.topology_incidents(b, open_only=False)
    assert (closed.id, closed.resolved_at) == ("lag-1", 20.0)
    reopened = _incident(b, "lag-5", "lag:7:db-2", a, 30.0)  # a new episode: a new incident
    assert store.open_topology_incident(reopened) == reopened
