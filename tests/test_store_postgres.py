"""The PostgreSQL store engine: partitions and their retention, many writers, leases across
processes, `store copy`, and bad store locations (a real PostgreSQL server everywhere)."""

from __future__ import annotations

import doctest
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import webstore

from querywatch.durations import iso
from querywatch.errors import ServerLeased
from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Retention, Store, dialect

A = StatementKey(1, 10, 111)
FPS = {A: "fa"}
TEXTS = {"fa": "SELECT a FROM t WHERE id = $1"}
DAY = 86400.0


def run_qw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "querywatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def schema_of(location: str) -> str:
    return location.rsplit("%3D", 1)[1]


def partitions(location: str) -> list[str]:
    dsn = location.split("?", 1)[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
            (schema_of(location),),
        ).fetchall()
    return [r[0] for r in rows]


def test_translation_doctests() -> None:
    assert doctest.testmod(dialect, raise_on_error=True).attempted >= 2


def test_retention_drops_whole_daily_partitions(pg_store_base: str) -> None:
    from storekit import pg_location

    location = pg_location(pg_store_base, "retention")
    day0 = 20_000 * DAY
    retention = Retention(raw_s=DAY, minute_s=30 * DAY, hour_s=90 * DAY)
    with Store(location, retention=retention) as store:
        srv = store.server("s1")
        for day in range(3):
            for i in range(6):
                start = day0 + day * DAY + 3600 + i * 10
                deltas = (StatementDelta(A, Counters(calls=10, exec_ms=25.0)),)
                store.record_interval(srv.id, Interval(start, start + 10, deltas, None), FPS, TEXTS)
        before = partitions(location)
        assert "intervals_d20000" in before and "deltas_d20001" in before
        total = sum(r.counters.calls for r in store.totals(srv.id, 0, day0 + 4 * DAY)[0])
        assert total == 3 * 6 * 10
        store.maintain(now=day0 + 3 * DAY + 1800)  # raw kept one day: day 0 and 1 go
        after = partitions(location)
        for table in ("intervals", "deltas", "activity", "kcache"):
            assert f"{table}_d20000" in before and f"{table}_d20000" not in after
            assert f"{table}_d20001" not in after
            assert f"{table}_d20002" in after
        assert store.interval_count(srv.id) == 6  # day 2 is still raw
        rolled = sum(r.counters.calls for r in store.totals(srv.id, 0, day0 + 4 * DAY)[0])
        assert rolled == total  # the rollups answer for the dropped days


def test_bad_store_locations_give_one_line_errors(
    tmp_path: Path, pg_store_base: str, pg_dsn: str
) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    cases = {
        "postgresql://127.0.0.1:1/qw": "cannot reach store",
        f"postgresql://{info.get('user', 'postgres')}:secret@127.0.0.1:{info['port']}/nosuchdb": (
            "cannot reach store"
        ),
        "postgresql://[::1:bad/qw": "store",
        str(corrupt): "store",
    }
    for location, expected in cases.items():
        result = run_qw("top", "--store", location, "--format", "json")
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, (location, result.stdout)
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert expected in lines[0], lines[0]
        assert "secret" not in lines[0], "a password never shows in a message"


def test_store_copy_then_top_and_diagnose_agree(tmp_path: Path, pg_store_base: str) -> None:
    from storekit import pg_location

    now = float(int(time.time() // 60 * 60))
    source = tmp_path / "single.db"
    webstore.synthetic(source, now, hours=3.0, statements=5).close()
    target = pg_location(pg_store_base, "copied")
    result = run_qw("store", "copy", "--from", str(source), "--to", target)
    assert result.returncode == 0, result.stderr
    assert "copied" in result.stdout and "1 server(s)" in result.stdout, result.stdout

    def answers(store: str) -> tuple[Any, Any]:
        top = run_qw("top", "--store", store, "--since", "5h", "--format", "json")
        diag = run_qw(
            "diagnose", "--store", store, "--start", iso(now - 1200), "--end", iso(now - 600),
            "--format", "json",
        )  # fmt: skip
        assert top.returncode == 0 and diag.returncode == 0, top.stderr + diag.stderr
        ranked = json.loads(top.stdout)
        ranked.pop("window")  # "the last 5 h" read a second apart: the same data
        return ranked, json.loads(diag.stdout)

    sqlite_top, sqlite_diag = answers(str(source))
    pg_top, pg_diag = answers(target)
    assert sqlite_top == pg_top
    assert sqlite_diag == pg_diag
    assert len(json.dumps(sqlite_top)) > 200, "the answers compared hold data"
    again = run_qw("store", "copy", "--from", str(source), "--to", target)
    assert again.returncode != 0 and "already has" in again.stderr, again.stderr


CLAIMER = textwrap.dedent(
    """
    import sys, time
    from querywatch.store import Store
    store = Store(sys.argv[1])
    lease = store.claim_server(sys.argv[2], sys.argv[3], ttl_s=float(sys.argv[4]))
    print("claimed", flush=True)
    while True:
        time.sleep(0.2)
        lease = store.renew(lease)
    """
)


def test_a_killed_owner_loses_its_server_after_the_ttl(pg_store_base: str) -> None:
    from storekit import pg_location

    location = pg_location(pg_store_base, "leases")
    Store(location).close()
    owner = subprocess.Popen(
        [sys.executable, "-c", CLAIMER, location, "db1", "watch-a", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "claimed"
        with Store(location) as third:
            time.sleep(1.0)
            with pytest.raises(ServerLeased, match="'db1' is watched by watch-a on "):
                third.claim_server("db1", "watch-c", ttl_s=3)
            owner.send_signal(signal.SIGKILL)
            owner.wait(10)
            killed_at = time.monotonic()
            with pytest.raises(ServerLeased, match="stop it or wait"):
                third.claim_server("db1", "watch-c", ttl_s=3)  # not expired yet
            taken = None
            while taken is None and time.monotonic() - killed_at < 15:
                try:
                    taken = third.claim_server("db1", "watch-c", ttl_s=3)
                except ServerLeased:
                    time.sleep(0.2)
            waited = time.monotonic() - killed_at
            assert taken is not None and taken.owner == "watch-c"
            assert waited <= 3.0 + 5.0, waited  # the 3 s ttl from the last renewal (+ slack)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


def watch(dsn: str, store: str, server: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    argv = ["watch", "--dsn", dsn, "--store", store, "--server", server, "--interval", "1s"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "querywatch", *argv], stdout=out, stderr=out, env=env
        )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text


def test_two_watchers_write_one_store_concurrently(
    pg_dsn: str, pg_store_base: str, tmp_path: Path
) -> None:
    from storekit import pg_location

    location = pg_location(pg_store_base, "two")
    Store(location).close()
    started = time.time()
    procs = {name: watch(pg_dsn, location, name, tmp_path / f"{name}.log") for name in NAMES}
    try:
        with Store(location, create=False) as probe:  # both write 8 intervals or more (<= 90 s)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not enough(probe, 8):
                time.sleep(0.5)
    finally:
        for name, proc in procs.items():
            stop(proc, tmp_path / f"{name}.log")
    with Store(location, create=False) as store:
        servers = {s.name: s.id for s in store.servers()}
        assert set(NAMES) <= set(servers)
        for name in NAMES:
            rows = store.summaries(servers[name], started - 5, time.time() + 5)
            starts = [r.start for r in rows]
            assert len(rows) >= 6, (name, len(rows))
            assert len(set(starts)) == len(starts), f"{name}: duplicated intervals"
            for before, after in itertools.pairwise(rows):
                assert after.start == pytest.approx(before.end), f"{name}: an interval was lost"


NAMES = ("alpha", "beta")


def enough(store: Store, count: int) -> bool:
    ids = {s.name: s.id for s in store.servers()}
    return all(name in ids and store.interval_count(ids[name]) >= count for name in NAMES)


def test_concurrent_maintenance_counts_each_interval_once(pg_store_base: str) -> None:
    """Many watchers, one store: each runs maintain(); rollups must not count twice."""
    import threading

    from storekit import pg_location

    location = pg_location(pg_store_base, "maint")
    t0 = 20_000 * DAY
    with Store(location) as store:
        srv = store.server("s1")
        for i in range(360):  # an hour of 10 s intervals
            deltas = (StatementDelta(A, Counters(calls=10, exec_ms=25.0)),)
            start = t0 + i * 10
            store.record_interval(srv.id, Interval(start, start + 10, deltas, None), FPS, TEXTS)
    stores = [Store(location) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def maintain(st: Store) -> None:
        barrier.wait()
        st.maintain(now=t0 + 2 * 3600)

    threads = [threading.Thread(target=maintain, args=(st,)) for st in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for st in stores:
        st.close()
    with psycopg.connect(location.split("?")[0], autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema_of(location)}")
        row = conn.execute("SELECT sum(calls) FROM rollups WHERE resolution = 60").fetchone()
    assert row is not None and int(row[0]) == 360 * 10


def test_store_exists_on_both_engines(store_location: Callable[[str], str]) -> None:
    from querywatch.store import store_exists

    location = store_location("exists")
    assert not store_exists(location)
    Store(location).close()
    assert store_exists(location)
