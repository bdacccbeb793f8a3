"""Topology pages over a real store and a real webhook (querywatch.topology): a failover paged
once and resolved once the new topology holds, a primary gone paged once by every entry that
reached it, lag paged once by the primary's and the replica's views, and a restarted watcher that
goes on with the pages it had open. The samples are records handed to ``TopologyMonitor.judge``
(the real pair of tests/test_replication_pg.py covers reading them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from workload import Receiver

from querywatch import replication as rp
from querywatch.alerts import Dispatcher
from querywatch.alerts.webhook import WebhookChannel
from querywatch.durations import clock
from querywatch.replication import NodeState, ReplicaState, ReplicationSettings
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.topology import TopologyMonitor

T0 = time.time() - 600  # recent: the outbox keeps notifications for a day
SETTINGS = ReplicationSettings(lag_s=2.0, hold=2, settle=3)
PRIMARY = NodeState(
    "db-1", T0, True, in_recovery=False, timeline=1, system_identifier=7, started=1.0,
    address="h:1",
)  # fmt: skip
REPLICA = NodeState(
    "db-2", T0, True, in_recovery=True, timeline=1, system_identifier=7, started=2.0,
    address="h:2", application_name="db-2", replay_lag_s=0.0, replay_paused=False,
)  # fmt: skip


@dataclass
class Fleet:
    store: Store
    dispatcher: Dispatcher
    receiver: Receiver

    def monitor(self, name: str) -> TopologyMonitor:
        sid = self.store.server(name).id
        source = PostgresSource("host=127.0.0.1 port=1")  # never connected: judge() is handed
        return TopologyMonitor(
            self.store, sid, name, source, SETTINGS, {"env": "prod"}, self.dispatcher
        )

    def pages(self) -> list[tuple[str, str, str]]:
        assert self.dispatcher.flush(10)
        return [
            (b["status"], b["diagnosis"]["verdict"], b["diagnosis"]["summary"])
            for b in self.receiver.bodies()
        ]

    def ids(self) -> list[str]:
        return [str(b["incident"]) for b in self.receiver.bodies()]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    receiver = Receiver()
    with (
        Store(tmp_path / "qw.db") as store,
        Dispatcher([WebhookChannel(receiver.url)], store=store) as dispatcher,
    ):
        for name in ("db-1", "db-2", "db"):
            store.server(name)  # ids in this order
        yield Fleet(store, dispatcher, receiver)
    receiver.close()


def at(node: NodeState, t: float, server: str | None = None, **changes: Any) -> NodeState:
    return replace(node, at=T0 + t, server=server or node.server, **changes)


def down(name: str, t: float) -> NodeState:
    return NodeState(name, T0 + t, False)


PROMOTED: dict[str, Any] = {
    "in_recovery": False,
    "timeline": 2,
    "application_name": "",
    "replay_lag_s": None,
}


def test_failover_paged_once_and_resolved_once_the_new_topology_holds(fleet: Fleet) -> None:
    db1, db2, db = fleet.monitor("db-1"), fleet.monitor("db-2"), fleet.monitor("db")
    db1.judge(at(PRIMARY, 0), [])
    db2.judge(at(REPLICA, 0), [])
    db.judge(at(PRIMARY, 0, "db"), [])  # a multi-host DSN: db-1 for now
    db1.judge(down("db-1", 1), [])
    db.judge(down("db", 1), [])  # it lost db-1 too: the same server gone, one page
    db.judge(at(REPLICA, 2, "db", **PROMOTED), [])  # db reaches db-2 before db-2's own sample
    db2.judge(at(REPLICA, 2, **PROMOTED), [])
    assert fleet.pages() == [
        ("firing", "server_unreachable", f"primary db-1 unreachable since {_clock(1)}"),
        (
            "firing",
            "failover",
            f"replica db-2 promoted at {_clock(2)} (timeline 1 -> 2); db-1 unreachable since "
            f"{_clock(1)}",
        ),
    ]
    for t in (3, 4):
        db.judge(at(REPLICA, t, "db", **PROMOTED), [])  # its node_changed joins db-2's page
        db1.judge(down("db-1", t), [])
        db2.judge(at(REPLICA, t, **PROMOTED), [])  # the promotion's sample and two more
    assert fleet.pages()[2:] == [
        (
            "resolved",
            "failover",
            "failover over: db-2 is the primary (timeline 2); db-1 unreachable; "
            "stable for 3 intervals",
        )
    ]
    assert fleet.ids()[1] == fleet.ids()[2]
    settled = [e for e in fleet.store.topology_events() if e.kind == rp.SETTLED]
    assert [(e.server, e.at) for e in settled] == [("db-2", T0 + 4)]
    assert [i.kind for i in fleet.store.topology_incidents()] == ["server_unreachable"]
    db.judge(down("db", 5), [])  # now the new primary goes: db pages it (db-1 is still down)
    db2.judge(down("db-2", 5), [])
    assert fleet.pages()[3:] == [
        ("firing", "server_unreachable", f"primary db-2 unreachable since {_clock(5)}")
    ]
    assert fleet.receiver.bodies()[3]["diagnosis"]["server"] == "db"  # seen first by db


def test_two_primaries_keep_the_failover_open_until_the_old_one_follows(fleet: Fleet) -> None:
    db1, db2 = fleet.monitor("db-1"), fleet.monitor("db-2")
    db1.judge(at(PRIMARY, 0), [])
    db2.judge(at(REPLICA, 0), [])
    db2.judge(at(REPLICA, 1, **PROMOTED), [])
    for t in range(2, 7):  # db-1 still takes writes: split brain, the page stays open
        db1.judge(at(PRIMARY, t), [])
        db2.judge(at(REPLICA, t, **PROMOTED), [])
    [(status, verdict, summary)] = fleet.pages()
    assert (status, verdict) == ("firing", "failover")
    assert summary.endswith("db-1 is still a primary: two servers accept writes")
    for t in range(7, 10):  # rebuilt as a replica of db-2 (a restart: a new start time)
        db1.judge(at(PRIMARY, t, in_recovery=True, timeline=2, started=3.0), [])
        db2.judge(at(REPLICA, t, **PROMOTED), [])
    assert fleet.pages()[1:] == [
        (
            "resolved",
            "failover",
            "failover over: db-2 is the primary (timeline 2); db-1 follows as a replica; "
            "stable for 3 intervals",
        )
    ]


def test_a_restarted_watcher_goes_on_with_its_open_pages(fleet: Fleet) -> None:
    db1 = fleet.monitor("db-1")
    db1.judge(at(PRIMARY, 0), [_lagging(0, 0.1)])
    db1.judge(at(PRIMARY, 1), [_lagging(1, 5.0)])
    db1.judge(at(PRIMARY, 2), [_lagging(2, 6.0)])  # hold: the second high sample pages
    again = fleet.monitor("db-1")  # the watcher restarted: still lagging
    for t in (3, 4, 5):
        again.judge(at(PRIMARY, t), [_lagging(t, 7.0)])
    again.judge(at(PRIMARY, 6), [_lagging(6, 0.2)])
    again.judge(down("db-1", 7), [])
    restarted = fleet.monitor("db-1")  # restarted while the server is down
    restarted.judge(down("db-1", 8), [])
    restarted.judge(at(PRIMARY, 9), [])
    assert [p[:2] for p in fleet.pages()] == [
        ("firing", "replication_lag"),
        ("resolved", "replication_lag"),
        ("firing", "server_unreachable"),
        ("resolved", "server_unreachable"),
    ]
    ids = fleet.ids()
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert fleet.pages()[3][2] == f"db-1 reachable again, primary at {_clock(9)}"
    assert fleet.store.topology_incidents() == []


def test_a_failover_open_across_a_restart_resolves_once(fleet: Fleet) -> None:
    db1, db2 = fleet.monitor("db-1"), fleet.monitor("db-2")
    db1.judge(at(PRIMARY, 0), [])
    db2.judge(at(REPLICA, 0), [])
    db1.judge(down("db-1", 1), [])
    db2.judge(at(REPLICA, 1, **PROMOTED), [])
    again = fleet.monitor("db-2")  # restarted right after the page
    for t in (2, 3, 4):
        db1.judge(down("db-1", t), [])
        again.judge(at(REPLICA, t, **PROMOTED), [])
    assert [p[:2] for p in fleet.pages()] == [
        ("firing", "server_unreachable"),
        ("firing", "failover"),
        ("resolved", "failover"),
    ]
    assert fleet.ids()[1] == fleet.ids()[2]


def test_one_lag_seen_by_the_primary_and_by_the_replica_pages_once(fleet: Fleet) -> None:
    db1, db2, db = fleet.monitor("db-1"), fleet.monitor("db-2"), fleet.monitor("db")
    db2.judge(at(REPLICA, 0), [])  # db-2 is watched: db-1's row of it is named db-2
    for t, lag in ((1, 5.0), (2, 6.0), (3, 7.0)):
        db1.judge(at(PRIMARY, t), [_lagging(t, lag)])
        db.judge(at(PRIMARY, t, "db"), [_lagging(t, lag)])  # the same primary, another entry
        db2.judge(at(REPLICA, t, replay_lag_s=lag + 0.5, replay_paused=True), [])
    [(status, verdict, summary)] = fleet.pages()
    assert (status, verdict) == ("firing", "replication_lag")
    assert summary == "replica db-2 replays 6.0 s behind (threshold 2.0 s) on db-1"
    [incident] = fleet.store.topology_incidents()
    assert (incident.server_id, incident.key) == (fleet.store.server("db-2").id, "lag:7:db-2")
    db2.judge(at(REPLICA, 4, replay_lag_s=0.0, replay_paused=False), [])  # not its page
    db.judge(at(PRIMARY, 4, "db"), [_lagging(4, 0.1)])
    assert len(fleet.pages()) == 1
    db1.judge(at(PRIMARY, 4), [_lagging(4, 0.1)])  # the view that paged resolves it
    assert fleet.pages()[1][:2] == ("resolved", "replication_lag")
    assert len(fleet.ids()) == 2 and len(set(fleet.ids())) == 1


def test_a_view_that_stopped_sampling_hands_its_pages_over(fleet: Fleet) -> None:
    """db-1's watcher paged the lag, then stopped for good: db-2's own view resolves it; db-2's
    watcher stopped after its promotion: db (reaching db-2) settles the failover."""
    db1, db2, db = fleet.monitor("db-1"), fleet.monitor("db-2"), fleet.monitor("db")
    db2.judge(at(REPLICA, 0), [])
    for t, lag in ((1, 5.0), (2, 6.0)):
        db1.judge(at(PRIMARY, t), [_lagging(t, lag)])
        db2.judge(at(REPLICA, t, replay_lag_s=lag, replay_paused=True), [])
    for t in range(3, 10):  # db-1 no longer sampled; db-2 still lags, then catches up
        db2.judge(at(REPLICA, t, replay_lag_s=7.0, replay_paused=True), [])
    db2.judge(at(REPLICA, 10), [])
    assert [p[:2] for p in fleet.pages()] == [
        ("firing", "replication_lag"),
        ("resolved", "replication_lag"),
    ]
    assert fleet.pages()[1][2].startswith("replica db-2 caught up")
    db.judge(at(REPLICA, 10, "db", **PROMOTED), [])
    db2.judge(at(REPLICA, 11, **PROMOTED), [])  # the failover page, then db-2 is not sampled
    for t in range(11, 20):
        db.judge(at(REPLICA, t, "db", **PROMOTED), [])
    assert [p[:2] for p in fleet.pages()[2:]] == [("firing", "failover"), ("resolved", "failover")]
    # the new primary as the page named it, not the entry that saw it settle
    assert fleet.pages()[3][2].startswith("failover over: db-2 is the primary (timeline 2)")


def test_a_replica_whose_primary_is_not_watched_pages_its_own_lag(fleet: Fleet) -> None:
    db2 = fleet.monitor("db-2")
    for t, lag in ((0, 0.0), (1, 3.0), (2, 4.0)):
        db2.judge(at(REPLICA, t, replay_lag_s=lag, replay_paused=lag > 0), [])
    db2.judge(at(REPLICA, 3, **PROMOTED), [])  # promoted: no longer a replica, resolved
    assert fleet.pages() == [
        (
            "firing",
            "replication_lag",
            "replica db-2 replays 4.0 s behind (threshold 2.0 s); its replay is paused "
            "(pg_wal_replay_pause)",
        ),
        ("resolved", "replication_lag", "db-2 is no longer a replica streaming"),
        *[p for p in fleet.pages()[2:] if p[1] == "failover"],
    ]


def _lagging(t: float, lag: float) -> ReplicaState:
    return ReplicaState("db-1", "db-2", "db-2", "127.0.0.1", "streaming", "async", lag, 1e6, T0 + t)


def _clock(t: float) -> str:
    return clock(T0 + t)
