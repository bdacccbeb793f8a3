"""Headroom and redistribution on real PostgreSQL (issue 15, items 4 and 5): a primary and a
streaming replica made with pg_basebackup, both watched into one store.

Acceptance: a read-only culprit during an incident on the primary: the diagnosis names the
replica that could take it and the headroom figures; a write culprit is never proposed for a
replica. ``top --capacity`` gives each statement's saturating rate against the server's cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import webstore
from workload import Load, Receiver, Statement, learned, wait_until, watch_process

from querywatch.capacity import read_only
from querywatch.demo.replica import start_replica
from querywatch.detect import Detector
from querywatch.localpg import LocalPostgres
from querywatch.model import Diagnosis, Verdict
from querywatch.monitor import Monitor
from querywatch.replication import NodeState, ReplicaState
from querywatch.report import diagnosis_to_json, diagnosis_to_text
from querywatch.service import with_cores
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher
from querywatch.web import create_app
from querywatch.web.templates import pages

ROWS = 60_000
READ = "SELECT count(*) FROM cap_items WHERE note = %s"  # a sequential scan: a few ms per call
WRITE = "UPDATE cap_items SET hits = hits + 1 WHERE note = %s"  # the same scan, and a write
LIGHT = "SELECT note FROM cap_items WHERE k = %s"
REPLICA_SAMPLE = """
SELECT application_name, coalesce(host(client_addr), '') AS client_addr, state, sync_state,
    extract(epoch FROM replay_lag)::float8 AS lag_s,
    pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS lag_bytes
FROM pg_stat_replication
"""


@dataclass
class Cluster:
    primary: LocalPostgres
    replica: LocalPostgres


@pytest.fixture(scope="module")
def cluster(make_pg: Any) -> Iterator[Cluster]:
    primary: LocalPostgres = make_pg({"wal_level": "replica", "max_wal_senders": "4"})
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cap_items")
        conn.execute(
            "CREATE TABLE cap_items (k int PRIMARY KEY, note text NOT NULL, hits int DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO cap_items (k, note) SELECT g, 'note ' || g FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute("VACUUM ANALYZE cap_items")
    replica = start_replica(primary, "db-2")
    try:
        yield Cluster(primary, replica)
    finally:
        replica.cleanup()


class Watched:
    """The primary (db-1) and the replica (db-2) collected into one store each second, each
    with its own monitor; the primary's pg_stat_replication sampled with each interval."""

    def __init__(self, store: Store, cluster: Cluster) -> None:
        self.store = store
        self.primary = self._watch(cluster.primary.dsn, "db-1")
        self.replica = self._watch(cluster.replica.dsn, "db-2")
        self.sampler = psycopg.connect(cluster.primary.dsn, autocommit=True)

    def _watch(self, dsn: str, name: str) -> tuple[Watcher, Monitor]:
        watcher = Watcher(PostgresSource(dsn), self.store, name, interval_s=1.0)
        watcher.start()
        assert watcher.server_id is not None
        settings = with_cores(Detector().settings, watcher.source)  # the server's own cores
        monitor = Monitor(self.store, watcher.server_id, name, Detector(settings))
        watcher.on_interval = monitor.on_interval
        return watcher, monitor

    def tick(self, seconds: int) -> None:
        for _ in range(seconds):
            time.sleep(1.0)
            for watcher, _ in (self.primary, self.replica):
                watcher.collect_once()
            self._sample_replication()

    def _sample_replication(self) -> None:
        """What the primary's pg_stat_replication says of its replicas (querywatch.replication
        records), as the watcher's replication sampling keeps them."""
        at = time.time()
        rows = self.sampler.execute(REPLICA_SAMPLE).fetchall()
        replicas = [
            ReplicaState("db-1", r[0], r[0], r[1], r[2], r[3], r[4], r[5], at, watched=r[0])
            for r in rows
        ]
        node = NodeState("db-1", at, True, in_recovery=False)
        self.store.record_replication(self.primary[1].server_id, node, replicas)

    def close(self) -> None:
        self.sampler.close()
        for watcher, _ in (self.primary, self.replica):
            watcher.source.close()


def incident(watched: Watched, dsn: str, culprit: str) -> tuple[Diagnosis, float, float]:
    """6 s of light traffic, then 8 s with the culprit at 25/s: the diagnosis of those 8 s."""
    light = {"light": Statement(LIGHT, 20.0, lambda r: (r.randint(1, ROWS),))}
    with Load(dsn, light, max_s=60) as load:
        watched.tick(6)
        start = time.time()
        with Load(dsn, {"culprit": Statement(culprit, 25.0, lambda r: (f"x{r.random()}",))}):
            watched.tick(8)
        end = time.time()
    assert not load.errors, load.errors
    return watched.primary[1].diagnose_window(start, end), start, end


@pytest.fixture
def watched(cluster: Cluster, tmp_path: Path) -> Iterator[Watched]:
    with Store(tmp_path / "qw.db") as store:
        w = Watched(store, cluster)
        try:
            w.tick(2)
            yield w
        finally:
            w.close()


def test_a_read_only_culprit_is_proposed_for_the_replica(
    cluster: Cluster, watched: Watched
) -> None:
    found, _, _ = incident(watched, cluster.primary.dsn, READ)
    text = diagnosis_to_text(found)
    print(text)
    assert found.verdict is Verdict.QUERY_REGRESSION, found.summary
    top = found.culprits[0]
    assert "cap_items WHERE note" in top.query and read_only(top.query).ok
    cap = found.capacity
    assert cap is not None, "no capacity: cores unknown?"
    cores = watched.primary[1].detector.settings.cpu_cores
    assert cores and cap.headroom.cores == cores
    # the figures are the culprit's own: saturating rate = cores x 1000 / mean ms
    assert cap.statement.mean_ms == pytest.approx(top.mean_ms.window)
    assert cap.statement.calls_per_s == pytest.approx(top.calls_per_s.window)
    assert cap.statement.saturating_calls_per_s == pytest.approx(cores * 1000 / top.mean_ms.window)
    window = (found.window_start, found.window_end)
    rows, seconds = watched.store.totals(watched.primary[1].server_id, *window)
    total = sum(r.counters.exec_ms for r in rows) / seconds
    assert cap.headroom.db_ms_per_s == pytest.approx(total)
    assert cap.headroom.db_ms_per_s >= top.calls_per_s.window * top.mean_ms.window * 0.9
    # the replica is named, with its lag and load
    assert [p.replica for p in cap.proposed] == ["db-2"], cap.placements
    placed = cap.proposed[0]
    assert placed.lag_s is not None and placed.lag_s <= cap.settings.max_lag_s
    assert placed.busy_after is not None and placed.busy_before is not None
    assert placed.busy_after <= cap.settings.max_busy * (placed.cores or 0)
    doc = diagnosis_to_json(found)
    capacity = doc["capacity"]
    assert isinstance(capacity, dict) and capacity["proposed"] == ["db-2"]
    assert capacity["read_only"] is True
    assert f"saturates {cores} cores at" in text and "replica db-2 could take" in text
    assert "headroom: statements keep" in text
    html = pages.incident_diagnosis(doc, [])  # the incident page and its HTML report
    assert 'id="headroom"' in html and "replica db-2 could take all" in html


def test_a_write_culprit_is_never_proposed(cluster: Cluster, watched: Watched) -> None:
    found, _, _ = incident(watched, cluster.primary.dsn, WRITE)
    print(diagnosis_to_text(found))
    assert found.verdict is Verdict.QUERY_REGRESSION, found.summary
    top = found.culprits[0]
    assert top.query.startswith("UPDATE cap_items")
    cap = found.capacity
    assert cap is not None
    assert not cap.read_only.ok and cap.placements == () and cap.proposed == ()
    assert watched.store.replicas(watched.primary[1].server_id), "the replica is known"
    doc = diagnosis_to_json(found)
    capacity = doc["capacity"]
    assert isinstance(capacity, dict)
    assert capacity["proposed"] == [] and capacity["read_only"] is False
    assert "not for a replica: it is not a SELECT (UPDATE)" in diagnosis_to_text(found)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    env["COLUMNS"] = "200"  # the table's headers on one line
    return subprocess.run(
        [sys.executable, "-m", "querywatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_top_capacity(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "top.db"
    with Store(path) as store:
        watcher = Watcher(PostgresSource(cluster.primary.dsn), store, "db-1", interval_s=1.0)
        watcher.start()
        light = {"read": Statement(READ, 10.0, lambda r: (f"x{r.random()}",))}
        with Load(cluster.primary.dsn, light, max_s=30):
            for _ in range(4):
                time.sleep(1.0)
                watcher.collect_once()
        watcher.source.close()
    unknown = run("top", "--store", str(path), "--capacity")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert unknown.stderr.count("\n") == 1 and "--cpu-cores" in unknown.stderr
    given = run("top", "--store", str(path), "--capacity", "--cpu-cores", "4", "--format", "json")
    assert given.returncode == 0, given.stderr
    doc = json.loads(given.stdout)
    assert doc["cores"] == {"count": 4, "how": "the setting"}
    row = next(s for s in doc["statements"] if "cap_items WHERE note" in s["query"])
    cap = row["capacity"]
    assert cap["saturating_calls_per_s"] == pytest.approx(4000 / row["mean_ms"], rel=1e-3)
    assert cap["utilisation"] == pytest.approx(row["calls_per_s"] * row["mean_ms"] / 4000, rel=1e-2)
    with Store(path) as store:  # what a watcher writes: its detector status holds the cores
        store.set_status("detector:db-1", {"learning": False, "cpu_cores": 3})
    stored = run("top", "--store", str(path), "--capacity")
    assert stored.returncode == 0, stored.stderr
    assert "3 cores" in stored.stdout and "saturates at /s" in stored.stdout
    plain = run("top", "--store", str(path), "--format", "json")
    assert "capacity" not in plain.stdout
    # the statement page says the same, from the cores the watcher wrote
    with Store(path) as store:
        client = webstore.Client(create_app(store))
        ctx = client.get(f"/statements/{row['fingerprint']}.json").json()
        html = client.get(f"/statements/{row['fingerprint']}").text
    cap, totals = ctx["capacity"], ctx["totals"]
    assert cap["cores"] == 3 and cap["read_only"] is True
    assert cap["mean_ms"] == pytest.approx(totals["mean_ms"], rel=1e-3)
    assert cap["saturating_calls_per_s"] == pytest.approx(3000 / totals["mean_ms"], rel=1e-3)
    assert 'id="capacity"' in html and "a replica could serve it" in html


def test_watch_pages_with_the_replica_named(cluster: Cluster, tmp_path: Path) -> None:
    """The whole path: `querywatch watch` on the primary and the replica (--dsn twice), the
    replica found in the primary's pg_stat_replication (querywatch.topology), a read-only
    culprit pages, and the page names the replica with the headroom figures."""
    path = tmp_path / "fleet.db"
    receiver = Receiver()
    light = {"light": Statement(LIGHT, 20.0, lambda r: (r.randint(1, ROWS),))}
    culprit = {"culprit": Statement(READ, 0.0, lambda r: (f"x{r.random()}",))}
    args = ("--dsn", cluster.replica.dsn, "--alert-webhook", receiver.url)
    try:
        with (
            watch_process(cluster.primary.dsn, path, *args),
            Load(cluster.primary.dsn, light, max_s=150),
            Load(cluster.primary.dsn, culprit, max_s=150) as load,
        ):
            assert learned(path, timeout=90), "the watcher did not finish learning"
            time.sleep(2.0)
            load.set_rate("culprit", 25.0)
            fired = wait_until(lambda: _firing(receiver), timeout=40)
            assert fired, "no page for the read-only culprit"
    finally:
        receiver.close()
    doc = fired["diagnosis"]
    with Store(path) as store:
        names = {s.name for s in store.servers()}
    replica = next(n for n in names if n != doc["server"])
    assert "cap_items WHERE note" in doc["culprits"][0]["query"]
    capacity = doc["capacity"]
    print(json.dumps(capacity["lines"], indent=1))
    assert capacity["read_only"] is True
    assert capacity["proposed"] == [replica], capacity["replicas"]
    assert capacity["headroom"]["cores"] >= 1 and capacity["headroom"]["db_ms_per_s"] > 0
    assert any(f"replica {replica} could take" in line for line in capacity["lines"])


def _firing(receiver: Receiver) -> dict[str, Any] | None:
    for body in receiver.bodies():
        diagnosis = body.get("diagnosis") or {}
        culprits = diagnosis.get("culprits") or [{}]
        if body.get("status") == "firing" and "cap_items WHERE note" in culprits[0].get(
            "query", ""
        ):
            return dict(body)
    return None


def test_one_shot_diagnosis_gives_the_headroom(cluster: Cluster) -> None:
    """`diagnose --dsn ... --now` (no store) reads the server's cores and says the headroom."""
    fresh = "SELECT count(*) FROM cap_items WHERE note LIKE %s"
    load = {"fresh": Statement(fresh, 25.0, lambda r: (f"y{r.random()}%",))}
    # the statement starts once the sample has begun (the CLI says "sampling" on connecting, just
    # before its first snapshot), so it is new against the server's counters; a load already
    # running at the first snapshot would be this young server's normal: healthy
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    argv = [sys.executable, "-m", "querywatch", "diagnose", "--dsn", cluster.primary.dsn]
    argv += ["--now", "--sample", "4s", "--format", "json"]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stderr is not None
        said = proc.stderr.readline()  # blocks until connected (or the error line)
        with Load(cluster.primary.dsn, load, max_s=60):
            out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, said + err)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["culprits"], (doc["verdict"], doc["summary"], done.stderr)
    assert "note LIKE" in doc["culprits"][0]["query"], doc["summary"]
    capacity = doc["capacity"]
    culprit = doc["culprits"][0]
    cores = capacity["headroom"]["cores"]
    assert cores >= 1 and capacity["headroom"]["db_ms_per_s"] > 0
    saturating = capacity["statement"]["saturating_calls_per_s"]
    assert saturating == pytest.approx(cores * 1000 / culprit["mean_ms"]["window"], rel=0.01)
    assert capacity["read_only"] is True and capacity["proposed"] == []
    assert "its replicas are not known here" in capacity["lines"][-1]
