"""A restarted watcher takes back its open incidents (querywatch.restore): no second page, a
resolve once the regression clears, the incident's intervals kept out of the warm-up baseline.

The first tests drive the Monitor over a real SQLite store with recorded intervals; the last runs
`querywatch watch` as a subprocess on a real PostgreSQL with a real webhook receiver, and
restarts it while an incident fires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit
from conftest import MakePg
from workload import Load, Receiver, Statement, learned, wait_until, watch_process

from querywatch import restore
from querywatch.detect import Detector, DetectSettings, Transition
from querywatch.model import (
    Counters,
    DatabaseCounters,
    Incident,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.monitor import Monitor
from querywatch.store import Store

HOT, LOOKUP = StatementKey(1, 10, 42), StatementKey(1, 10, 43)
FINGERPRINTS = {HOT: "fp-hot", LOOKUP: "fp-lookup"}
TEXTS = {"fp-hot": "SELECT hot", "fp-lookup": "SELECT lookup"}


def record(store: Store, server: int, end: float, hot_per_s: float) -> tuple[int, Interval]:
    """A 1 s interval ending at ``end`` where "hot" runs at ``hot_per_s`` (2 ms a call)."""
    hot = Counters(calls=hot_per_s, exec_ms=hot_per_s * 2.0, rows=hot_per_s)
    lookup = Counters(calls=100, exec_ms=10, rows=100)
    deltas = (StatementDelta(HOT, hot), StatementDelta(LOOKUP, lookup))
    interval = Interval(end - 1, end, deltas, DatabaseCounters())
    return store.record_interval(server, interval, FINGERPRINTS, TEXTS), interval


def watching(store: Store, transitions: list[Transition]) -> Monitor:
    server = store.server("db").id
    monitor = Monitor(store, server, "db", Detector(DetectSettings()))
    monitor.on_transition = lambda t, doc: transitions.append(t)
    return monitor


def first_run(store: Store, transitions: list[Transition]) -> float:
    """20 steady intervals, then "hot" at 10x for 4: it fires. Returns the last interval's end."""
    monitor = watching(store, transitions)
    for end in range(1, 21):
        monitor.on_interval(*record(store, monitor.server_id, float(end), 4))
    for end in range(21, 25):
        monitor.on_interval(*record(store, monitor.server_id, float(end), 40))
    assert [t.status for t in transitions] == [IncidentState.FIRING]
    return 24.0


def test_restart_restores_the_firing_incident_and_resolves_it_once(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as store:
        first: list[Transition] = []
        last = first_run(store, first)
        fired = first[0].incident
        again: list[Transition] = []
        monitor = watching(store, again)
        # the 4 hot intervals stay out of the baseline: 20 steady ones seed it
        assert monitor.warm_up(last + 2, 360) == 20
        [restored] = monitor.detector.incidents
        assert (restored.id, restored.state, restored.fired_at) == (
            fired.id,
            IncidentState.FIRING,
            fired.fired_at,
        )
        assert restored.rules == fired.rules and "fp-hot" in restored.subjects
        server = monitor.server_id
        for end in range(27, 33):  # still hot: it joins the restored incident, no second page
            monitor.on_interval(*record(store, server, float(end), 40))
        assert again == []
        assert [i.id for i in monitor.detector.incidents] == [fired.id]
        for end in range(33, 36):  # clean: resolved after resolve_intervals
            monitor.on_interval(*record(store, server, float(end), 4))
        assert [(t.status, t.incident.id, t.at) for t in again] == [
            (IncidentState.RESOLVED, fired.id, 35.0)
        ]
        [stored] = store.incidents(server)
        assert stored.incident.state is IncidentState.RESOLVED
        assert stored.incident.fired_at == fired.fired_at  # not fired again


def test_without_the_restore_the_still_hot_statement_is_the_new_normal(tmp_path: Path) -> None:
    """The control: the same history seeded with the hot intervals (the bug) no longer pages
    for a rollout still running; warm-up with them left out still judges it anomalous."""
    with Store(tmp_path / "qw.db") as store:
        last = first_run(store, [])
        server = store.server("db").id
        incidents = [s.incident for s in store.incidents(server)]
        history = store.summaries(server, 0, last)
        kept, excluded = restore.outside_incidents(history, incidents, 360)
        assert (len(kept), excluded) == (20, 4)
        capped, only = restore.outside_incidents(history, incidents, 2)
        assert (len(capped), only) == (22, 2)  # a long incident becomes the normal, as live


def test_data_gone_longer_than_the_resolve_window_closes_it_at_start(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as store:
        first: list[Transition] = []
        last = first_run(store, first)
        again: list[Transition] = []
        monitor = watching(store, again)
        later = last + 3 + restore.STALE_MARGIN_S + 60
        assert monitor.warm_up(later, 3600) == 20
        assert monitor.detector.incidents == ()
        assert [(t.status, t.incident.id, t.at) for t in again] == [
            (IncidentState.RESOLVED, first[0].incident.id, later)
        ]
        [stored] = store.incidents(monitor.server_id)
        assert stored.incident.state is IncidentState.RESOLVED
        assert "resolved at restart: no data for" in stored.incident.timeline[-1].detail


@pytest.mark.parametrize(
    ("missing_s", "restored"), [(0.0, True), (330.0, True), (400.0, False), (None, False)]
)
def test_plan_restores_or_closes_by_the_missing_data(
    missing_s: float | None, restored: bool
) -> None:
    incident = Incident("i1", "fp", IncidentState.FIRING, 10.0, 12.0, None, ("latency",))
    done = Incident("i0", "fp0", IncidentState.RESOLVED, 1.0, 2.0, 5.0, ("latency",))
    now = 1000.0
    data_until = None if missing_s is None else now - missing_s
    found = restore.plan([incident, done], now, data_until, resolve_s=30.0)
    assert [i.id for i in found.restore] == (["i1"] if restored else [])
    assert [(i.id, i.state, i.resolved_at) for i in found.close] == (
        [] if restored else [("i1", IncidentState.RESOLVED, now)]
    )


def test_detector_restore_takes_open_incidents_once_per_key() -> None:
    detector = Detector(DetectSettings(max_excluded_intervals=5))
    a = Incident("a", "fp", IncidentState.FIRING, 10.0, 12.0, None, ("latency",))
    twin = Incident("b", "fp", IncidentState.FIRING, 11.0, 13.0, None, ("latency",))
    done = Incident("c", "fp2", IncidentState.RESOLVED, 1.0, 2.0, 5.0, ("latency",))
    taken = detector.restore([a, twin, done], excluded=9)
    assert [i.id for i in taken] == ["a"] and taken[0].subjects == ("fp",)
    assert [i.id for i in detector.incidents] == ["a"]


# -- `querywatch watch` restarted while an incident fires ----------------------------------------
INTERVAL = 1.0


def steady() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM ro_shop WHERE id = %s", 100, lambda r: (r.randint(1, 20000),)
        ),
        "hot": Statement(
            "SELECT count(*) FROM ro_shop WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM ro_shop WHERE note LIKE %s",
            2,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
    }


@pytest.fixture
def shop(make_pg: MakePg) -> str:
    dsn = make_pg().dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE ro_shop AS SELECT g AS id, g % 100 AS category, md5(g::text) AS note "
            "FROM generate_series(1, 20000) g"
        )
        c.execute("ALTER TABLE ro_shop ADD PRIMARY KEY (id)")
        c.execute("ANALYZE ro_shop")
    return dsn


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def bodies(receiver: Receiver, status: str) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies("/hook") if b["status"] == status]


def stored_state(store: Path, incident: str) -> str | None:
    found = storekit.value(store, "SELECT state FROM incidents WHERE id = ?", (incident,))
    return str(found) if found is not None else None


@contextmanager
def killed_watch(dsn: str, store: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`querywatch watch` in a subprocess that ends with SIGKILL (no clean stop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    argv = ["watch", "--dsn", dsn, "--store", str(store), "--interval", "1s", *args]
    with store.with_suffix(".killed.log").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querywatch", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_watch_restarted_during_a_firing_incident_pages_once_and_resolves(
    shop: str, tmp_path: Path, receiver: Receiver, stop: signal.Signals
) -> None:
    store = tmp_path / "qw.db"
    hook = ("--alert-webhook", f"{receiver.url}/hook")
    first: AbstractContextManager[subprocess.Popen[str]] = (
        watch_process(shop, store, *hook)
        if stop is signal.SIGTERM
        else killed_watch(shop, store, *hook)
    )
    with Load(shop, steady()) as load:
        with first:
            assert learned(store), "the detector never left its learning period"
            time.sleep(3)
            load.set_rate("hot", 40)
            assert wait_until(lambda: bodies(receiver, "firing"), 20), "no firing alert"
            time.sleep(2)
        [page] = bodies(receiver, "firing")
        down = time.time()
        time.sleep(2)  # the regression keeps running while nothing watches
        with watch_process(shop, store, *hook):
            restarted = time.time()
            time.sleep(8)  # still hot under the restarted watcher: it must not page again
            hot_until = time.time()
            load.set_rate("hot", 4)
            assert wait_until(lambda: bodies(receiver, "resolved"), 30), "no resolve after a fix"
            resolved_at = time.time()
            time.sleep(2)
    firings = bodies(receiver, "firing")
    resolves = bodies(receiver, "resolved")
    print(
        f"{stop.name}: down {restarted - down:.1f} s, {len(firings)} firing, {len(resolves)} "
        f"resolved, resolve {resolved_at - hot_until:.1f} s after the fix"
    )
    assert [b["incident"] for b in firings] == [page["incident"]], firings
    assert [b["incident"] for b in resolves] == [page["incident"]], resolves
    assert stored_state(store, page["incident"]) == "resolved"
    log = store.with_suffix(".log").read_text()
    assert f"incident {page['incident']} (firing since" in log and "restored" in log, log


def test_a_restored_incident_goes_on_from_its_last_page_update(tmp_path: Path) -> None:
    """The page and one update (a statement of the table joined) are in the outbox; after a
    restart the next update must be revision 2, or its idempotency key would repeat the first's
    and the outbox would take it for a repeat."""
    from test_incidents import SELECT_SQL, UPDATE_SQL, record_tpcb

    from querywatch.alerts import Dispatcher
    from querywatch.alerts.webhook import WebhookChannel

    receiver = Receiver()
    try:
        with Store(tmp_path / "qw.db") as store:
            server = store.server("db").id
            with Dispatcher([WebhookChannel(f"{receiver.url}/hook")], store=store) as dispatcher:
                monitor = Monitor(store, server, "db", Detector(), dispatcher)
                for i in range(20):
                    monitor.on_interval(*record_tpcb(store, server, i))
                monitor.on_interval(*record_tpcb(store, server, 20, [UPDATE_SQL]))
                for i in (21, 22):
                    monitor.on_interval(*record_tpcb(store, server, i, [UPDATE_SQL, SELECT_SQL]))
                assert wait_until(lambda: len(receiver.bodies("/hook")) >= 2, 10)
            with Dispatcher([WebhookChannel(f"{receiver.url}/hook")], store=store) as dispatcher:
                again = Monitor(store, server, "db", Detector(), dispatcher)
                again.warm_up(23.0, 360)
                [restored] = again.detector.incidents
                assert again._revisions == {restored.id: 1}
    finally:
        receiver.close()
