"""Restart-safe collection: the last snapshot kept in the store, catch-ups and gaps across runs.

Real servers throughout: the session's server, and a private one (``make_pg``) for the tests
that restart a server or reset its statistics. Intervals are 1 s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit
from conftest import MakePg
from workload import (
    Load,
    Receiver,
    Statement,
    diagnose_json,
    learned,
    mark_deploy,
    wait_until,
    watch_process,
)

from querywatch.detect import Detector, DetectSettings
from querywatch.localpg import LocalPostgres
from querywatch.model import (
    Counters,
    DatabaseCounters,
    Interval,
    Snapshot,
    StatementDelta,
    StatementKey,
    StatementStats,
)
from querywatch.monitor import Monitor
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.store.snapshots import StoredSnapshot
from querywatch.watcher import Watcher

INTERVAL = 1.0
SLACK_S = 1.5  # snapshot, detection, diagnosis and the HTTP POST after an interval ends

A_SQL = "SELECT count(*) FROM rs_items WHERE id < %s"
B_SQL = "SELECT max(id) FROM rs_items WHERE id > %s"
A_TEXT = "SELECT count(*) FROM rs_items WHERE id < $1"
B_TEXT = "SELECT max(id) FROM rs_items WHERE id > $1"


# -- helpers -------------------------------------------------------------------------------------
def querywatch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def collect_once(dsn: str, store: Path) -> str:
    args = ("collect", "--once", "--dsn", dsn, "--store", str(store), "--interval", "1s")
    return querywatch(*args).stderr


def top_calls(store: Path) -> dict[str, int]:
    out = querywatch(
        "top", "--since", "15m", "--limit", "100", "--format", "json", "--store", str(store)
    )
    return {s["query"]: s["calls"] for s in json.loads(out.stdout)["statements"]}


def run(dsn: str, sql: str, times: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for i in range(times):
            c.execute(sql, (i % 100 + 1,))  # type: ignore[arg-type]


def intervals(store: Path) -> list[dict[str, Any]]:
    names = ("start", "end", "complete", "catch_up")
    found = storekit.rows(
        store, "SELECT start, end, complete, catch_up FROM intervals ORDER BY start"
    )
    return [dict(zip(names, row, strict=True)) for row in found]


def gaps(store: Path) -> list[str]:
    return [r[0] for r in storekit.rows(store, "SELECT reason FROM gaps WHERE partial = 0")]


def min_delta(store: Path) -> float:
    columns = "min(calls), min(exec_us), min(rows), min(shared_blks_hit)"
    return float(min(v or 0 for v in storekit.rows(store, f"SELECT {columns} FROM deltas")[0]))


def make_items(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS rs_items")
        c.execute("CREATE TABLE rs_items AS SELECT g AS id FROM generate_series(1, 1000) g")


@pytest.fixture(scope="module")
def private(make_pg: MakePg) -> LocalPostgres:
    """A server of this module's own: restarted and reset by the tests."""
    server = make_pg()
    make_items(server.dsn)
    return server


@pytest.fixture(scope="module")
def items(pg_dsn: str) -> str:
    make_items(pg_dsn)
    return pg_dsn


# -- collect --once from cron --------------------------------------------------------------------
def test_collect_once_twice_records_what_ran_between_runs(items: str, tmp_path: Path) -> None:
    store = tmp_path / "qw.db"
    collect_once(items, store)  # nothing stored yet: waits one interval
    run(items, A_SQL, 1000)
    run(items, B_SQL, 10)
    log = collect_once(items, store)  # continues from the stored snapshot, no wait
    calls = top_calls(store)
    assert calls.get(A_TEXT) == 1000, calls
    assert calls.get(B_TEXT) == 10, calls
    first, second = intervals(store)
    assert (first["catch_up"], second["catch_up"]) == (0, 1)
    assert second["start"] == first["end"] and second["complete"] == 1
    assert "caught up" in log
    run(items, A_SQL, 5)
    collect_once(items, store)
    assert top_calls(store).get(A_TEXT) == 1005
    assert len(intervals(store)) == 3


@pytest.mark.parametrize("event", ["restart", "reset"])
def test_restart_or_reset_between_runs_is_a_gap(
    private: LocalPostgres, tmp_path: Path, event: str
) -> None:
    store, dsn = tmp_path / "qw.db", private.dsn
    collect_once(dsn, store)
    run(dsn, A_SQL, 1000)
    if event == "restart":
        private.restart()
    else:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_stat_statements_reset()")
    run(dsn, A_SQL, 30)
    run(dsn, B_SQL, 10)
    log = collect_once(dsn, store)
    assert "a gap" in log
    assert gaps(store) == [event]
    assert intervals(store)[-1]["complete"] == 0
    calls = top_calls(store)
    assert A_TEXT not in calls and B_TEXT not in calls, calls  # not known: nothing invented
    run(dsn, A_SQL, 7)
    collect_once(dsn, store)  # continues from the snapshot taken after the event
    calls = top_calls(store)
    assert calls.get(A_TEXT) == 7, calls
    assert B_TEXT not in calls, calls
    assert min_delta(store) >= 0
    assert [i["catch_up"] for i in intervals(store)] == [0, 0, 1]


def test_another_server_is_a_gap_and_a_log_line(
    items: str, private: LocalPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path / "qw.db") as store:
        first = Watcher(PostgresSource(items), store, "db", interval_s=INTERVAL)
        first.run(once=True)
        first.source.close()
        assert first.server_id is not None
        stored = store.last_snapshot(first.server_id)
        assert stored is not None and stored.system_identifier is not None
        run(private.dsn, A_SQL, 10)
        swapped = Watcher(PostgresSource(private.dsn), store, "db", interval_s=INTERVAL)
        with caplog.at_level(logging.INFO, "querywatch.watcher"):
            swapped.run(once=True)
        swapped.source.close()
        gap = store.gaps(first.server_id, 0, time.time() + 1)[-1]
        assert "another server" in gap.detail and not gap.partial
        assert any("another server" in r.getMessage() for r in caplog.records)
        assert store.interval_count(first.server_id) == 2


def test_a_stored_snapshot_from_the_future_is_not_continued(items: str, tmp_path: Path) -> None:
    """A clock set back between runs: no interval of negative length, collection starts afresh."""
    with Store(tmp_path / "qw.db") as store:
        first = Watcher(PostgresSource(items), store, "db", interval_s=INTERVAL)
        first.run(once=True)
        first.source.close()
        assert first.server_id is not None
        stored = store.last_snapshot(first.server_id)
        assert stored is not None
        future = replace(stored.snapshot, taken_at=time.time() + 3600)
        store.save_snapshot(first.server_id, StoredSnapshot(future, stored.system_identifier))
        again = Watcher(PostgresSource(items), store, "db", interval_s=INTERVAL)
        again.run(once=True)  # waits one interval instead
        again.source.close()
        summaries = store.summaries(first.server_id, 0, time.time() + 7200)
        assert len(summaries) == 2
        assert all(s.seconds > 0 and not s.catch_up for s in summaries)


def test_system_identifier_falls_back_when_not_permitted(private: LocalPostgres) -> None:
    """PUBLIC may run pg_control_system() by default; a locked-down server may revoke it."""
    with psycopg.connect(private.dsn, autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS rs_plain")
        c.execute("CREATE ROLE rs_plain LOGIN IN ROLE pg_monitor")
        expected = c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        assert expected is not None
        source = PostgresSource(f"{private.dsn} user=rs_plain")
        try:
            source.connect()
            assert source.system_identifier() == expected[0]
            c.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
            assert source.system_identifier() is None
            assert source.snapshot().statements  # collection goes on without it
        finally:
            c.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
            source.close()


# -- the stored snapshot itself --------------------------------------------------------------------
def entry(queryid: int, calls: float, ms: float) -> StatementStats:
    key = StatementKey(5, 10, queryid, queryid % 2 == 0)
    return StatementStats(key, Counters(calls=calls, exec_ms=ms, rows=calls, wal_bytes=1.5))


def snapshot(at: float, entries: list[StatementStats]) -> Snapshot:
    database = DatabaseCounters(xact_commit=at * 10, blks_hit=7)
    statements = {s.key: s for s in entries}
    return Snapshot(at, 1000.0, 900.0, 3, statements, database, server_taken_at=at + 0.25)


def entry_rows(path: Path) -> int:
    return int(storekit.value(path, "SELECT count(*) FROM snapshot_entries"))


def test_snapshot_round_trip_and_incremental_saves(tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    with Store(path) as store:
        server = store.server("db").id
        assert store.last_snapshot(server) is None
        kept = [entry(i, i * 3, i * 0.123456789) for i in range(1, 6)]
        first = snapshot(100.0, kept)
        store.save_snapshot(server, StoredSnapshot(first, -7_000_000_000_000_000_000), None)
        loaded = store.last_snapshot(server)
        assert loaded is not None
        assert loaded.system_identifier == -7_000_000_000_000_000_000
        assert loaded.snapshot == first  # every counter, clock and identity field as read
        # the next save writes what changed: one entry grown, one gone, one new
        grown = entry(2, 60, 9.5)
        second = snapshot(110.0, [kept[0], grown, kept[2], kept[3], entry(9, 1, 0.5)])
        store.save_snapshot(server, StoredSnapshot(second, None), first)
        again = store.last_snapshot(server)
        assert again is not None and again.snapshot == second
        assert entry_rows(path) == 5
        # a base the store does not hold (another process saved meanwhile): written in full
        third = snapshot(120.0, [entry(11, 2, 1.0)])
        store.save_snapshot(server, StoredSnapshot(third, None), first)
        last = store.last_snapshot(server)
        assert last is not None and last.snapshot == third
        assert entry_rows(path) == 1


# -- detection on a catch-up ------------------------------------------------------------------------
HOT, LOOKUP = StatementKey(1, 10, 42), StatementKey(1, 10, 43)
FINGERPRINTS = {HOT: "fp-hot", LOOKUP: "fp-lookup"}
TEXTS = {"fp-hot": "SELECT hot", "fp-lookup": "SELECT lookup"}


def record(
    store: Store, server: int, start: float, end: float, hot_per_s: float, catch_up: bool = False
) -> tuple[int, Interval]:
    """An interval where "hot" runs at ``hot_per_s`` (2 ms a call) beside a steady lookup."""
    s = end - start
    hot = Counters(calls=hot_per_s * s, exec_ms=hot_per_s * s * 2.0, rows=hot_per_s * s)
    lookup = Counters(calls=100 * s, exec_ms=10 * s, rows=100 * s)
    deltas = (StatementDelta(HOT, hot), StatementDelta(LOOKUP, lookup))
    interval = Interval(start, end, deltas, DatabaseCounters(), catch_up=catch_up)
    return store.record_interval(server, interval, FINGERPRINTS, TEXTS), interval


def restarted_monitor(store: Store, history_end: float) -> Monitor:
    server = store.server("db").id
    for i in range(20):  # the first run: 20 steady 1 s intervals
        record(store, server, history_end - 20 + i, history_end - 19 + i, 4)
    monitor = Monitor(store, server, "db", Detector(DetectSettings()))
    monitor.warm_up(history_end, 360)
    return monitor


def test_long_catch_up_is_neither_judged_nor_learned(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as store:
        monitor = restarted_monitor(store, 1000.0)
        server = monitor.server_id
        # down 60 s, the rollout in the middle: the catch-up averages 4/s and 40/s
        monitor.on_interval(*record(store, server, 1000, 1060, 22, catch_up=True))
        assert monitor.last is None and store.incidents(server) == []
        monitor.on_interval(*record(store, server, 1060, 1061, 40))  # the first regular interval
        assert monitor.last is not None and monitor.last.baseline_intervals == 20
        [stored] = store.incidents(server)
        assert stored.incident.fired_at == 1061
        assert stored.diagnosis is not None
        culprit = stored.diagnosis["culprits"][0]
        assert culprit["query"] == "SELECT hot"
        # the diagnosis compares with the first run, not with the catch-up's average
        assert culprit["calls_per_s"]["baseline"] == pytest.approx(4.0)
        # a watcher restarted again later does not seed its baseline with the catch-up either
        again = Monitor(store, server, "db", Detector(DetectSettings()))
        # (nor with the interval of the incident still open: querywatch.restore)
        assert again.warm_up(1061, 360) == 20


def test_short_catch_up_is_an_ordinary_interval(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as store:
        monitor = restarted_monitor(store, 1000.0)
        monitor.on_interval(*record(store, monitor.server_id, 1000, 1002, 40, catch_up=True))
        assert monitor.last is not None and monitor.last.transitions  # judged: it pages at once


# -- watch restarted across a rollout ----------------------------------------------------------------
def steady() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM rs_shop WHERE id = %s", 100, lambda r: (r.randint(1, 20000),)
        ),
        "hot": Statement(
            "SELECT count(*) FROM rs_shop WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM rs_shop WHERE note LIKE %s",
            2,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
    }


@pytest.fixture
def shop(make_pg: MakePg) -> str:
    """A fresh server per test: statistics left by an earlier test (a rollout, idle time) would
    make a long-run baseline that is not this test's steady workload."""
    dsn = make_pg().dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS rs_shop")
        c.execute(
            "CREATE TABLE rs_shop AS SELECT g AS id, g % 100 AS category, md5(g::text) AS note "
            "FROM generate_series(1, 20000) g"
        )
        c.execute("ALTER TABLE rs_shop ADD PRIMARY KEY (id)")
        c.execute("ANALYZE rs_shop")
    return dsn


@contextmanager
def killed_watch(dsn: str, store: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`querywatch watch` in a subprocess that the test ends with SIGKILL (no clean stop)."""
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


def firing(receiver: Receiver) -> list[tuple[float, dict[str, Any]]]:
    return [(r.at, r.body) for r in receiver.received if r.body["status"] == "firing"]


def catch_up_end(store: Path) -> float | None:
    found = storekit.value(store, "SELECT min(end) FROM intervals WHERE catch_up = 1")
    return float(found) if found is not None else None


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_watch_restarted_after_a_rollout_pages_within_two_intervals(
    shop: str, tmp_path: Path, stop: str
) -> None:
    store = tmp_path / "qw.db"
    receiver = Receiver()
    hook = ("--alert-webhook", f"{receiver.url}/hook")
    first = watch_process if stop == "sigterm" else killed_watch
    try:
        with Load(shop, steady()) as load:
            with first(shop, store, *hook):
                assert learned(store), "the detector never left its learning period"
                time.sleep(3)
            stopped = time.time()
            mark_deploy(store, "v3.1")
            load.set_rate("hot", 40)  # the rollout happens while nothing watches
            time.sleep(3)
            early = [r.body["diagnosis"]["summary"] for r in receiver.received]
            assert early == []  # nothing paged before the rollout
            launched = time.time()
            with watch_process(shop, store, *hook):
                assert wait_until(lambda: firing(receiver), 20), "no firing alert"
                restarted = wait_until(lambda: catch_up_end(store), 5)
    finally:
        receiver.close()
    assert restarted is not None, "the restarted watcher stored no catch-up interval"
    assert restarted - stopped >= 3  # the catch-up covers the downtime
    fired_at, alert = firing(receiver)[0]
    delay = fired_at - restarted
    print(
        f"{stop}: alert {delay:.2f} s after the catch-up, {fired_at - launched:.2f} s after launch"
    )
    assert delay <= 2 * INTERVAL + SLACK_S, f"alert came {delay:.1f} s after the restart"
    diagnosis = alert["diagnosis"]
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    culprit = diagnosis["culprits"][0]
    assert culprit["query"] == "SELECT count(*) FROM rs_shop WHERE category = $1"
    assert culprit["calls_per_s"]["window"] > 5 * culprit["calls_per_s"]["baseline"]
    suspects = [d["version"] for d in diagnosis["deploys"] if d["suspect"]]
    assert suspects == ["v3.1"], diagnosis["deploys"]
    # `diagnose` over both runs, the catch-up inside, agrees: the onset is not placed at the stop
    [(first_start, last_end)] = storekit.rows(store, "SELECT min(start), max(end) FROM intervals")
    whole = diagnose_json(store, first_start, last_end)
    assert whole["culprits"][0]["query"] == culprit["query"], whole["summary"]
    assert [d["version"] for d in whole["deploys"] if d["suspect"]] == ["v3.1"], whole["summary"]
