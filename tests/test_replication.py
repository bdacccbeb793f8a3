"""Pure replication rules: failover events, lag judged against a baseline, slot and single-point
findings, the failover page's sentence, the [replication] settings (querywatch.replication)."""

from __future__ import annotations

import doctest
from dataclasses import replace

import pytest

from querywatch import replication as rp
from querywatch.errors import ConfigError
from querywatch.replication import (
    NodeState,
    Peer,
    ReplicaState,
    ReplicationSettings,
    SlotState,
    TopologyEvent,
)

PRIMARY = NodeState(
    "db-1", 100.0, True, in_recovery=False, timeline=1, system_identifier=7, address="h:1"
)
REPLICA = NodeState(
    "db-2", 100.0, True, in_recovery=True, timeline=1, system_identifier=7, address="h:2"
)
DOWN = NodeState("db-1", 101.0, False)


def test_doctests() -> None:
    assert doctest.testmod(rp).failed == 0


def _kinds(
    previous: NodeState | None, current: NodeState, known: NodeState | None = None
) -> list[str]:
    return [e.kind for e in rp.changes(previous, current, known)]


@pytest.mark.parametrize(
    ("previous", "current", "known", "kinds"),
    [
        (None, REPLICA, None, []),  # a first sample: nothing to compare with
        (REPLICA, replace(REPLICA, at=101.0), None, []),
        (REPLICA, replace(REPLICA, in_recovery=False, timeline=2), None, ["promoted"]),
        (REPLICA, replace(REPLICA, in_recovery=False), None, ["promoted"]),  # timeline not read
        (PRIMARY, replace(PRIMARY, in_recovery=True), None, ["demoted"]),
        (REPLICA, replace(REPLICA, timeline=2), None, ["new_timeline"]),
        (PRIMARY, DOWN, None, ["unreachable"]),
        (DOWN, replace(DOWN, at=102.0), PRIMARY, []),  # still down: said once
        (DOWN, replace(PRIMARY, at=102.0), PRIMARY, ["reachable"]),
        # down, and back promoted: compared with the last reachable sample
        (
            DOWN,
            replace(REPLICA, at=102.0, in_recovery=False, timeline=2),
            REPLICA,
            ["reachable", "promoted"],
        ),
        (PRIMARY, replace(PRIMARY, system_identifier=8), None, ["identity_changed"]),
        (PRIMARY, replace(PRIMARY, address="h:3"), None, ["node_changed"]),
        # a multi-host DSN that now reaches the promoted replica: another server, now primary
        (REPLICA, replace(PRIMARY, address="h:1", timeline=2), None, ["node_changed", "promoted"]),
        (PRIMARY, replace(PRIMARY, system_identifier=None), None, []),  # unreadable: no claim
    ],
)
def test_changes(
    previous: NodeState | None, current: NodeState, known: NodeState | None, kinds: list[str]
) -> None:
    assert _kinds(previous, current, known) == kinds


def test_promotion_detail_and_rule() -> None:
    [event] = rp.changes(REPLICA, replace(REPLICA, at=105.0, in_recovery=False, timeline=2))
    assert (event.detail, event.rule, event.at) == (
        "promoted to primary (timeline 1 -> 2)",
        rp.FAILOVER_RULE,
        105.0,
    )


def test_conflicts_count_what_moved_since_the_last_sample() -> None:
    before, after = replace(REPLICA, conflicts=3), replace(REPLICA, at=110.0, conflicts=5)
    [event] = rp.conflicts(before, after)
    assert event.kind == rp.CONFLICTS and event.detail.startswith("2 queries cancelled")
    assert rp.conflicts(after, after) == []
    assert rp.conflicts(None, after) == [] and rp.conflicts(REPLICA, after) == []


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        (
            [Peer("db-1", "primary", False, 42.0 + 36000)],
            "replica db-2 promoted at 10:00:50 (timeline 1 -> 2); db-1 unreachable since 10:00:42",
        ),
        (
            [Peer("db-1", "primary", True, None)],
            "replica db-2 promoted at 10:00:50 (timeline 1 -> 2); db-1 is still a primary: "
            "two servers accept writes",
        ),
        ([], "replica db-2 promoted at 10:00:50 (timeline 1 -> 2)"),
        (
            [Peer("db-2", "primary", True, None)],
            "replica db-2 promoted at 10:00:50 (timeline 1 -> 2)",
        ),
    ],
)
def test_failover_summary(peers: list[Peer], expected: str) -> None:
    event = TopologyEvent("db-2", 36050.0, rp.PROMOTED, "promoted to primary (timeline 1 -> 2)")
    assert rp.failover_summary(event, "primary", peers) == expected


def test_identity_change_summary_names_the_new_role() -> None:
    event = TopologyEvent("vip", 36050.0, rp.IDENTITY, "the DSN now reaches another cluster (x)")
    assert rp.failover_summary(event, "primary", []) == (
        "vip: the DSN now reaches another cluster (x) at 10:00:50, now primary"
    )


def _replica(lag_s: float | None, lag_bytes: float | None = 0.0) -> ReplicaState:
    return ReplicaState(
        "db-1", "db-2", "db-2", "127.0.0.1", "streaming", "async", lag_s, lag_bytes, 0.0
    )


@pytest.mark.parametrize(
    ("history", "lag", "high", "threshold"),
    [
        ([0.1] * 20, 29.0, False, 30.0),  # under the floor
        ([0.1] * 20, 30.0, True, 30.0),
        ([10.0] * 20, 45.0, False, 50.0),  # a replica that always lags 10 s: x5 its usual
        ([10.0] * 20, 50.0, True, 50.0),
        ([10.0] * 5, 31.0, True, 30.0),  # too little history for a baseline: the floor
        ([], 31.0, True, 30.0),
    ],
)
def test_lag_against_floor_and_baseline(
    history: list[float], lag: float, high: bool, threshold: float
) -> None:
    verdict = rp.judge_lag(_replica(lag), [_replica(h) for h in history], ReplicationSettings())
    assert verdict is not None and (verdict.high, verdict.threshold) == (high, threshold)


def test_lag_in_bytes_when_the_server_gives_no_seconds() -> None:
    settings = ReplicationSettings()
    verdict = rp.judge_lag(_replica(None, 300 * rp.MiB), [], settings)
    assert verdict is not None and verdict.unit == "bytes" and verdict.high
    assert rp.lag_text(verdict) == "replica db-2 replays 300.0 MiB behind (threshold 256.0 MiB)"
    assert rp.judge_lag(_replica(None, None), [], settings) is None


def _slot(name: str, active: bool, held: float | None) -> SlotState:
    return SlotState("db-1", name, "physical", active, held, "reserved", 0.0)


def test_slot_findings() -> None:
    slots = [
        _slot("stale", False, 30 * rp.MiB),
        _slot("o'brien", False, 2 * rp.MiB),
        _slot("fresh", False, 0.5 * rp.MiB),  # holds under 1 MiB
        _slot("never", False, None),  # holds nothing (no restart_lsn)
        _slot("busy", True, 2048 * rp.MiB),
        _slot("fine", True, 10 * rp.MiB),
    ]
    found = rp.slot_findings(slots, ReplicationSettings())
    assert [(f.id, f.subject) for f in found] == [
        (rp.SLOT_INACTIVE, "stale"),
        (rp.SLOT_INACTIVE, "o'brien"),
        (rp.SLOT_WAL, "busy"),
    ]
    assert found[0].fix == "SELECT pg_drop_replication_slot('stale');"
    assert found[1].fix == "SELECT pg_drop_replication_slot('o''brien');"
    assert "30.0 MiB" in found[0].message


@pytest.mark.parametrize(
    ("node", "replicas", "labels", "finding"),
    [
        (PRIMARY, [], {"env": "prod"}, True),
        (PRIMARY, [], {"env": "Production"}, True),
        (PRIMARY, [_replica(0.0)], {"env": "prod"}, False),
        (PRIMARY, [], {"env": "staging"}, False),
        (PRIMARY, [], {}, False),
        (REPLICA, [], {"env": "prod"}, False),
        (DOWN, [], {"env": "prod"}, False),
    ],
)
def test_production_primary_without_replica(
    node: NodeState, replicas: list[ReplicaState], labels: dict[str, str], finding: bool
) -> None:
    found = rp.no_replica_finding(node, replicas, labels)
    assert (found is not None) is finding
    if found is not None:
        assert found.id == rp.NO_REPLICA and "pg_basebackup" in found.fix


def test_settings() -> None:
    settings = rp.settings_from_sections({"replication": {"lag_s": 5, "hold": 3}})
    assert (settings.lag_s, settings.hold) == (5.0, 3)
    assert rp.settings_from_sections({}) == ReplicationSettings()
    with pytest.raises(ConfigError, match="unknown setting 'lag'"):
        rp.settings_from_mapping({"lag": 1})
    for bad in (-1, "5", float("nan"), True):
        with pytest.raises(ConfigError, match="lag_s"):
            rp.settings_from_mapping({"lag_s": bad})


NEW = replace(REPLICA, in_recovery=False, timeline=2)


@pytest.mark.parametrize(
    ("node", "peers", "settled"),
    [
        (NEW, [Peer("db-1", "primary", False, 99.0)], True),  # the old primary gone
        (NEW, [Peer("db-1", "replica", True, None)], True),  # it follows
        (NEW, [Peer("db-1", "primary", True, None)], False),  # split brain
        (NEW, [], True),
        (REPLICA, [Peer("db-1", "primary", False, 99.0)], False),  # not promoted (yet)
        (replace(DOWN, server="db-2"), [], False),  # the new primary unreachable
    ],
)
def test_a_failover_is_settled_when_one_primary_takes_writes(
    node: NodeState, peers: list[Peer], settled: bool
) -> None:
    assert rp.settled(node, peers) is settled


def test_settled_summary_names_the_new_topology() -> None:
    peers = [Peer("db-1", "primary", False, 99.0), Peer("db-3", "replica", True, None)]
    assert rp.settled_summary(NEW, peers, 3) == (
        "failover over: db-2 is the primary (timeline 2); db-1 unreachable; "
        "db-3 follows as a replica; stable for 3 intervals"
    )


def test_the_same_server_under_two_names_has_one_identity_and_keys() -> None:
    started = replace(PRIMARY, started=5.0)
    alias = replace(started, server="db", address="local:5432")
    assert rp.identity(alias) == rp.identity(started) == (7, 5.0)
    assert rp.identity(replace(REPLICA, started=6.0)) != rp.identity(started)  # same cluster
    assert rp.identity(PRIMARY) is None  # start time unknown: no claim
    assert rp.lag_key(started, "db-2", 1) == rp.lag_key(REPLICA, "db-2", 2) == "lag:7:db-2"
    assert rp.failover_key(replace(REPLICA, system_identifier=None), 3) == "failover:server3"
    assert rp.down_key(started, 1) == "down:7:5.0"


def test_a_replicas_own_view_of_its_lag() -> None:
    paused = replace(REPLICA, replay_paused=True, replay_lag_s=12.0, application_name="db-2")
    own = rp.own_lag(paused)
    assert own is not None and (own.name, own.state, own.replay_lag_s) == ("db-2", rp.PAUSED, 12.0)
    verdict = rp.judge_lag(own, [], ReplicationSettings())
    assert verdict is not None and verdict.paused and not verdict.high
    assert rp.lag_text(verdict).endswith("; its replay is paused (pg_wal_replay_pause)")
    assert rp.own_lag(PRIMARY) is None and rp.own_lag(DOWN) is None


def test_settle_setting() -> None:
    assert rp.settings_from_mapping({"settle": 5}).settle == 5
    assert ReplicationSettings().settle == 3
