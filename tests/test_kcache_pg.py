"""pg_stat_kcache: per-interval usage (reset and restart aware), its storage, the `check` advice,
and a CPU-bound culprit's share of the server's CPU time against what /proc measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from querywatch.check import Level, findings
from querywatch.localpg import LocalPostgres
from querywatch.model import (
    Counters,
    Culprit,
    CulpritKind,
    Diagnosis,
    Interval,
    Rate,
    StatementDelta,
    StatementKey,
    Verdict,
)
from querywatch.source.capabilities import Capabilities
from querywatch.source.kcache import (
    CpuUsage,
    KcacheCounters,
    KcacheReading,
    KcacheStatus,
    KcacheTracker,
    KcacheUsage,
    cpu_usage,
    usage_between,
    with_cpu_evidence,
)
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher
from tests import storekit
from tests.conftest import MakePg, missing
from tests.workload import Load
from tests.workload import Statement as LoadStatement

A, B, C = (StatementKey(5, 10, q) for q in (1, 2, 3))
PRELOAD = ("pg_stat_statements", "pg_stat_kcache")


def kc(user_ms: float, system_ms: float = 0.0, minflts: float = 0.0) -> KcacheCounters:
    return KcacheCounters(user_ms=user_ms, system_ms=system_ms, minflts=minflts)


def reading(
    at: float, entries: dict[StatementKey, KcacheCounters], started: float = 1.0
) -> KcacheReading:
    return KcacheReading(at, started, entries)


# -- pure: usage between readings ------------------------------------------------------------------
def test_usage_is_the_growth_of_each_entry_that_moved() -> None:
    before = reading(10.0, {A: kc(100, 10, 5), B: kc(50)})
    after = reading(20.0, {A: kc(160, 12, 9), B: kc(50), C: kc(7)})
    usage = usage_between(before, after)
    assert usage is not None and (usage.start, usage.end) == (10.0, 20.0)
    assert usage.by_key == {A: kc(60, 2, 4), C: kc(7)}  # B did not move; C is new: all of it


def test_an_entry_that_went_down_is_left_out_not_negative() -> None:
    before = reading(10.0, {A: kc(100), B: kc(50), C: kc(10)})
    after = reading(20.0, {A: kc(130), B: kc(5), C: kc(10)})
    usage = usage_between(before, after)
    assert usage is not None and usage.by_key == {A: kc(30)}


@pytest.mark.parametrize(
    "after",
    [
        reading(20.0, {A: kc(130), B: kc(60)}, started=2.0),  # the server restarted
        reading(20.0, {A: kc(1), B: kc(2)}),  # pg_stat_kcache_reset(): most went down
    ],
)
def test_a_restart_or_a_reset_gives_no_usage(after: KcacheReading) -> None:
    assert usage_between(reading(10.0, {A: kc(100), B: kc(50)}), after) is None


def test_the_tracker_needs_two_readings_in_a_row() -> None:
    tracker = KcacheTracker()
    assert tracker.observe(reading(1.0, {A: kc(1)})) is None
    assert tracker.observe(None) is None  # a reading failed: the next one starts again
    assert tracker.observe(reading(3.0, {A: kc(5)})) is None
    found = tracker.observe(reading(4.0, {A: kc(9)}))
    assert found is not None and found.by_key == {A: kc(4)}


def _diagnosis(*fingerprints: str) -> Diagnosis:
    culprits = tuple(
        Culprit(
            "1",
            fp,
            f"SELECT {fp}",
            CulpritKind.FREQUENCY,
            0.9,
            Rate(1, 9),
            Rate(1, 1),
            None,
            (f"calls/s x9 for {fp}", "second line"),
        )
        for fp in fingerprints
    )
    return Diagnosis(0.0, 10.0, -10.0, 0.0, Verdict.QUERY_REGRESSION, "s", 1.0, culprits, ())


def test_cpu_share_becomes_the_culprits_evidence() -> None:
    window = CpuUsage(10.0, {"a": kc(600, 20, minflts=5000), "b": kc(300), "c": kc(80)})
    baseline = CpuUsage(10.0, {"a": kc(10), "b": kc(290)})
    found = with_cpu_evidence(_diagnosis("a", "z"), window, baseline)
    a, z = found.culprits
    assert a.evidence[0] == "calls/s x9 for a" and a.evidence[2] == "second line"
    assert a.evidence[1] == (
        "62% of the server's CPU time (0.62 of 1.00 CPU s measured by pg_stat_kcache; "
        "3% before; 500 page faults/s)"
    )
    assert z.evidence[1].startswith("0% of the server's CPU time")


def test_usage_per_fingerprint_without_a_store() -> None:
    nested = StatementKey(5, 10, 4, toplevel=False)
    usage = KcacheUsage(0.0, 5.0, {A: kc(10), B: kc(30), C: kc(7), nested: kc(99)})
    found = cpu_usage(usage, {A: "f", B: "f", nested: "g"})  # C: no fingerprint known
    assert found.seconds == 5.0 and found.by_fingerprint == {"f": kc(40)}


def test_without_kcache_figures_the_diagnosis_is_unchanged() -> None:
    d = _diagnosis("a")
    assert with_cpu_evidence(d, None, None) is d
    assert with_cpu_evidence(d, CpuUsage(10.0, {"a": kc(0)}), None) is d


def test_the_kcache_module_imports_no_io() -> None:
    code = (
        "import sys, querywatch.source.kcache; "
        "print(sorted(m for m in ('psycopg', 'sqlite3', 'fastapi') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


# -- check -------------------------------------------------------------------------------------------
def _caps(preload: tuple[str, ...] | None = ("pg_stat_statements",)) -> Capabilities:
    return Capabilities(
        150018,
        "15.18",
        preload,
        "postgres",
        "shop",
        True,
        True,
        "1.10",
        "public",
        None,
        False,
        5000,
        "top",
        "auto",
    )


@pytest.mark.parametrize(
    ("status", "level", "fix"),
    [
        (KcacheStatus("2.2.1", "public", True, True), Level.OK, ""),
        (
            KcacheStatus(None, None, False, False),
            Level.WARN,
            "install it (Debian/Ubuntu: apt-get install postgresql-15-pg-stat-kcache), add to "
            "postgresql.conf: shared_preload_libraries = 'pg_stat_statements,pg_stat_kcache' and "
            "restart PostgreSQL, then in database 'shop' run: CREATE EXTENSION pg_stat_kcache;",
        ),
        (
            KcacheStatus(None, None, True, False),
            Level.WARN,
            "add to postgresql.conf: shared_preload_libraries = "
            "'pg_stat_statements,pg_stat_kcache' and restart PostgreSQL, then in database 'shop' "
            "run: CREATE EXTENSION pg_stat_kcache;",
        ),
        (
            KcacheStatus(None, None, True, True),
            Level.WARN,
            "in database 'shop' run: CREATE EXTENSION pg_stat_kcache;",
        ),
        (
            KcacheStatus("2.2.1", "public", True, False),
            Level.WARN,
            "add to postgresql.conf: shared_preload_libraries = "
            "'pg_stat_statements,pg_stat_kcache' and restart PostgreSQL",
        ),
    ],
)
def test_check_says_how_to_enable_kcache(status: KcacheStatus, level: Level, fix: str) -> None:
    found = [f for f in findings(_caps(), None, status) if f.name == "pg_stat_kcache"]
    assert len(found) == 1 and found[0].level is level and found[0].fix == fix
    assert level is Level.OK or "CPU time is inferred from execution time" in found[0].message


def test_check_names_kcache_only_when_told_its_state() -> None:
    assert all(f.name != "pg_stat_kcache" for f in findings(_caps(), None))


# -- the store ---------------------------------------------------------------------------------------
def test_store_keeps_usage_per_interval_and_sums_it_per_fingerprint(tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as store:
        server = store.server("db")
        ids = []
        for start in (0.0, 10.0, 20.0):
            deltas = (StatementDelta(A, Counters(calls=1)), StatementDelta(B, Counters(calls=1)))
            interval = Interval(start, start + 10, deltas, None)
            ids.append(store.record_interval(server.id, interval, {A: "fa", B: "fb"}, {}))
        usage = {A: kc(400, 100, minflts=30), B: kc(100), C: kc(999)}  # C: unknown, left out
        for interval_id, start in zip(ids, (0.0, 10.0, 20.0), strict=True):
            written = store.record_kcache(
                server.id, interval_id, KcacheUsage(start, start + 10, usage)
            )
            assert written == 2
        found = store.cpu_usage(server.id, 10.0, 30.0)
        assert store.cpu_usage(server.id, 100.0, 200.0) is None
    assert found is not None and found.seconds == 20.0
    assert found.by_fingerprint == {"fa": kc(800, 200, minflts=60), "fb": kc(200)}
    assert found.share("fa") == pytest.approx(1000 / 1200)


# -- a real server -----------------------------------------------------------------------------------
def test_without_kcache_nothing_is_read_and_check_says_how_to_enable_it(pg_dsn: str) -> None:
    source = PostgresSource(pg_dsn)
    source.connect()
    try:
        source.snapshot()
        source.snapshot()
        status = source.kcache_status
        assert status is not None and not status.usable
        assert source.kcache_usage is None
    finally:
        source.close()
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "check", "--dsn", pg_dsn, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["pg_stat_kcache"]["level"] == "warn"
    assert (
        "shared_preload_libraries = 'pg_stat_statements,pg_stat_kcache'"
        in (checks["pg_stat_kcache"]["fix"])
    )
    assert "CREATE EXTENSION pg_stat_kcache;" in checks["pg_stat_kcache"]["fix"]


@pytest.fixture(scope="module")
def kcache_pg(make_pg: MakePg) -> LocalPostgres:
    """A private server with pg_stat_kcache preloaded and created."""
    server = make_pg(preload=PRELOAD)
    if not server.has_extension("pg_stat_kcache"):
        missing(
            f"pg_stat_kcache is not installed for postgresql {server.major_version} "
            f"(apt-get install postgresql-{server.major_version}-pg-stat-kcache)"
        )
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_kcache")
    return server


def test_created_but_not_preloaded_is_not_read_and_check_says_so(make_pg: MakePg) -> None:
    server = make_pg(preload=PRELOAD)  # CREATE EXTENSION needs the library loaded
    if not server.has_extension("pg_stat_kcache"):
        missing(f"pg_stat_kcache is not installed for postgresql {server.major_version}")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_kcache")
    server.preload = ("pg_stat_statements",)  # then taken out of shared_preload_libraries
    server.restart()
    source = PostgresSource(server.dsn)
    caps = source.connect()
    try:
        for _ in range(2):
            source.snapshot()
        assert source.kcache_usage is None
        status = source.kcache_status
        assert status is not None and status.version is not None and status.preloaded is False
    finally:
        source.close()
    found = [f for f in findings(caps, None, status) if f.name == "pg_stat_kcache"]
    assert found[0].level is Level.WARN
    assert found[0].fix.startswith("add to postgresql.conf: shared_preload_libraries = ")


def test_a_kcache_reset_and_a_restart_never_give_invented_usage(make_pg: MakePg) -> None:
    server = make_pg(preload=PRELOAD)
    if not server.has_extension("pg_stat_kcache"):
        missing(f"pg_stat_kcache is not installed for postgresql {server.major_version}")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_kcache")
    source = PostgresSource(server.dsn)
    source.connect()
    work = psycopg.connect(server.dsn, autocommit=True)
    try:
        source.snapshot()
        for _ in range(3):
            work.execute(CpuHog.SQL, (300_000,))
        source.snapshot()
        usage = source.kcache_usage
        assert usage is not None
        hog = max(usage.by_key.values(), key=lambda c: c.cpu_ms)
        assert hog.cpu_ms > 10.0  # three sums of 300,000 rows took some CPU

        work.execute("SELECT pg_stat_kcache_reset()")
        work.execute("SELECT 1")
        source.snapshot()
        after_reset = source.kcache_usage
        if after_reset is not None:  # entries counting since the reset, never negative
            assert all(min(c.values()) >= 0 for c in after_reset.by_key.values())
            assert all(c.cpu_ms < hog.cpu_ms for c in after_reset.by_key.values())

        work.close()
        server.restart()
        source.connect()
        source.snapshot()
        assert source.kcache_usage is None  # the first reading after a restart has no interval
        source.snapshot()
        assert source.kcache_usage is not None
    finally:
        work.close()
        source.close()


def test_check_is_ok_with_kcache(kcache_pg: LocalPostgres) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "check", "--dsn", kcache_pg.dsn, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["pg_stat_kcache"]["level"] == "ok", checks["pg_stat_kcache"]


def _ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def _server_ticks(postmaster: int) -> dict[int, int]:
    """CPU ticks of the postmaster and every process it started."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            found[int(entry)] = int(fields[11]) + int(fields[12])
    return found


def _spent(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks spent between two readings (a process started in between counts whole)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items())


class CpuHog:
    """One backend summing a generate_series over and over until stopped."""

    SQL = "SELECT sum(g) FROM generate_series(1, %s) g"

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.conn.execute(self.SQL, (400_000,))

    def __enter__(self) -> CpuHog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.conn.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_a_cpu_bound_culprits_share_matches_proc(kcache_pg: LocalPostgres, tmp_path: Path) -> None:
    """Lighter load (a few cheap statements and a moderate generate_series) for a baseline, then a
    backend that burns CPU: the diagnosis' culprit says what share of the server's CPU time it
    took, which must be within 10 points of the share /proc measured for its backend over the
    same span (against every process of the cluster)."""
    dsn = kcache_pg.dsn
    postmaster = kcache_pg.pid
    assert postmaster is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS kc_items")
        conn.execute("CREATE TABLE kc_items (k int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kc_items SELECT g, g FROM generate_series(1, 10000) g")
    light = {
        "lookup": LoadStatement(
            "SELECT v FROM kc_items WHERE k = %s", 20.0, lambda r: (r.randint(1, 10000),)
        ),
        "count": LoadStatement(
            "SELECT count(*) FROM generate_series(1, %s) g", 20.0, lambda r: (60_000,)
        ),
    }
    store_path = tmp_path / "qw.db"
    with Store(store_path) as store, Load(dsn, light, max_s=120) as load:
        watcher = Watcher(PostgresSource(dsn), store, "kc", interval_s=1.0)
        watcher.start()
        for _ in range(8):  # the baseline: light load only
            time.sleep(1.0)
            watcher.collect_once()
        with CpuHog(dsn) as hog:
            time.sleep(1.5)
            watcher.collect_once()
            start = store.last_interval_end(watcher.server_id or 0)
            hog_before, server_before = _ticks(hog.pid), _server_ticks(postmaster)
            for _ in range(8):
                time.sleep(1.0)
                watcher.collect_once()
            hog_after, server_after = _ticks(hog.pid), _server_ticks(postmaster)
            end = store.last_interval_end(watcher.server_id or 0)
        watcher.source.close()
        assert start is not None and end is not None
        usage = store.cpu_usage(watcher.server_id or 0, start, end)
    assert not load.errors
    assert hog_before is not None and hog_after is not None
    proc_share = (hog_after - hog_before) / _spent(server_before, server_after)
    assert usage is not None
    hog_fp = next(fp for fp in usage.by_fingerprint if fp in _fingerprints(store_path, "sum(g)"))
    recorded = usage.share(hog_fp)
    assert recorded is not None

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "querywatch",
            "diagnose",
            "--store",
            str(store_path),
            "--start",
            _iso(start),
            "--end",
            _iso(end),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    culprit = next(c for c in doc["culprits"] if "sum(g)" in c["query"])
    said = next(e for e in culprit["evidence"] if "of the server's CPU time" in e)
    stated = int(re.match(r"(\d+)% of the server's CPU time", said).group(1))  # type: ignore[union-attr]
    print(
        f"cpu share of the hog: /proc {proc_share:.1%}, pg_stat_kcache {recorded:.1%}, "
        f"evidence {said!r}"
    )
    assert abs(recorded - proc_share) <= 0.10
    assert abs(stated / 100 - proc_share) <= 0.105  # the evidence rounds to whole percents
    assert 0.3 < proc_share < 0.97  # the lighter load took a visible share too


def _fingerprints(store: Path, fragment: str) -> set[str]:
    rows = storekit.rows(store, "SELECT fingerprint, query FROM texts")
    return {fp for fp, query in rows if fragment in query}
