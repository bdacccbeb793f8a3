"""Acceptance of replication health and failover detection on real PostgreSQL (issue 15A).

One primary (db-1) and one streaming replica made with pg_basebackup (db-2), both watched by one
``run_watch`` (1 s intervals) with a webhook to a real HTTP receiver on 127.0.0.1; a third entry
(db) is a multi-host DSN that reaches whichever takes writes: db-1, then db-2. The tests run in
order on the same pair and the same watch: the replica discovered, its lag rising while replay is
paused and falling back once resumed (paged once although db-1, db and db-2 itself all see it),
an inactive slot holding WAL, a second watch of the replica alone (its own view of the lag, the
page continued across a restart of that watch), then a failover (db-1 stopped, db-2 promoted with
pg_ctl) at the end, paged once and resolved once the new topology holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import webstore
from conftest import MakePg
from replica_fixtures import promote, start_replica

from querywatch.alerts.webhook import WebhookChannel
from querywatch.demo.receiver import Alert, AlertReceiver
from querywatch.localpg import LocalPostgres
from querywatch.replication import (
    CONFLICTS,
    LAG,
    LAG_BACK,
    LAG_PAGE,
    MOVED,
    PROMOTED,
    SETTLED,
    SLOT_INACTIVE,
    UNREACHABLE,
    TopologyEvent,
)
from querywatch.service import WatchOptions, run_watch
from querywatch.settings import ServerEntry, Settings
from querywatch.source import replication as replication_source
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.topology import STATUS
from querywatch.web import create_app

INTERVAL = 1.0
LAG_S = 2.0  # [replication] lag_s for the test: a paused replay is past it in ~3 s
T = TypeVar("T")


@dataclass
class Pair:
    primary: LocalPostgres
    replica: LocalPostgres
    store: Path
    receiver: AlertReceiver

    def open_store(self) -> Store:
        return Store(self.store)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout:g} s: {what}")


def _writes(dsn: str, stop: threading.Event) -> None:
    """Writes on the primary all along, so WAL keeps coming to the replica."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int, pad text)")
        while not stop.wait(0.05):
            try:
                conn.execute(
                    "INSERT INTO ticks SELECT g, repeat('x', 100) FROM generate_series(1, 200) g"
                )
            except psycopg.OperationalError:
                return  # the primary was stopped (the failover test)


def _writable(*servers: LocalPostgres) -> str:
    """A multi-host DSN that reaches whichever of the servers takes writes."""
    ports = ",".join(str(s.port) for s in servers)
    hosts = ",".join("127.0.0.1" for _ in servers)
    return (
        f"host={hosts} port={ports} user=postgres dbname=postgres target_session_attrs=read-write"
    )


@pytest.fixture(scope="module")
def pair(make_pg: MakePg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    primary = make_pg()
    replica = start_replica(primary, "db-2", {"max_standby_streaming_delay": "500ms"})
    receiver = AlertReceiver().start()
    store = tmp_path_factory.mktemp("replication") / "qw.db"
    Store(store).close()  # created (migrated) before the watch and the tests open it
    cfg = Settings(
        store=str(store),
        interval=INTERVAL,
        servers=(
            ServerEntry("db-1", primary.dsn, {"env": "prod", "role": "primary"}),
            ServerEntry("db-2", replica.dsn, {"env": "prod", "role": "replica"}),
            ServerEntry("db", _writable(primary, replica), {"env": "prod"}),  # follows the primary
        ),
        sections={"replication": {"lag_s": LAG_S, "hold": 2}},
    )
    stop, writing = threading.Event(), threading.Event()
    options = WatchOptions(channels=[WebhookChannel(receiver.url)])
    watch = threading.Thread(target=run_watch, args=(cfg, options, stop), daemon=True)
    writer = threading.Thread(target=_writes, args=(primary.dsn, writing), daemon=True)
    watch.start()
    writer.start()
    try:
        yield Pair(primary, replica, store, receiver)
    finally:
        writing.set()
        stop.set()
        watch.join(30)
        writer.join(10)
        receiver.stop()
        replica.cleanup()


def _server_id(store: Store, name: str) -> int | None:
    return next((s.id for s in store.servers() if s.name == name), None)


def _alerts(receiver: AlertReceiver, verdict: str, status: str) -> list[Alert]:
    return [
        a
        for a in list(receiver.alerts)
        if a.status == status and a.body["diagnosis"].get("verdict") == verdict
    ]


def test_replica_discovered_and_its_lag_detected_then_back(pair: Pair) -> None:
    with pair.open_store() as store:
        primary = wait_for("db-1 in the store", lambda: _server_id(store, "db-1"))
        # db-1 may list the replica before db-2's own watcher has sampled it (then it is not yet
        # known as watched): wait for both to be seen, as the page will
        replicas = wait_for(
            "db-2 listed by db-1 as watched",
            lambda: [r for r in store.replicas(primary) if r.watched],
        )
        assert [(r.name, r.watched, r.state) for r in replicas] == [("db-2", "db-2", "streaming")]
        assert len(store.replicas(primary)) == 1
        with psycopg.connect(pair.replica.dsn, autocommit=True) as conn:
            paused_at = time.time()
            conn.execute("SELECT pg_wal_replay_pause()")
            fired = wait_for(
                "a lag alert", lambda: _alerts(pair.receiver, "replication_lag", "firing")
            )
            event = next(e for e in store.topology_events() if e.kind == LAG)
            peak = max(
                r.replay_lag_s or 0.0 for r in store.replica_lag(primary, paused_at, time.time())
            )
            shown = webstore.Client(create_app(store)).get("/replication.json").json()
            resumed_at = time.time()
            conn.execute("SELECT pg_wal_replay_resume()")
        wait_for("the lag resolved", lambda: _alerts(pair.receiver, "replication_lag", "resolved"))
        back = next(e for e in store.topology_events() if e.kind == LAG_BACK)
        history = store.replica_lag(primary, paused_at - 5, time.time(), "db-2")
        time.sleep(3 * INTERVAL)  # any late second page of the same lag
        lags = [e for e in store.topology_events() if e.kind == LAG]
        [stored] = store.topology_incidents(None, open_only=False)
    print(
        f"\nlag: detected {event.at - paused_at:.1f} s after the pause ({event.detail}), "
        f"alert {fired[0].received_at - paused_at:.1f} s, peak {peak:.1f} s; back "
        f"{back.at - resumed_at:.1f} s after resume ({back.detail})"
    )
    assert "db-2" in fired[0].body["diagnosis"]["summary"]
    # db-1, db (the same server under a multi-host DSN) and db-2 itself see the lag: one page
    pages = [a.body["incident"] for a in list(pair.receiver.alerts)]
    assert len(fired) == 1 and len(lags) == 1, [e.detail for e in lags]
    assert pages.count(fired[0].body["incident"]) == 2  # firing, then resolved
    assert (stored.id, stored.kind, stored.subject) == (fired[0].body["incident"], LAG_PAGE, "db-2")
    assert stored.resolved_at is not None and stored.key.endswith(":db-2")
    [db1] = [n for n in shown["nodes"] if n["server"] == "db-1"]
    assert db1["replicas"][0]["name"] == "db-2" and db1["replicas"][0]["replay_lag_s"] >= LAG_S
    assert "replication_lag" in [e["kind"] for e in shown["events"]]
    assert event.at - paused_at < 10 * INTERVAL
    after = [r.replay_lag_s or 0.0 for r in history if r.at > back.at]
    assert peak >= LAG_S and all(lag < LAG_S for lag in after)


def test_inactive_slot_holding_wal_is_a_finding_with_its_fix(pair: Pair) -> None:
    with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('stale_slot', true)")
        conn.execute(
            "INSERT INTO ticks SELECT g, repeat('y', 500) FROM generate_series(1, 20000) g"
        )
    with pair.open_store() as store:

        def finding() -> dict[str, Any] | None:
            found = store.status().get(f"{STATUS}db-1", {}).get("findings", [])
            return next((f for f in found if f["subject"] == "stale_slot"), None)

        found = wait_for("the slot finding", finding)
        print(f"\nfinding: {found['message']}; fix: {found['fix']}")
        assert found["id"] == SLOT_INACTIVE
        with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
            conn.execute(found["fix"])  # the fix as given drops the slot
        wait_for("the finding gone", lambda: finding() is None)


def test_a_role_without_pg_monitor_reads_what_it_may(pair: Pair) -> None:
    """No error, and no figure it may not see (no lag, no upstream), never a wrong one."""
    with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN")
    wait_for("the role on the replica", lambda: _can_connect(pair.replica, "plain"))
    found = {}
    for name, server in (("db-1", pair.primary), ("db-2", pair.replica)):
        src = PostgresSource(server.dsn.replace("user=postgres", "user=plain"))
        src.connect()
        try:
            node = replication_source.read_node(src, name, time.time(), None)
            replicas = replication_source.read_replicas(src, name, time.time())
        finally:
            src.close()
        found[name] = (node.role, node.upstream, [(r.name, r.replay_lag_s) for r in replicas])
    assert found == {"db-1": ("primary", "", [("db-2", None)]), "db-2": ("replica", "", [])}


def _can_connect(server: LocalPostgres, user: str) -> bool:
    try:
        psycopg.connect(server.dsn.replace("user=postgres", f"user={user}")).close()
    except psycopg.OperationalError:
        return False
    return True


def test_queries_cancelled_by_recovery_conflicts_are_an_event(pair: Pair) -> None:
    failed: list[str] = []

    def long_read() -> None:  # holds a snapshot of ticks on the replica for 10 s
        with psycopg.connect(pair.replica.dsn, autocommit=True) as conn:
            try:
                conn.execute("SELECT count(*) FROM ticks, pg_sleep(10)")
            except psycopg.Error as exc:
                failed.append(str(exc).splitlines()[0])

    reader = threading.Thread(target=long_read)
    reader.start()
    time.sleep(1.0)
    with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM ticks")
        conn.execute("VACUUM ticks")  # removes rows the replica's query still sees
    reader.join(15)
    with pair.open_store() as store:
        replica = wait_for("db-2", lambda: _server_id(store, "db-2"))
        [event] = wait_for("a conflict event", lambda: _events(store, replica, CONFLICTS))
    print(f"\nconflict: {failed} -> {event.detail}")
    assert failed and "conflict with recovery" in failed[0]
    assert event.detail.startswith("1 queries cancelled by recovery conflicts")


def _watch_replica_alone(
    pair: Pair, store: Path, receiver: AlertReceiver
) -> tuple[threading.Thread, threading.Event]:
    """A watch of the replica only (its primary not watched), paging to ``receiver``."""
    cfg = Settings(
        store=str(store),
        interval=INTERVAL,
        servers=(ServerEntry("r", pair.replica.dsn, {"role": "replica"}),),
        sections={"replication": {"lag_s": LAG_S, "hold": 2}},
    )
    stop = threading.Event()
    options = WatchOptions(channels=[WebhookChannel(receiver.url)])
    watch = threading.Thread(target=run_watch, args=(cfg, options, stop), daemon=True)
    watch.start()
    return watch, stop


def test_replica_side_lag_paged_once_across_a_restart(pair: Pair, tmp_path: Path) -> None:
    """The replica's own view (its primary not watched): lag and a paused replay paged; the
    watch restarted while it still lags goes on with the same page, and resolves it."""
    receiver = AlertReceiver().start()
    store = tmp_path / "alone.db"
    Store(store).close()  # created before the watch and the test open it
    watch, stop = _watch_replica_alone(pair, store, receiver)
    conn = psycopg.connect(pair.replica.dsn, autocommit=True)
    try:
        wait_for("r sampled", lambda: _sampled(store, "r"))
        conn.execute("SELECT pg_wal_replay_pause()")
        [fired] = wait_for("a lag page", lambda: _alerts(receiver, "replication_lag", "firing"))
        stop.set()
        watch.join(30)
        assert not watch.is_alive()
        restarted_at = time.time()
        watch, stop = _watch_replica_alone(pair, store, receiver)
        wait_for("r sampled again", lambda: _sampled(store, "r", after=restarted_at))
        time.sleep((2 + 3) * INTERVAL)  # past `hold`: a duplicate page would have come
        with Store(store) as st:
            [open_] = st.topology_incidents()
        conn.execute("SELECT pg_wal_replay_resume()")
        [back] = wait_for("resolved", lambda: _alerts(receiver, "replication_lag", "resolved"))
    finally:
        conn.execute("SELECT pg_wal_replay_resume()")
        conn.close()
        stop.set()
        watch.join(30)
        receiver.stop()
    summary = fired.body["diagnosis"]["summary"]
    print(f"\nreplica-side lag: {summary}; after the restart: {open_.id}; {back.body}")
    assert summary.startswith("replica r replays ") and "its replay is paused" in summary
    assert [a.body["status"] for a in receiver.alerts] == ["firing", "resolved"]
    assert open_.id == fired.body["incident"] == back.body["incident"]
    assert back.body["diagnosis"]["summary"].startswith("replica r caught up")


def _sampled(path: Path, name: str, after: float = 0.0) -> bool:
    with Store(path) as store:
        sid = _server_id(store, name)
        node = store.node_state(sid) if sid is not None else None
    return node is not None and node.reachable and node.at > after


def test_promotion_is_a_failover_event_alerted_and_history_stays(pair: Pair) -> None:
    names = ("db-1", "db-2", "db")
    with pair.open_store() as store:
        ids = {name: wait_for(name, lambda n=name: _server_id(store, n)) for name in names}
        for name, sid in ids.items():  # a failover is judged against each one's sample before it
            wait_for(f"{name} sampled", partial(store.node_state, sid, reachable=True))
        before = {name: store.interval_count(sid) for name, sid in ids.items()}
        pair.primary.stop()
        stopped_at = time.time()
        wait_for("db-1 unreachable", lambda: _events(store, ids["db-1"], UNREACHABLE))
        promoted_at = time.time()
        promote(pair.replica)
        [event] = wait_for("db-2 promoted", lambda: _events(store, ids["db-2"], PROMOTED))
        alert = wait_for("the failover page", lambda: _failover(pair.receiver, "replica db-2"))
        [moved] = wait_for("db moved", lambda: _events(store, ids["db"], MOVED))
        resolved = wait_for("the failover resolved", lambda: _resolved(pair.receiver, alert))
        # the settle is stored on the first live entry reaching the new primary: db-2 or the
        # multi-host "db", whichever registered first (their watchers start together)
        [settled] = [e for n in ("db-2", "db") for e in _events(store, ids[n], SETTLED)]
        samples = store.node_states(ids["db-2"], event.at, settled.at + 1e-3)
        time.sleep(3 * INTERVAL)
        after = {name: store.interval_count(sid) for name, sid in ids.items()}
        gaps = {n: store.gaps(ids[n], promoted_at - 5, time.time()) for n in ("db-2", "db")}
        replica_node = store.node_state(ids["db-2"])
        shown = webstore.Client(create_app(store)).get("/replication.json").json()
    summary = alert.body["diagnosis"]["summary"]
    print(
        f"\nfailover: event {event.at - promoted_at:.2f} s after pg_ctl promote, alert "
        f"{alert.received_at - promoted_at:.2f} s; db-1 stopped {promoted_at - stopped_at:.1f} s "
        f"before; intervals before {before}, after {after}; summary: {summary}"
        f"\nmulti-host DSN: {moved.kind} {moved.at - promoted_at:.1f} s after promote; its "
        f"gaps: {[g.detail for g in gaps['db']]}\nresolved {resolved.received_at - promoted_at:.1f}"
        f" s after promote: {resolved.body['diagnosis']['summary']}"
    )
    # one failover, one page (db-2 promoted, db following it) and one resolve notice
    assert [a.body["incident"] for a in _alerts(pair.receiver, "failover", "firing")] == [
        alert.body["incident"]
    ]
    assert resolved.body["diagnosis"]["summary"] == settled.detail
    assert settled.detail.startswith("failover over: db-2 is the primary (timeline 2); db-1 ")
    assert settled.detail.endswith("; stable for 3 intervals")
    assert len(samples) >= 3  # db-2's samples from the promotion's to the settled one
    # db-1 gone: paged once although db (reaching db-1 then) lost it too; still down: not resolved
    down = _alerts(pair.receiver, "server_unreachable", "firing")
    assert [a.body["diagnosis"]["server"] for a in down] in (["db-1"], ["db"]), down
    assert not _alerts(pair.receiver, "server_unreachable", "resolved")
    assert event.at - promoted_at <= 2 * INTERVAL + 0.5
    assert summary.startswith("replica db-2 promoted at ") and "timeline 1 -> 2" in summary
    assert "db-1 unreachable since" in summary
    assert str(pair.replica.port) in moved.detail
    assert after["db-1"] >= before["db-1"] > 0  # the stopped primary keeps its history
    assert after["db-2"] > before["db-2"] > 0  # the promoted replica goes on collecting
    assert after["db"] > before["db"] > 0  # the DSN that follows the primary: on the new one
    assert not [g for g in gaps["db-2"] if not g.partial], "promotion is no gap on db-2"
    assert replica_node is not None and replica_node.role == "primary"
    nodes = {n["server"]: n for n in shown["nodes"]}
    assert (nodes["db-2"]["role"], nodes["db-2"]["configured_role"]) == ("primary", "replica")
    assert not nodes["db-1"]["reachable"] and nodes["db-1"]["role"] == "primary"
    assert {"promoted", "unreachable", "node_changed"} <= {e["kind"] for e in shown["events"]}


def _events(store: Store, server_id: int, kind: str) -> list[TopologyEvent]:
    return [e for e in store.topology_events(server_id) if e.kind == kind]


def _resolved(receiver: AlertReceiver, firing: Alert) -> Alert | None:
    found = _alerts(receiver, "failover", "resolved")
    return next((a for a in found if a.body["incident"] == firing.body["incident"]), None)


def _failover(receiver: AlertReceiver, start: str) -> Alert | None:
    found = _alerts(receiver, "failover", "firing")
    return next((a for a in found if a.body["diagnosis"]["summary"].startswith(start)), None)
