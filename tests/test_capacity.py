"""Capacity, headroom, read-only detection and replica placement (pure)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from querywatch.capacity import (
    CapacitySettings,
    Headroom,
    ReplicaLoad,
    StatementCapacity,
    assess,
    place,
    read_only,
    saturating_calls_per_s,
    settings_from_mapping,
)
from querywatch.errors import ConfigError

READS = [
    "SELECT id, name FROM customers WHERE lower(email) = lower($1)",
    "SELECT count(*) FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.customer_id = $1",
    "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - $1::interval) "
    "SELECT customer_id, sum(total) FROM recent GROUP BY 1 ORDER BY 2 DESC LIMIT $2",
    "SELECT * FROM products WHERE id IN ($1, $2, $3) ORDER BY price",
    "VALUES ($1, $2)",
    "SELECT coalesce(max(price), $1) FROM products WHERE category = ANY($2)",
    "SELECT p.id FROM products p WHERE EXISTS (SELECT 1 FROM stock s WHERE s.product_id = p.id)",
    "SELECT a.id FROM a UNION ALL SELECT b.id FROM b",
    "SELECT pg_catalog.lower(name) FROM customers",
]

WRITES = [
    ("UPDATE orders SET status = $1 WHERE id = $2", "not a SELECT (UPDATE)"),
    ("INSERT INTO orders (customer_id) VALUES ($1)", "not a SELECT (INSERT)"),
    ("DELETE FROM carts WHERE id = $1", "not a SELECT (DELETE)"),
    ("SELECT id FROM orders WHERE id = $1 FOR UPDATE", "FOR UPDATE"),
    ("SELECT id FROM orders WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED", "FOR NO KEY UPDATE"),
    ("SELECT id FROM orders WHERE id = $1 FOR SHARE", "FOR SHARE"),
    ("SELECT id FROM orders o JOIN c ON c.id = o.c FOR KEY SHARE OF o", "FOR KEY SHARE"),
    ("SELECT * FROM (SELECT id FROM orders FOR UPDATE) x", "FOR UPDATE"),
    ("SELECT * INTO archive FROM orders WHERE created_at < $1", "SELECT INTO"),
    ("WITH gone AS (DELETE FROM carts RETURNING id) SELECT count(*) FROM gone", "DELETE"),
    ("WITH n AS (INSERT INTO t VALUES ($1) RETURNING id) SELECT id FROM n", "INSERT"),
    ("WITH u AS (UPDATE t SET a = $1 RETURNING id) SELECT id FROM u", "UPDATE"),
    ("SELECT nextval($1)", "nextval()"),
    ("SELECT setval('orders_id_seq', $1)", "setval()"),
    ("SELECT pg_advisory_lock($1)", "pg_advisory_lock()"),
    ("SELECT txid_current()", "txid_current()"),
    ("SELECT app.reserve_seat($1, $2)", "app.reserve_seat()"),
    ("SELECT id FROM orders WHERE id = f_that_writes($1)", "f_that_writes()"),
    ("SELECT id FROM orders WHERE id = $1; UPDATE t SET a = $2", "UPDATE"),
    ("CREATE TABLE t (a int)", "not a SELECT"),
    ("EXPLAIN SELECT 1", "not a SELECT"),
    ("SELECT id, name FROM customers WHERE lower(email) = lower(", "cannot be parsed"),
    ("", "no statement"),
]


@pytest.mark.parametrize("sql", READS)
def test_reads_are_read_only(sql: str) -> None:
    found = read_only(sql)
    assert found.ok, found.reason


@pytest.mark.parametrize(("sql", "why"), WRITES)
def test_writes_and_unknowns_are_not(sql: str, why: str) -> None:
    found = read_only(sql)
    assert not found.ok
    assert why in found.reason


def test_the_issue_example() -> None:
    s = StatementCapacity(cores=4, mean_ms=8.4, calls_per_s=390.0)
    assert round(s.saturating_calls_per_s) == 476
    assert s.sentence() == (
        "at 8.4 ms per call this statement saturates 4 cores at 476 calls/s; it runs at 390/s (82%)"
    )
    assert s.busy_cores == pytest.approx(3.276)


def test_free_statement_never_saturates() -> None:
    assert saturating_calls_per_s(4, 0.0) == math.inf
    s = StatementCapacity(2, 0.0, 10.0)
    assert "cost per call is unknown" in s.sentence()
    assert s.as_json()["saturating_calls_per_s"] is None
    assert "saturates 2 cores at unbounded" not in s.sentence()


def test_a_statement_still_running_is_not_placed() -> None:
    """A blocker or a long statement that finished no call in the window: no cost per call."""
    running = StatementCapacity(4, 0.0, 0.0)
    p = place(running, ReplicaLoad("db-2", 8, 0.0, 0.0))
    assert not p.takes and p.reason == "the statement finished no call"
    a = assess(4, 3000.0, "fp", READS[0], 0.0, 0.0, (ReplicaLoad("db-2", 8, 0.0, 0.0),))
    assert a.lines()[1] == (
        "capacity: this statement finished no call in the window: its cost per call is unknown"
    )
    assert a.proposed == ()


@given(
    cores=st.integers(1, 256),
    mean_ms=st.floats(0.001, 10_000, allow_nan=False),
    calls=st.floats(0, 100_000, allow_nan=False),
)
def test_saturation_is_where_the_cores_are_full(cores: int, mean_ms: float, calls: float) -> None:
    s = StatementCapacity(cores, mean_ms, calls)
    at_saturation = StatementCapacity(cores, mean_ms, s.saturating_calls_per_s)
    assert at_saturation.busy_cores == pytest.approx(cores)
    assert at_saturation.utilisation == pytest.approx(1.0)
    assert s.utilisation == pytest.approx(calls / s.saturating_calls_per_s)


@given(cores=st.integers(1, 64), db=st.floats(0, 200_000, allow_nan=False))
def test_headroom_adds_up(cores: int, db: float) -> None:
    h = Headroom(cores, db)
    assert h.left_cores >= 0
    assert h.busy_cores == pytest.approx(db / 1000)
    if db <= cores * 1000:
        assert h.busy_cores + h.left_cores == pytest.approx(cores)


def test_headroom_sentence() -> None:
    h = Headroom(4, 3600.0)
    assert h.sentence() == (
        "statements keep 3.6 of 4 cores busy (90%, 3,600 ms of DB time per second): 0.4 cores left"
    )


CULPRIT = StatementCapacity(cores=4, mean_ms=8.4, calls_per_s=390.0)  # 3.28 cores


@pytest.mark.parametrize(
    ("replica", "takes", "whole", "why"),
    [
        (ReplicaLoad("db-2", 8, 100.0, 0.2), 390.0, True, "could take all 390 calls/s"),
        # 0.8 x 4 cores = 3,200 ms/s, 100 used: 3,100 / 8.4 = 369 of the 390 calls/s
        (ReplicaLoad("db-2", 4, 100.0, 0.2), 3100 / 8.4, False, "could take 369 of the 390"),
        (ReplicaLoad("db-2", 8, 0.0, 0.0), 390.0, True, "0.0 -> 3.3 busy cores"),
        # 0.8 x 2 cores = 1,600 ms/s, 400 used: 1,200 / 8.4 = 142.9 calls/s
        (ReplicaLoad("db-3", 2, 400.0, 1.0), 1200 / 8.4, False, "could take 143 of the 390"),
        (ReplicaLoad("db-4", 2, 1700.0, 1.0), 0.0, False, "already 1.7 of 2 cores busy"),
        (ReplicaLoad("db-5", 4, 0.0, 42.0), 0.0, False, "lag 42.0 s is over the 10.0 s limit"),
        (ReplicaLoad("db-6", 4, 0.0, None), 0.0, False, "lag is unknown"),
        (ReplicaLoad("db-7", None, None, 0.1), 0.0, False, "cores or load are unknown"),
        (ReplicaLoad("db-8", 4, 0.0, 0.1, streaming=False), 0.0, False, "not streaming"),
    ],
)
def test_place(replica: ReplicaLoad, takes: float, whole: bool, why: str) -> None:
    p = place(CULPRIT, replica)
    assert p.calls_per_s == pytest.approx(takes)
    assert p.whole is whole
    assert why in p.reason


@given(
    cores=st.integers(1, 64),
    busy=st.floats(0, 100_000, allow_nan=False),
    lag=st.floats(0, 100, allow_nan=False),
    mean_ms=st.floats(0.01, 1000, allow_nan=False),
    calls=st.floats(0.01, 10_000, allow_nan=False),
    max_busy=st.floats(0.1, 1.0),
    max_lag=st.floats(0.1, 60),
)
def test_a_placement_never_overloads_nor_takes_stale_replicas(
    cores: int,
    busy: float,
    lag: float,
    mean_ms: float,
    calls: float,
    max_busy: float,
    max_lag: float,
) -> None:
    settings = CapacitySettings(max_lag_s=max_lag, max_busy=max_busy)
    p = place(StatementCapacity(4, mean_ms, calls), ReplicaLoad("r", cores, busy, lag), settings)
    assert 0 <= p.calls_per_s <= calls
    if lag > max_lag:
        assert not p.takes
    if p.takes:
        assert p.busy_after is not None
        assert p.busy_after <= max_busy * cores * (1 + 1e-9)
        assert p.whole == (p.calls_per_s >= calls)


REPLICAS = (ReplicaLoad("db-2", 8, 100.0, 0.2), ReplicaLoad("db-3", 4, 3500.0, 0.2))


def test_assess_read_only_culprit_names_the_replica() -> None:
    a = assess(4, 3600.0, "fp1", READS[0], 390.0, 8.4, REPLICAS, cores_from="setting")
    assert [p.replica for p in a.proposed] == ["db-2"]
    lines = a.lines()
    assert lines[0].startswith("headroom: statements keep 3.6 of 4 cores busy")
    assert lines[1] == (
        "capacity: at 8.4 ms per call this statement saturates 4 cores at 476 calls/s; "
        "it runs at 390/s (82%)"
    )
    assert lines[2].startswith("replicas: it only reads; replica db-2 could take all 390 calls/s")
    doc = a.as_json()
    assert doc["proposed"] == ["db-2"] and doc["read_only"] is True
    assert doc["statement"]["saturating_calls_per_s"] == 476.2  # type: ignore[index]


@pytest.mark.parametrize(("sql", "why"), WRITES)
def test_a_write_culprit_is_never_proposed(sql: str, why: str) -> None:
    a = assess(4, 3600.0, "fp", sql, 390.0, 8.4, REPLICAS)
    assert a.placements == () and a.proposed == ()
    assert a.lines()[-1].startswith("replicas: not for a replica: ")
    assert a.as_json()["proposed"] == []


def test_assess_without_replicas_or_with_none_fitting() -> None:
    alone = assess(4, 3600.0, "fp", READS[0], 390.0, 8.4, ())
    assert alone.lines()[-1] == (
        "replicas: it only reads, but this server has no replica to take it"
    )
    unknown = assess(4, 3600.0, "fp", READS[0], 390.0, 8.4, None)
    assert "a replica could serve it (its replicas are not known here)" in unknown.lines()[-1]
    busy = assess(4, 3600.0, "fp", READS[0], 390.0, 8.4, (REPLICAS[1],))
    assert "no replica can take it (db-3: already 3.5 of 4 cores busy" in busy.lines()[-1]


def test_settings() -> None:
    assert settings_from_mapping({}) == CapacitySettings()
    assert settings_from_mapping({"max_lag_s": 2, "max_busy": 0.5}) == CapacitySettings(2.0, 0.5)
    for bad in ({"lag": 1}, {"max_lag_s": "1"}, {"max_busy": -1}, {"max_busy": float("nan")}):
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping(bad)
        assert str(caught.value).startswith("capacity.")
        assert "\n" not in str(caught.value)


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "thresholds.md").read_text(encoding="utf-8")
    assert "[capacity]" in doc
    for name in CapacitySettings.__dataclass_fields__:
        assert f"`{name}`" in doc, name


def test_capacity_is_pure() -> None:
    code = (
        "import sys, querywatch.capacity\n"
        "bad = {'psycopg', 'sqlite3', '_sqlite3', 'fastapi', 'starlette', 'httpx', 'uvicorn'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
