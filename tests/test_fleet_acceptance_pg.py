"""Acceptance (issue 13): one `querywatch watch` process, five local clusters, an incident injected
on one of them: only that server pages, and the alert (a real HTTP receiver on 127.0.0.1) names
it and carries its labels. Stopping another cluster mid-run leaves the other four on cadence:
each of their intervals within 10% of the configured length.

Light on purpose: 16 MB shared_buffers, a few statements per second per server, 1 s intervals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MakePg
from workload import Load, Receiver, Statement, wait_until

from querywatch.localpg import LocalPostgres
from querywatch.store import Store

INTERVAL = 1.0
NAMES = ("db1", "db2", "db3", "db4", "db5")
SICK, STOPPED = "db2", "db4"
UNREACHABLE = ("server_unreachable", "failover")  # what a stopped server is paged as
SMALL = {"shared_buffers": "16MB", "max_connections": "20", "autovacuum": "off"}


def statements() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM fl_items WHERE id = %s", 20, lambda r: (r.randint(1, 20000),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM fl_items WHERE note LIKE %s",
            3,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
    }


@pytest.fixture(scope="module")
def clusters(make_pg: MakePg) -> dict[str, LocalPostgres]:
    found = {name: make_pg(SMALL) for name in NAMES}
    for server in found.values():
        with psycopg.connect(server.dsn, autocommit=True) as c:
            c.execute(
                "CREATE TABLE fl_items AS SELECT g AS id, md5(g::text) AS note "
                "FROM generate_series(1, 20000) g"
            )
            c.execute("ALTER TABLE fl_items ADD PRIMARY KEY (id)")
            c.execute("ANALYZE fl_items")
    return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def config(path: Path, clusters: dict[str, LocalPostgres]) -> Path:
    tables = "".join(
        f'[[servers]]\nname = "{name}"\ndsn = "{pg.dsn}"\n'
        f'labels = {{ env = "prod", team = "t{n}" }}\n\n'
        for n, (name, pg) in enumerate(clusters.items(), start=1)
    )
    path.write_text(f'interval = "{INTERVAL}s"\n\n{tables}')
    return path


def all_learned(store: Path) -> bool:
    try:
        with Store(store, create=False) as st:
            rows = st.status()
    except Exception:  # not created yet, or being created
        return False
    return all(not rows.get(f"detector:{n}", {"learning": True})["learning"] for n in NAMES)


def intervals_since(store: Path, since: float) -> dict[str, list[tuple[float, float]]]:
    with Store(store, create=False) as st:
        out = {}
        for s in st.servers():
            rows = st.summaries(s.id, since, time.time() + 60)
            out[s.name] = [(r.start, r.seconds) for r in rows if r.start >= since]
    return out


def test_five_clusters_one_pages_one_stopped_the_rest_on_cadence(
    clusters: dict[str, LocalPostgres], receiver: Receiver, tmp_path: Path
) -> None:
    store = tmp_path / "qw.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env |= {"QUERYWATCH_CONFIG": str(config(tmp_path / "querywatch.toml", clusters))}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.5"
    loads = {
        name: Load(pg.dsn, statements(), seed=n) for n, (name, pg) in enumerate(clusters.items())
    }
    log = (tmp_path / "watch.log").open("w")
    argv = [sys.executable, "-m", "querywatch", "watch", "--store", str(store)]
    argv += ["--alert-webhook", f"{receiver.url}/hook"]
    for load in loads.values():
        load.__enter__()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert wait_until(lambda: all_learned(store), 180), "the five detectors never all learned"
        time.sleep(3)
        loads[SICK].set_rate("scan", 40)  # the new code path runs the scan 13x as often
        time.sleep(2)
        clusters[STOPPED].stop()  # another server goes away mid-run
        stopped = time.time()
        firing = wait_until(
            lambda: [b for b in receiver.bodies("/hook") if b["status"] == "firing"], 20
        )
        assert firing, "no page for the injected incident"
        time.sleep(max(0.0, stopped + 10 - time.time()))  # ten more intervals after the stop
    finally:
        for load in loads.values():
            load.__exit__()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
        clusters[STOPPED].start()  # the module's clusters: a rerun finds all five up again
    text = (tmp_path / "watch.log").read_text()
    assert code == 0 and "Traceback" not in text, text

    # only the sick server paged for its workload, and the alert names it with its labels; the
    # stopped one is paged as unreachable (querywatch.topology); the other three never
    pages = [b for b in receiver.bodies("/hook") if b["status"] == "firing"]
    by_server = {(p["diagnosis"]["server"], p["diagnosis"]["verdict"]) for p in pages}
    assert {s for s, v in by_server if v not in UNREACHABLE} == {SICK}, by_server
    assert {s for s, v in by_server if v in UNREACHABLE} <= {STOPPED}, by_server
    pages = [p for p in pages if p["diagnosis"]["server"] == SICK]
    assert pages[0]["diagnosis"]["labels"] == {"env": "prod", "team": "t2"}
    assert any("fl_items WHERE note LIKE" in c["query"] for c in pages[0]["diagnosis"]["culprits"])
    assert "[db2]" in text and "[db4] collection failed" in text  # log lines name their server

    # the four others stayed on cadence after the stop: each interval within 10% of 1 s
    found = intervals_since(store, stopped)
    for name in NAMES:
        if name == STOPPED:
            continue
        lengths = [seconds for _, seconds in found[name]]
        assert len(lengths) >= 8, (name, lengths)
        off = [round(x, 3) for x in lengths if abs(x - INTERVAL) > 0.1 * INTERVAL]
        assert not off, f"{name}: intervals off cadence after {STOPPED} stopped: {off}"
        print(f"{name}: {len(lengths)} intervals, {min(lengths):.3f}-{max(lengths):.3f} s")
    assert len(found[STOPPED]) <= 1  # at most the one in flight when it stopped

    # status: the fleet, trouble first (the stopped one down, the sick one firing)
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "status", "--store", str(store), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(result.stdout)["fleet"]["servers"]
    health = {r["server"]: r["health"] for r in rows}
    assert health[STOPPED] == "down" and health[SICK] in ("firing", "pending", "ok")
    assert rows[0]["server"] in (SICK, STOPPED)
