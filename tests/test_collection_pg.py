"""The path from a real PostgreSQL to stored per-interval deltas."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from querywatch import collector
from querywatch.localpg import LocalPostgres
from querywatch.model import GapReason, Interval, Snapshot
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher

DOWNTIME_S = float(os.environ.get("QW_TEST_DOWNTIME", "30"))


def pgss_row(conn: psycopg.Connection[Any], like: str) -> tuple[int, int, float]:
    """(queryid, calls, total_exec_time) of the one toplevel entry whose text matches."""
    rows = conn.execute(
        "SELECT queryid, calls, total_exec_time FROM pg_stat_statements "
        "WHERE query LIKE %s AND toplevel",
        (like,),
    ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def by_queryid(interval: Interval) -> dict[int, Any]:
    return {d.key.queryid: d.counters for d in interval.statements if d.key.toplevel}


@pytest.fixture
def source(pg_dsn: str) -> Any:
    src = PostgresSource(pg_dsn)
    src.connect()
    yield src
    src.close()


def test_exact_call_deltas_and_mean_times(
    source: PostgresSource, conn: Any, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE acc_a (id int PRIMARY KEY, v text)")
    conn.execute("CREATE TABLE acc_b (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO acc_a SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    conn.execute("INSERT INTO acc_b SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    conn.execute("SELECT v FROM acc_a WHERE id = %s", (1,))
    conn.execute("SELECT count(*) FROM acc_b WHERE v LIKE %s", ("%a%",))
    _, a_calls0, a_ms0 = pgss_row(conn, "SELECT v FROM acc_a WHERE id = %")
    _, b_calls0, b_ms0 = pgss_row(conn, "SELECT count(*) FROM acc_b WHERE v LIKE %")
    before = source.snapshot()
    for i in range(1000):
        conn.execute("SELECT v FROM acc_a WHERE id = %s", (i % 5000 + 1,))
    for _ in range(10):
        conn.execute("SELECT count(*) FROM acc_b WHERE v LIKE %s", ("%a%",))
    after = source.snapshot()
    a_id, a_calls1, a_ms1 = pgss_row(conn, "SELECT v FROM acc_a WHERE id = %")
    b_id, b_calls1, b_ms1 = pgss_row(conn, "SELECT count(*) FROM acc_b WHERE v LIKE %")
    interval = collector.delta(before, after)
    got = by_queryid(interval)
    assert got[a_id].calls == 1000 == a_calls1 - a_calls0
    assert got[b_id].calls == 10 == b_calls1 - b_calls0
    assert got[a_id].mean_ms == pytest.approx((a_ms1 - a_ms0) / 1000, rel=0.01)
    assert got[b_id].mean_ms == pytest.approx((b_ms1 - b_ms0) / 10, rel=0.01)

    # and the same figures come back out of the store
    with Store(tmp_path / "qw.db") as store:
        server = store.server("test")
        fps = {d.key: f"fp{d.key.queryid}" for d in interval.statements}
        store.record_interval(server.id, interval, fps, {})
        rows, seconds = store.totals(server.id, before.taken_at - 1, after.taken_at + 1)
    stored = {r.fingerprint: r.counters for r in rows}
    assert stored[f"fp{a_id}"].calls == 1000
    assert stored[f"fp{a_id}"].mean_ms == pytest.approx((a_ms1 - a_ms0) / 1000, rel=0.01)
    assert stored[f"fp{b_id}"].mean_ms == pytest.approx((b_ms1 - b_ms0) / 10, rel=0.01)
    assert seconds == pytest.approx(after.taken_at - before.taken_at)


def test_reset_between_snapshots_is_a_gap_then_correct(source: PostgresSource, conn: Any) -> None:
    conn.execute("CREATE TABLE reset_t (id int)")
    for _ in range(50):
        conn.execute("SELECT count(*) FROM reset_t")
    before = source.snapshot()
    for _ in range(20):
        conn.execute("SELECT count(*) FROM reset_t")
    conn.execute("SELECT pg_stat_statements_reset()")
    for _ in range(7):
        conn.execute("SELECT count(*) FROM reset_t")
    middle = source.snapshot()
    gap_interval = collector.delta(before, middle)
    assert gap_interval.statements == ()
    assert not gap_interval.complete
    assert gap_interval.gaps[0].reason is GapReason.RESET
    for _ in range(33):
        conn.execute("SELECT count(*) FROM reset_t")
    after = source.snapshot()
    next_interval = collector.delta(middle, after)
    qid, _, _ = pgss_row(conn, "SELECT count(*) FROM reset_t")
    assert next_interval.complete
    assert by_queryid(next_interval)[qid].calls == 33
    assert all(v >= 0 for d in next_interval.statements for v in d.counters.values())


def test_texts_fetched_only_for_requested_queryids(source: PostgresSource, conn: Any) -> None:
    conn.execute("SELECT 42 AS texts_probe")
    qid, _, _ = pgss_row(conn, "SELECT $1 AS texts_probe")
    texts = source.texts([qid])
    assert texts == {qid: "SELECT $1 AS texts_probe"}
    assert source.texts([]) == {}


def test_activity_sample_sees_a_lock_waiter_and_its_blocker(
    source: PostgresSource, pg_dsn: str, conn: Any
) -> None:
    conn.execute("CREATE TABLE lock_t (id int PRIMARY KEY, n int)")
    conn.execute("INSERT INTO lock_t VALUES (1, 0)")
    blocker = psycopg.connect(pg_dsn)
    blocker.execute("UPDATE lock_t SET n = n + 1 WHERE id = 1")  # idle in transaction, row locked
    waiter = psycopg.connect(pg_dsn, autocommit=True)
    thread = threading.Thread(
        target=lambda: waiter.execute("UPDATE lock_t SET n = n + 2 WHERE id = 1"), daemon=True
    )
    thread.start()
    try:
        sample = _wait_for(lambda: _waiting(source), 10.0)
        blockers = {pid for s in sample.sessions for pid in s.blocking_pids}
        blocker_pid = blocker.info.backend_pid
        assert blocker_pid in blockers
        idle = next(s for s in sample.sessions if s.pid == blocker_pid)
        assert idle.state == "idle in transaction"
        assert idle.fingerprint is not None
    finally:
        blocker.rollback()
        thread.join(5)
        blocker.close()
        waiter.close()


def _waiting(source: PostgresSource) -> Any:
    sample = source.sample_activity()
    return sample if any(s.wait_event_type == "Lock" for s in sample.sessions) else None


def _wait_for(probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_dealloc_is_detected_and_stored(make_pg: Any, tmp_path: Path) -> None:
    small = make_pg({"pg_stat_statements.max": "100"})
    source = PostgresSource(small.dsn)
    source.connect()
    store = Store(tmp_path / "qw.db")
    watcher = Watcher(source, store, "small", interval_s=1.0)
    watcher.start()
    with psycopg.connect(small.dsn, autocommit=True) as c:
        for n in range(1, 501):
            c.execute("SELECT " + ", ".join(["1"] * n))  # 500 distinct statements
    watcher.collect_once()
    server = store.servers()[0]
    gaps = store.gaps(server.id, 0, time.time() + 10)
    assert any(g.reason is GapReason.DEALLOC for g in gaps)
    assert watcher.status.dealloc > 0
    rows, _ = store.totals(server.id, 0, time.time() + 10)
    assert rows and all(v >= 0 for r in rows for v in r.counters.values())
    source.close()
    store.close()


def test_restart_is_a_gap_and_downtime_is_waited_out(make_pg: Any, tmp_path: Path) -> None:
    server_pg: LocalPostgres = make_pg()
    store = Store(tmp_path / "qw.db")
    watcher = Watcher(PostgresSource(server_pg.dsn), store, "restartable", interval_s=1.0)
    watcher.start()
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    _work(server_pg.dsn, 3.0)
    server_pg.stop()
    time.sleep(DOWNTIME_S)  # the server is down for 30 s
    server_pg.start()
    _work(server_pg.dsn, 4.0)
    watcher.stop()
    thread.join(15)
    assert not thread.is_alive()
    server = store.servers()[0]
    reasons = {g.reason for g in store.gaps(server.id, 0, time.time() + 10)}
    assert GapReason.RESTART in reasons and GapReason.DOWN in reasons
    summaries = store.summaries(server.id, 0, time.time() + 10)
    restart_at = next(
        g for g in store.gaps(server.id, 0, time.time() + 10) if g.reason is GapReason.RESTART
    ).end
    before = [s for s in summaries if s.end < restart_at and s.by_fingerprint]
    after = [s for s in summaries if s.start >= restart_at and s.by_fingerprint]
    assert before and after, "intervals before and after the outage are both stored"
    assert watcher.status.reconnects >= 1
    watcher.source.close()
    store.close()


def _work(dsn: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn, autocommit=True) as c:
        while time.monotonic() < deadline:
            c.execute("SELECT count(*) FROM pg_class")
            time.sleep(0.01)


def test_snapshot_is_consistent_type(source: PostgresSource) -> None:
    snap = source.snapshot()
    assert isinstance(snap, Snapshot)
    assert snap.statements and snap.dealloc is not None and snap.stats_reset is not None


class FlakyTexts(PostgresSource):
    """A real source whose text fetch times out once, as under an overloaded server."""

    failures = 1

    def texts(self, queryids: Any) -> dict[int, str]:
        if self.failures:
            self.failures -= 1
            from querywatch.errors import QueryTimeout

            raise QueryTimeout(
                "monitoring query timed out: canceling statement due to statement timeout"
            )
        return super().texts(queryids)


def test_statement_first_stored_without_text_gets_its_fingerprint_later(
    pg_dsn: str, conn: Any, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE late_text (id int)")
    store = Store(tmp_path / "qw.db")
    watcher = Watcher(FlakyTexts(pg_dsn), store, "flaky", interval_s=1.0)
    watcher.start()
    conn.execute("SELECT count(*) FROM late_text WHERE id = 1")
    watcher.collect_once()  # the text fetch fails: stored under a placeholder, collection goes on
    server = store.servers()[0].id
    assert any(r.fingerprint.startswith("qid") for r in store.totals(server, 0, time.time() + 5)[0])
    conn.execute("SELECT count(*) FROM late_text WHERE id = 2")
    watcher.collect_once()  # the retry reads the text and re-keys the statement
    rows = {r.query: r for r in store.totals(server, 0, time.time() + 5)[0]}
    row = rows["SELECT count(*) FROM late_text WHERE id = $1"]
    assert row.counters.calls == 2  # both intervals, now under the real fingerprint
    assert not any(
        q == "" and r.fingerprint.startswith("qid") for q, r in rows.items() if "late_text" in q
    )
    assert watcher.status.gaps == 0  # a timeout is not an outage
    watcher.source.close()
    store.close()
