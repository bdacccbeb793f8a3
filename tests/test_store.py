"""The store on both engines: round trips, rollups, retention, and refusing what is not ours."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg
import pytest

from querywatch.errors import StoreCorrupt, StoreError
from querywatch.model import (
    ActivitySummary,
    Counters,
    FingerprintActivity,
    Gap,
    GapReason,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.store import Retention, Store, schema
from querywatch.store.postgres import pg_target

A = StatementKey(1, 10, 111)
B = StatementKey(1, 10, 222)
FPS = {A: "fa", B: "fb"}
TEXTS = {"fa": "SELECT a FROM t WHERE id = $1", "fb": "UPDATE t SET x = $1"}


def interval(start: float, seconds: float = 10.0, a: int = 10, b: int = 0) -> Interval:
    deltas = [StatementDelta(A, Counters(calls=a, exec_ms=a * 2.5, rows=a))]
    if b:
        deltas.append(
            StatementDelta(B, Counters(calls=b, exec_ms=b * 1.25, rows=b, temp_blks_written=3))
        )
    return Interval(start, start + seconds, tuple(deltas), None)


def test_round_trip_per_fingerprint(any_store: Store) -> None:
    with any_store as store:
        srv = store.server("s1")
        act = ActivitySummary(
            10, 3.0, 2.0, 1.0, 0.5, 5, 100, (FingerprintActivity("fa", active=4, lock_waits=2),)
        )
        store.record_interval(srv.id, interval(1000, a=10, b=4), FPS, TEXTS, act)
        store.record_interval(srv.id, interval(1010, a=20), FPS, {})
        summaries = store.summaries(srv.id, 0, 2000)
        assert [s.by_fingerprint["fa"].calls for s in summaries] == [10, 20]
        assert summaries[0].by_fingerprint["fb"].exec_ms == pytest.approx(5.0)
        assert summaries[0].by_fingerprint["fb"].temp_blks_written == 3
        assert "fb" not in summaries[1].by_fingerprint  # only active statements are written
        assert summaries[0].activity is not None
        assert summaries[0].activity.by_fingerprint[0].lock_waits == 2
        assert summaries[1].activity is None
        rows, seconds = store.totals(srv.id, 0, 2000)
        assert {r.fingerprint: r.counters.calls for r in rows} == {"fa": 30, "fb": 4}
        assert seconds == 20
        assert store.statements()["fa"].query == TEXTS["fa"]
        assert store.statements()["fa"].queryids == (111,)


def test_full_gap_interval_counts_no_seconds(any_store: Store) -> None:
    with any_store as store:
        srv = store.server("s1")
        gap = Gap(1000, 1010, GapReason.RESET, "reset")
        store.record_interval(srv.id, Interval(1000, 1010, (), None, (gap,)), {}, {})
        store.record_interval(srv.id, interval(1010), FPS, TEXTS)
        _, seconds = store.totals(srv.id, 0, 2000)
        assert seconds == 10
        assert [g.reason for g in store.gaps(srv.id, 0, 2000)] == [GapReason.RESET]
        assert [s.complete for s in store.summaries(srv.id, 0, 2000)] == [False, True]


def test_rollups_keep_totals_and_retention_prunes(store_location: Callable[[str], str]) -> None:
    retention = Retention(raw_s=600, minute_s=3 * 3600, hour_s=30 * 86400)
    with Store(store_location("s"), retention=retention) as store:
        srv = store.server("s1")
        t0 = 20_000 * 86400.0  # on a day boundary (PostgreSQL drops raw intervals by day)
        for i in range(360 * 2):  # two hours of 10 s intervals
            store.record_interval(
                srv.id, interval(t0 + i * 10, a=1 + i % 7, b=i % 3), FPS, TEXTS if i == 0 else {}
            )
        raw_rows, raw_seconds = store.totals(srv.id, t0 - 1, t0 + 7200)
        raw = {r.fingerprint: r.counters for r in raw_rows}
        store.maintain(now=t0 + 86400 + 3600)
        # raw intervals older than 10 minutes (their day, on PostgreSQL) are gone, rollups answer
        assert store.summaries(srv.id, t0, t0 + 7200) == []
        rolled_rows, rolled_seconds = store.totals(srv.id, t0 - 1, t0 + 7200)
        rolled = {r.fingerprint: r.counters for r in rolled_rows}
        assert rolled_seconds == pytest.approx(raw_seconds)
        for fp in ("fa", "fb"):
            assert rolled[fp].calls == raw[fp].calls
            assert rolled[fp].exec_ms == pytest.approx(raw[fp].exec_ms)
        # maintaining again does not count anything twice
        store.maintain(now=t0 + 86400 + 3600)
        again = {r.fingerprint: r.counters for r in store.totals(srv.id, t0 - 1, t0 + 7200)[0]}
        assert again["fa"].calls == raw["fa"].calls
        # far in the future every resolution has expired
        store.maintain(now=t0 + 40 * 86400)
        assert store.totals(srv.id, t0 - 1, t0 + 7200)[0] == []


def schema_version(location: str, set_to: int | None = None) -> int:
    """The store's schema version read (or set) behind its back, as each engine keeps it."""
    target = pg_target(location)  # a DSN, or a file mapped to PostgreSQL (QW_TEST_STORE)
    if target is not None:
        dsn, schema_name = target
        options = {"options": f"-csearch_path={schema_name}"} if schema_name else {}
        with psycopg.connect(dsn, autocommit=True, **options) as pg:
            if set_to is not None:
                pg.execute("UPDATE qw_schema SET version = %s", (set_to,))
            row = pg.execute("SELECT version FROM qw_schema").fetchone()
            assert row is not None
            return int(row[0])
    with sqlite3.connect(location) as db:
        if set_to is not None:
            db.execute(f"PRAGMA user_version = {set_to}")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_reopen_keeps_history_and_schema_version(store_location: Callable[[str], str]) -> None:
    location = store_location("s")
    with Store(location) as store:
        srv = store.server("s1")
        store.record_interval(srv.id, interval(1000), FPS, TEXTS)
    with Store(location, create=False) as store:
        assert store.interval_count(store.servers()[0].id) == 1
    assert schema_version(location) == schema.LATEST


def test_newer_schema_is_refused(store_location: Callable[[str], str]) -> None:
    location = store_location("s")
    Store(location).close()
    schema_version(location, set_to=schema.LATEST + 1)
    with pytest.raises(StoreCorrupt, match="newer"):
        Store(location)


def test_a_missing_store_is_not_created_when_reading(store_location: Callable[[str], str]) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store(store_location("absent"), create=False)


def test_deploys_round_trip(any_store: Store) -> None:
    with any_store as store:
        store.add_deploy("v2.3", 1500.0, "order_history_v2")
        store.add_deploy("v2.2", 500.0)
        assert [d.version for d in store.deploys()] == ["v2.2", "v2.3"]
        assert [d.version for d in store.deploys(1000, 2000)] == ["v2.3"]
