"""`querywatch watch` end to end: a real server, generated workloads, a real webhook receiver.

Intervals are 1 s, so the detector leaves its learning period (12 intervals) after about 13 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit
from workload import (
    Load,
    Receiver,
    Statement,
    closed_port,
    diagnose_json,
    learned,
    mark_deploy,
    wait_until,
    watch_process,
)

INTERVAL = 1.0
SLACK_S = 1.5  # snapshot, detection, diagnosis and the HTTP POST after an interval ends


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS wl_items, wl_accounts")
        c.execute(
            "CREATE TABLE wl_items AS SELECT g AS id, g % 100 AS category, "
            "'user' || g || '@example.com' AS email, md5(g::text) AS note "
            "FROM generate_series(1, 50000) g"
        )
        c.execute("ALTER TABLE wl_items ADD PRIMARY KEY (id)")
        c.execute("CREATE INDEX wl_items_email ON wl_items (email)")
        c.execute("CREATE TABLE wl_accounts (id int PRIMARY KEY, balance int)")
        c.execute("INSERT INTO wl_accounts SELECT g, 100 FROM generate_series(1, 10) g")
        c.execute("ANALYZE wl_items")
    return pg_dsn


def steady() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM wl_items WHERE id = %s", 100, lambda r: (r.randint(1, 50000),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM wl_items WHERE note LIKE %s",
            3,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
        "hot": Statement(
            "SELECT count(*) FROM wl_items WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
        "by_email": Statement(
            "SELECT id FROM wl_items WHERE email = %s",
            20,
            lambda r: (f"user{r.randint(1, 50000)}@example.com",),
        ),
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def firing(receiver: Receiver) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies("/hook") if b["status"] == "firing"]


def resolved(receiver: Receiver) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies("/hook") if b["status"] == "resolved"]


def channel_failed(store: Path, port: int) -> bool:
    """`querywatch status` reports the unreachable channel's failed deliveries."""
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "status", "--store", str(store), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    channels = json.loads(result.stdout)["status"].get("alerts", {}).get("channels", [])
    return any(f":{port}" in c["target"] and c["failed"] >= 1 and c["last_error"] for c in channels)


def first_firing_at(receiver: Receiver) -> float | None:
    times = [
        r.at
        for r in receiver.received
        if r.path.startswith("/hook") and r.body["status"] == "firing"
    ]
    return min(times) if times else None


def test_frequency_x10_after_deploy_pages_names_culprit_and_resolves(
    shop: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    dead_port = closed_port()
    dead = f"http://127.0.0.1:{dead_port}/unreachable"
    with (
        Load(shop, steady()) as load,
        watch_process(
            shop, store, "--alert-webhook", f"{receiver.url}/hook", "--alert-webhook", dead
        ),
    ):
        assert learned(store), "the detector never left its learning period"
        time.sleep(3)
        mark_deploy(store, "v2.3")
        onset = time.time()
        load.set_rate("hot", 40)  # the new code path calls it 10x as often
        assert wait_until(lambda: firing(receiver), 15), "no firing alert"
        latency = first_firing_at(receiver) - onset  # type: ignore[operator]
        assert latency <= 2 * INTERVAL + SLACK_S, f"alert came {latency:.1f} s after the onset"
        time.sleep(2)
        stop = time.time()
        load.set_rate("hot", 4)
        assert wait_until(lambda: resolved(receiver), 20), "no resolved notification"
        resolved_after = (
            min(r.at for r in receiver.received if r.body.get("status") == "resolved") - stop
        )
        assert resolved_after <= 3 * INTERVAL + SLACK_S + 1.0, (
            f"resolved {resolved_after:.1f} s after the stop"
        )
        assert wait_until(lambda: channel_failed(store, dead_port), 20), "status shows no failure"
        end = time.time()
    alert = firing(receiver)[0]
    diagnosis = alert["diagnosis"]
    assert set(alert) == {"status", "incident", "diagnosis", "docs_url"}
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    assert alert["docs_url"].endswith("/docs/reference/verdicts/query_regression/")
    culprit = diagnosis["culprits"][0]
    assert culprit["query"] == "SELECT count(*) FROM wl_items WHERE category = $1"
    assert culprit["kind"] == "frequency"
    assert culprit["calls_per_s"]["window"] > 5 * culprit["calls_per_s"]["baseline"]
    assert [d["suspect"] for d in diagnosis["deploys"] if d["version"] == "v2.3"] == [True], (
        diagnosis
    )
    assert resolved(receiver)[0]["incident"] == alert["incident"]
    # the unreachable webhook did not stop collection: intervals kept coming to the end
    later = diagnose_json(store, onset - 2, onset + 4)
    assert later["culprits"][0]["query"] == culprit["query"]
    last_end = storekit.value(store, "SELECT max(end) FROM intervals")
    assert last_end >= end - 3 * INTERVAL


def test_dropped_index_is_a_latency_regression_without_suspect(
    shop: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    try:
        with (
            Load(shop, steady()),
            watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
        ):
            assert learned(store)
            time.sleep(3)
            with psycopg.connect(shop, autocommit=True) as c:
                c.execute("DROP INDEX wl_items_email")
            assert wait_until(lambda: firing(receiver), 15), "no firing alert"
    finally:
        with psycopg.connect(shop, autocommit=True) as c:
            c.execute("CREATE INDEX IF NOT EXISTS wl_items_email ON wl_items (email)")
    diagnosis = firing(receiver)[0]["diagnosis"]
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    culprit = diagnosis["culprits"][0]
    assert culprit["query"] == "SELECT id FROM wl_items WHERE email = $1"
    assert culprit["kind"] == "latency"
    assert not any(d["suspect"] for d in diagnosis["deploys"])


def test_new_expensive_query(shop: str, tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "qw.db"
    with (
        Load(shop, steady()) as load,
        watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        assert learned(store)
        time.sleep(2)
        load.statements["report"] = Statement(
            "SELECT category, count(*) FROM wl_items WHERE note > %s GROUP BY category", 0
        )
        load.statements["report"].params = lambda r: (f"{r.randint(0, 9)}",)
        load.set_rate("report", 10)
        assert wait_until(lambda: firing(receiver), 15), "no firing alert"
    culprit = firing(receiver)[0]["diagnosis"]["culprits"][0]
    assert culprit["kind"] == "new_query"
    assert culprit["query"].startswith("SELECT category, count(*) FROM wl_items WHERE note >")


def test_uniform_surge_is_traffic_not_a_query_regression(
    shop: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    with (
        Load(shop, steady()) as load,
        watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        assert learned(store)
        time.sleep(2)
        start = time.time()
        load.scale(3.0)
        time.sleep(10)
        end = time.time()
    verdicts = [b["diagnosis"]["verdict"] for b in firing(receiver)]
    assert "query_regression" not in verdicts, [b["diagnosis"]["summary"] for b in firing(receiver)]
    diagnosis = diagnose_json(store, start, end)
    assert diagnosis["verdict"] == "traffic_surge", diagnosis["summary"]
    assert diagnosis["traffic_factor"] == pytest.approx(3.0, rel=0.25)


def test_innocent_deploy_is_healthy_and_silent(
    shop: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    with (
        Load(shop, steady()),
        watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        assert learned(store)
        time.sleep(2)
        mark_deploy(store, "v2.4")
        at = time.time()
        time.sleep(10)
        end = time.time()
    assert receiver.bodies("/hook") == []
    diagnosis = diagnose_json(store, at, end)
    assert diagnosis["verdict"] == "healthy", diagnosis["summary"]
    assert [d["suspect"] for d in diagnosis["deploys"] if d["version"] == "v2.4"] == [False]


def test_idle_in_transaction_blocker_is_lock_contention(
    shop: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    waiters: list[threading.Thread] = []
    with (
        Load(shop, steady()),
        watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        assert learned(store)
        time.sleep(2)
        blocker = psycopg.connect(shop)
        blocker.execute(
            "SELECT * FROM wl_accounts WHERE id = %s FOR UPDATE", (1,)
        )  # then idle in transaction
        connections = [psycopg.connect(shop, autocommit=True) for _ in range(4)]
        for c in connections:
            t = threading.Thread(
                target=c.execute,
                args=("UPDATE wl_accounts SET balance = balance + 1 WHERE id = 1",),
                daemon=True,
            )
            t.start()
            waiters.append(t)
        try:
            assert wait_until(lambda: firing(receiver), 15), "no firing alert"
        finally:
            blocker.rollback()
            blocker.close()
            for t in waiters:
                t.join(10)
            for c in connections:
                c.close()
    diagnosis = firing(receiver)[0]["diagnosis"]
    assert diagnosis["verdict"] == "lock_contention", diagnosis["summary"]
    culprit = diagnosis["culprits"][0]
    assert culprit["kind"] == "blocking"
    assert culprit["query"] == "SELECT * FROM wl_accounts WHERE id = $1 FOR UPDATE"


def test_jittery_steady_workload_never_pages(shop: str, tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "qw.db"
    with (
        Load(shop, steady(), jitter=0.3, seed=7),
        watch_process(shop, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        assert learned(store)
        time.sleep(60)  # 60 more intervals of +-30% jitter
        intervals = storekit.value(store, "SELECT count(*) FROM intervals")
    assert intervals >= 70
    assert receiver.bodies("/hook") == []
