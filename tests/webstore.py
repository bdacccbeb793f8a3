"""Stores for the web tests.

``collected(dsn, folder)`` fills a store with a real collector run, once per test session: a
Watcher and a Monitor (detection and diagnosis) on the session's PostgreSQL at a 0.5 s interval,
a steady workload, a deploy marker, then one statement called ten times as often until an
incident fires, then back to normal until it resolves.

``synthetic(path, now)`` writes exactly known figures through the Store API, for tests that check
computed values.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from workload import Load, Statement, wait_until

from querywatch.detect import Detector
from querywatch.model import (
    Counters,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.monitor import Monitor
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher

SERVER = "webtest"
DEPLOY = "v2.3"
HOT_SQL = "SELECT count(*) FROM web_items WHERE category = $1"
EMAIL_DOMAIN = "@secret-customer.example"  # parameter values the pages must never show


@dataclass(frozen=True)
class Collected:
    path: Path
    deploy_at: float
    incident_id: str
    hot_fingerprint: str
    secret_values: tuple[str, ...]


_BUILT: dict[str, Collected] = {}


def collected(dsn: str, folder: Path) -> Collected:
    if dsn not in _BUILT:
        _BUILT[dsn] = _collect(dsn, folder / "collected.db")
    return _BUILT[dsn]


def _tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS web_items")
        c.execute(
            "CREATE TABLE web_items AS SELECT g AS id, g % 50 AS category, "
            f"'user' || g || '{EMAIL_DOMAIN}' AS email FROM generate_series(1, 20000) g"
        )
        c.execute("ALTER TABLE web_items ADD PRIMARY KEY (id)")
        c.execute("CREATE INDEX web_items_email ON web_items (email)")
        c.execute("ANALYZE web_items")


def _statements() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM web_items WHERE id = %s", 60, lambda r: (r.randint(1, 20000),)
        ),
        "by_email": Statement(
            "SELECT id FROM web_items WHERE email = %s",
            10,
            lambda r: (f"user{r.randint(1, 20000)}{EMAIL_DOMAIN}",),
        ),
        "hot": Statement(
            "SELECT count(*) FROM web_items WHERE category = %s", 4, lambda r: (r.randint(0, 49),)
        ),
    }


def _collect(dsn: str, path: Path) -> Collected:
    _tables(dsn)
    store = Store(path)
    watcher = Watcher(PostgresSource(dsn), store, SERVER, 0.5, 0.1)
    watcher.start()
    assert watcher.server_id is not None
    monitor = Monitor(store, watcher.server_id, SERVER, Detector())
    watcher.on_interval = monitor.on_interval
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        with Load(dsn, _statements(), seed=7) as load:
            assert wait_until(lambda: monitor.last and not monitor.last.learning, 30), "learning"
            time.sleep(1.5)
            deploy = store.add_deploy(DEPLOY, time.time(), "web test")
            load.set_rate("hot", 40)
            incident = wait_until(lambda: _incident(store, IncidentState.FIRING), 20)
            assert incident, "no incident fired"
            time.sleep(3.0)  # the hot phase fills most of the window the contract test diagnoses
            load.set_rate("hot", 4)
            wait_until(lambda: _incident(store, IncidentState.RESOLVED), 15)
            time.sleep(1.0)
    finally:
        watcher.stop()
        thread.join(10)
        watcher.source.close()
    store.maintain()
    fingerprint = _fingerprint(store, HOT_SQL)
    store.close()
    return Collected(path, deploy.at, incident, fingerprint, (EMAIL_DOMAIN, "user1"))


def _incident(store: Store, state: IncidentState) -> str | None:
    for s in store.incidents():
        if s.incident.state is state:
            return s.incident.id
    return None


def _fingerprint(store: Store, query: str) -> str:
    found = [s.fingerprint for s in store.statements().values() if s.query == query]
    assert found, f"{query!r} not collected: {[s.query for s in store.statements().values()]}"
    return found[0]


# -- synthetic stores with known figures ------------------------------------------------------------
A = StatementKey(1, 10, 101)
B = StatementKey(1, 10, 202)
FPS = {A: "fa", B: "fb"}
TEXTS = {"fa": "SELECT a FROM t WHERE id = $1", "fb": "UPDATE t SET x = $1 WHERE id = $2"}


def synthetic(path: Path, now: float, hours: float = 3.0, statements: int = 2) -> Store:
    """10 s intervals over ``hours`` before ``now``: fa runs 10 calls of 2 ms per interval, fb 5
    calls of 4 ms (so 2 and 2 ms of DB time per second); with ``statements`` > 2 more statements
    n = 3.. run n calls of 1 ms each. Rolled up as the watcher would; a deploy and an incident."""
    store = Store(path)
    srv = store.server(SERVER)
    keys = {A: "fa", B: "fb"}
    texts = dict(TEXTS)
    for n in range(3, statements + 1):
        keys[StatementKey(1, 10, 1000 + n)] = f"f{n:03d}"
        texts[f"f{n:03d}"] = f"SELECT c{n} FROM t{n} WHERE id = $1"
    t = now - hours * 3600
    first = True
    while t + 10 <= now:
        deltas = [
            StatementDelta(A, Counters(calls=10, exec_ms=20.0, rows=10)),
            StatementDelta(B, Counters(calls=5, exec_ms=20.0, rows=5)),
        ]
        deltas += [
            StatementDelta(k, Counters(calls=k.queryid - 1000, exec_ms=float(k.queryid - 1000)))
            for k in keys
            if k not in (A, B)
        ]
        interval = Interval(t, t + 10, tuple(deltas), None)
        store.record_interval(srv.id, interval, keys if first else {}, texts if first else {})
        first = False
        t += 10
        if int(t) % 600 == 0:
            store.maintain(t)
    store.maintain(now)
    store.add_deploy("v1.0", now - 1800, "synthetic")
    opened = now - 1200
    incident = Incident(
        "inc-1",
        "fa",
        IncidentState.RESOLVED,
        opened,
        opened + 20,
        opened + 300,
        ("calls_spike",),
        (
            IncidentEvent(opened + 20, IncidentState.FIRING, "calls/s x10"),
            IncidentEvent(opened + 300, IncidentState.RESOLVED, "3 clean intervals"),
        ),
    )
    diagnosis = {
        "verdict": "query_regression",
        "summary": "fa holds the extra database time",
        "culprits": [{"fingerprint": "fa", "query": TEXTS["fa"], "kind": "frequency"}],
        "deploys": [],
    }
    store.save_incident(srv.id, incident, diagnosis)
    store.set_status(
        f"collector:{SERVER}", {"last_success": now - 5, "intervals": 1080, "gaps": 1, "dealloc": 3}
    )
    store.set_status(f"detector:{SERVER}", {"learning": False, "open_incidents": []})
    return store


# -- calling the app in-process ---------------------------------------------------------------------
class Client:
    """The ASGI app through ``httpx.ASGITransport``, called synchronously (one event loop per
    request; the app's sync routes run in anyio's thread pool as under uvicorn)."""

    def __init__(self, app: Any, base_url: str = "http://127.0.0.1") -> None:
        self.app = app
        self.base_url = base_url

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
