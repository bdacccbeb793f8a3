"""Sustained saturation is held (issue 12, item 3): statements still running count in each
interval, active sessions against the server's cores make a rule that is on by default.

Acceptance: four CPU-bound sessions for 60 s against a real server watched by `querywatch watch`
(1 s intervals, a real webhook receiver): one incident, firing within 2 intervals, open until the
sessions end, then resolved.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from workload import Load, Receiver, Statement, learned, wait_until, watch_process

from querywatch.activity import RunningTime, summarize
from querywatch.check import CpuCores, Level, findings
from querywatch.detect.baseline import Baseline, Robust, interval_rates
from querywatch.detect.rules import cpu_saturation, make_context
from querywatch.detect.settings import DetectSettings
from querywatch.model import ActivitySample, Counters, IntervalSummary, SessionSample
from querywatch.source.cores import cores_from_files, is_local, server_cores
from querywatch.source.postgres import PostgresSource

INTERVAL = 1.0
SLACK_S = 1.5  # snapshot, detection, diagnosis and the HTTP POST after an interval ends
SESSIONS = 4
LOAD_S = 60.0
STATEMENT_S = 20.0  # each session runs CPU-bound statements of 20 s back to back
BURN = (
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t "
    "WHERE clock_timestamp() < %s) SELECT count(*) FROM t"
)


# -- pure: running time ------------------------------------------------------------------------


def session(pid: int, started: float, at: float, fp: str = "burn") -> SessionSample:
    return SessionSample(
        pid, "active", None, None, 1, fp, query_start=started, query_seconds=at - started
    )


def sample(at: float, *sessions: SessionSample) -> ActivitySample:
    return ActivitySample(at, sessions, 100)


def test_running_time_counts_each_interval_once_and_hands_over_to_pg_stat_statements() -> None:
    """A 25 s statement over 10 s intervals: 10 s, 10 s of running time, then pg_stat_statements
    adds 25 s when it finishes and the 20 s counted before are taken back: 25 s in all."""
    running = RunningTime()
    started = 95.0  # before the first interval [100, 110]: those 5 s are not invented
    got = [
        running.account([sample(110.2, session(7, started, 110.2))], 100.0, 110.0),
        running.account([sample(120.2, session(7, started, 120.2))], 110.0, 120.0),
        running.account([sample(130.2)], 120.0, 130.0),  # finished at 120 + 0 < 130
    ]
    assert [round(g.get("burn", 0.0)) for g in got] == [10_000, 10_000, -20_000]
    pgss = [0.0, 0.0, 25_000.0]  # what pg_stat_statements adds per interval
    total = sum(p + g.get("burn", 0.0) for p, g in zip(pgss, got, strict=True))
    assert total == pytest.approx(25_000.0)
    assert running.counted == {}


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], {}),  # no sample: nothing known
        ([sample(109.0, session(1, 101.0, 109.0))], {}),  # none after the snapshot: next time
        ([sample(110.5, session(1, 110.2, 110.5))], {}),  # started after the snapshot
        ([sample(110.5, session(1, 104.0, 110.5))], {"burn": 6000.0}),
        (  # two sessions of one statement, one of another
            [
                sample(
                    110.5,
                    session(1, 104.0, 110.5),
                    session(2, 108.0, 110.5),
                    session(3, 100.0, 110.5, "other"),
                )
            ],
            {"burn": 8000.0, "other": 10000.0},
        ),
    ],
)
def test_running_time_table(samples: list[ActivitySample], expected: dict[str, float]) -> None:
    got = RunningTime().account(samples, 100.0, 110.0)
    assert got == pytest.approx(expected)


def test_running_time_reaches_detection_through_the_summary() -> None:
    samples = [sample(110.5, session(1, 100.0, 110.5), session(2, 100.0, 110.5))]
    running = RunningTime().account(samples, 100.0, 110.0)
    act = summarize(samples, running)
    assert act is not None
    summary = IntervalSummary(100.0, 110.0, True, {"x": Counters(calls=10, exec_ms=50)}, None, act)
    rates = interval_rates(summary)
    assert rates["burn"].db_ms_per_s == pytest.approx(2000.0)  # 2 sessions x 10 s over 10 s
    assert rates["burn"].calls == 0
    assert rates["x"].db_ms_per_s == pytest.approx(5.0)


def test_cpu_rule_counts_active_sessions_against_cores() -> None:
    samples = [
        sample(101.0 + i, *(session(p, 100.0, 101.0 + i) for p in range(4))) for i in range(3)
    ]
    act = summarize(samples)
    summary = IntervalSummary(100.0, 104.0, True, {}, None, act)
    base = Baseline(20, False, Robust(1.0), Robust(10.0), {})
    on = cpu_saturation(make_context(summary, base, DetectSettings(cpu_cores=2)))
    assert len(on) == 1 and on[0].observed == 4.0 and on[0].severity == pytest.approx(2.5)
    assert "4.0 sessions active on average for 2 CPU cores" in on[0].evidence
    assert cpu_saturation(make_context(summary, base, DetectSettings(cpu_cores=8))) == []
    assert cpu_saturation(make_context(summary, base, DetectSettings(cpu_cores=0))) == []


@pytest.mark.parametrize(
    ("cpuinfo", "cpu_max", "expected"),
    [
        ("processor\t: 0\nprocessor\t: 1\n", None, 2),
        ("processor : 0\nprocessor : 1\nprocessor : 2\nprocessor : 3\n", "max 100000", 4),
        ("processor : 0\nprocessor : 1\nprocessor : 2\nprocessor : 3\n", "200000 100000", 2),
        (None, "50000 100000", 1),
        ("", None, None),
        ("processor : 0\n", "garbage", 1),
    ],
)
def test_cores_from_files(cpuinfo: str | None, cpu_max: str | None, expected: int | None) -> None:
    assert cores_from_files(cpuinfo, cpu_max) == expected


@pytest.mark.parametrize(
    ("dsn", "local"),
    [
        ("host=127.0.0.1 port=5432", True),
        ("host=/tmp port=5432", True),
        ("postgresql://localhost/db", True),
        ("host=db.example.com", False),
        ("host=10.0.0.3", False),
    ],
)
def test_is_local(dsn: str, local: bool) -> None:
    assert is_local(dsn) is local


def test_check_warns_with_the_fix_when_cores_are_unknown(pg_dsn: str) -> None:
    source = PostgresSource(pg_dsn)
    caps = source.connect()
    try:
        found = server_cores(source)
    finally:
        source.close()
    assert found is not None and found.count >= 1  # a superuser reads /proc/cpuinfo
    assert "/proc/cpuinfo" in found.how
    by_name = {f.name: f for f in findings(caps, None, None, CpuCores(None))}
    warn = by_name["cpu cores"]
    assert warn.level is Level.WARN and "cpu_cores" in warn.fix
    ok = {f.name: f for f in findings(caps, None, None, CpuCores(None, found.count, found.how))}
    assert ok["cpu cores"].level is Level.OK and str(found.count) in ok["cpu cores"].message


def test_check_command_reports_the_cores(pg_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "check", "--dsn", pg_dsn, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["cpu cores"]["level"] == "ok", checks["cpu cores"]
    assert "read from the server's /proc/cpuinfo" in checks["cpu cores"]["message"]


# -- acceptance: four CPU-bound sessions for 60 s -------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def burn(dsn: str, until: float, errors: list[str]) -> None:
    """CPU-bound statements of STATEMENT_S each, back to back, until ``until`` (monotonic)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while (left := until - time.monotonic()) > 0.5:
                deadline = datetime.now(UTC) + timedelta(seconds=min(STATEMENT_S, left))
                conn.execute(BURN, (deadline,))
    except psycopg.Error as exc:
        errors.append(str(exc))


def hook(receiver: Receiver) -> list[tuple[float, dict[str, Any]]]:
    return [(r.at, r.body) for r in receiver.received if r.path.startswith("/hook")]


@pytest.mark.parametrize(
    "cores",
    [
        pytest.param(None, id="cores-read-from-the-server"),
        # on a big server the CPU rule stays quiet: the running time alone holds the incident
        pytest.param(64, id="64-cores-running-time-alone"),
    ],
)
def test_four_cpu_bound_sessions_hold_one_incident_until_they_end(
    pg_dsn: str, tmp_path: Path, receiver: Receiver, cores: int | None
) -> None:
    store = tmp_path / "qw.db"
    options = () if cores is None else ("--cpu-cores", str(cores))
    light = {
        "tick": Statement("SELECT count(*) FROM pg_class WHERE relpages > %s", 20, lambda r: (0,))
    }
    with (
        Load(pg_dsn, light),
        watch_process(pg_dsn, store, "--alert-webhook", f"{receiver.url}/hook", *options),
    ):
        assert learned(store, 90), "the watcher did not leave its learning period"
        time.sleep(3 * INTERVAL)
        assert hook(receiver) == [], "paged before any load"
        errors: list[str] = []
        start = time.time()
        until = time.monotonic() + LOAD_S
        threads = [
            threading.Thread(target=burn, args=(pg_dsn, until, errors)) for _ in range(SESSIONS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_S + 30)
        ended = time.time()
        assert errors == []
        resolved = wait_until(
            lambda: [b for _, b in hook(receiver) if b["status"] == "resolved"], 30, 0.2
        )
    log = store.with_suffix(".log").read_text()
    read = re.search(r"the server has (\d+) CPU cores \(read from (.*)\)$", log, re.M)
    assert (read is not None) == (cores is None), log
    how = f"{read.group(1)}, read from {read.group(2)}" if read else f"{cores}, set"
    received = hook(receiver)
    fired = [(at, b) for at, b in received if b["status"] == "firing"]
    assert fired, f"no page for {SESSIONS} CPU-bound sessions; log:\n{log}"
    incidents = {b["incident"] for _, b in received}
    assert len(incidents) == 1, [
        (round(at - start, 1), b["diagnosis"].get("summary")) for at, b in received
    ]
    first = fired[0][0] - start
    print(
        f"\ncores {how}; first page {first:.1f} s after the "
        f"sessions started; sessions ran {ended - start:.1f} s"
    )
    assert first <= 2 * INTERVAL + SLACK_S, f"paged {first:.1f} s after the sessions started"
    assert resolved, "the incident did not resolve after the sessions ended"
    resolved_at = next(at for at, b in received if b["status"] == "resolved")
    print(f"resolved {resolved_at - ended:.1f} s after the sessions ended")
    assert resolved_at >= ended, f"resolved {ended - resolved_at:.1f} s before the sessions ended"
    culprits = fired[0][1]["diagnosis"]["culprits"]
    assert any("WITH RECURSIVE" in c["query"] for c in culprits), culprits
