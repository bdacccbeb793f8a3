"""`querywatch status` derived from the store (querywatch.status), and the warning about a
monitoring role that sees only its own statements (querywatch.source.capabilities), on real
PostgreSQL and a real SQLite store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from querywatch import status
from querywatch.detect import Detector, DetectSettings
from querywatch.model import (
    Counters,
    DatabaseCounters,
    Gap,
    GapReason,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.monitor import Monitor
from querywatch.oneshot import diagnose_now
from querywatch.report import diagnosis_to_json, diagnosis_to_text
from querywatch.service import WatchOptions, run_watch
from querywatch.settings import Settings
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher

KEY = StatementKey(1, 10, 42)


def interval(end: float, gaps: tuple[Gap, ...] = ()) -> Interval:
    delta = StatementDelta(KEY, Counters(calls=10, exec_ms=20, rows=10))
    return Interval(end - 1, end, (delta,), DatabaseCounters(), gaps=gaps)


def cli_status(store: Path, fmt: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "status", "--store", str(store), "--format", fmt],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout) if fmt == "json" else result.stdout


def seeded(path: Path, last_error_at: float, last_success: float) -> None:
    """A store as a restarted watcher leaves it: its in-memory counters say 0 gaps and no open
    incident, while the store holds a dealloc gap, a down gap and a firing incident."""
    with Store(path) as st:
        server = st.server("db").id
        dealloc = Gap(3.5, 4.0, GapReason.DEALLOC, "2 entries evicted", True)
        for end in (1.0, 2.0, 3.0, 4.0):
            st.record_interval(
                server, interval(end, (dealloc,) if end == 4.0 else ()), {KEY: "fp"}, {"fp": "q"}
            )
        st.record_gap(server, Gap(4.0, 9.0, GapReason.DOWN, "server unreachable", False))
        firing = Incident(
            "inc1",
            "fp",
            IncidentState.FIRING,
            3.0,
            3.0,
            None,
            ("latency",),
            (IncidentEvent(3.0, IncidentState.FIRING, "latency"),),
        )
        st.save_incident(server, firing, {"summary": "q is slow"})
        st.set_status(
            "collector:db",
            {
                "last_success": last_success,
                "last_error": "server unreachable",
                "last_error_at": last_error_at,
                "intervals": 1,
                "gaps": 0,
                "dealloc": 2,
            },
        )
        st.set_status("detector:db", {"learning": False, "open_incidents": []})


def test_status_counts_from_the_store_not_the_process(tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    seeded(path, last_error_at=8.0, last_success=10.0)
    with Store(path) as st:
        [s] = status.build(st)
    assert (s.intervals, s.gap_count, dict(s.gaps)) == (4, 2, {"dealloc": 1, "down": 1})
    assert [(i.id, i.state) for i in s.open_incidents] == [("inc1", "firing")]
    assert s.recovered
    doc = cli_status(path, "json")
    [derived] = doc["servers"]
    assert (derived["gaps"], derived["gaps_by_reason"]) == (2, {"dealloc": 1, "down": 1})
    assert [i["id"] for i in derived["open_incidents"]] == ["inc1"]
    assert derived["recovered"] is True and derived["last_error"] == "server unreachable"
    # the raw rows agree with it: no stale in-memory counters
    assert doc["status"]["collector:db"]["gaps"] == 2
    assert doc["status"]["collector:db"]["intervals"] == 4
    assert [i["id"] for i in doc["status"]["detector:db"]["open_incidents"]] == ["inc1"]
    text = cli_status(path, "text")
    assert "4 intervals, 2 gaps (1 dealloc, 1 down)" in text, text
    assert "1 open incidents (1 firing, 0 pending)" in text, text
    assert "recovered (snapshot at" in text and "server unreachable" in text, text
    assert cli_status(path, "text") == text  # the same every time


def test_an_error_after_the_last_success_is_not_recovered(tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    seeded(path, last_error_at=12.0, last_success=10.0)
    with Store(path) as st:
        [s] = status.build(st)
    assert not s.recovered
    assert "last error at 1970-01-01T00:00:12Z, not recovered: server unreachable" in "\n".join(
        status.lines([s], 20.0)
    )


def test_a_resolved_incident_is_not_open(tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    seeded(path, last_error_at=8.0, last_success=10.0)
    with Store(path) as st:
        [stored] = st.incidents()
        done = stored.incident
        st.save_incident(1, Incident(done.id, done.key, IncidentState.RESOLVED, 3.0, 3.0, 9.0, ()))
        [s] = status.build(st)
    assert s.open_incidents == ()
    assert "0 open incidents" in status.lines([s], 20.0)[-1]


# -- a role without pg_monitor sees only its own statements -----------------------------------------
@pytest.fixture
def limited_role(pg_dsn: str) -> str:
    """A login role with no pg_monitor (and one with pg_read_all_stats only, for the control)."""
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        for role in ("qw_limited", "qw_stats"):
            c.execute(f"DROP ROLE IF EXISTS {role}")
            c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute("GRANT pg_read_all_stats TO qw_stats")
    return pg_dsn.replace("user=postgres", "user=qw_limited")


def test_capabilities_say_which_roles_see_every_statement(pg_dsn: str, limited_role: str) -> None:
    seen = {}
    for dsn in (pg_dsn, limited_role, pg_dsn.replace("user=postgres", "user=qw_stats")):
        source = PostgresSource(dsn)
        caps = source.connect()
        source.close()
        seen[caps.role] = (caps.sees_all_statements, caps.visibility_note())
    assert seen == {
        "postgres": (True, ""),
        "qw_limited": (False, "only the statements of role 'qw_limited' are visible"),
        "qw_stats": (True, ""),
    }


def test_watch_as_a_limited_role_warns_at_start_in_status_and_in_diagnoses(
    limited_role: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qw.db"
    cfg = Settings(
        dsn=limited_role, store=str(path), server_name="db", interval=0.5, activity_interval=0.1
    )
    Store(path).close()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: run_watch(cfg, WatchOptions(), stop))
    with caplog.at_level(logging.WARNING, logger="querywatch"):
        thread.start()
        try:
            time.sleep(2.5)
        finally:
            stop.set()
            thread.join(30)
    note = "only the statements of role 'qw_limited' are visible"
    assert any(note in r.getMessage() for r in caplog.records), caplog.text
    text = cli_status(path, "text")
    assert f"warning db: {note} (fix: GRANT pg_monitor TO qw_limited;)" in text, text
    assert cli_status(path, "json")["servers"][0]["note"] == note
    with Store(path) as st:
        server = st.server("db").id
        monitor = Monitor(st, server, "db", Detector(DetectSettings()))
        found = monitor.diagnose_window(time.time() - 60, time.time())
    assert found.note == note and found.summary.endswith(f"(note: {note})")
    assert diagnosis_to_json(found)["note"] == note
    assert note in diagnosis_to_text(found)


def test_a_role_that_sees_all_has_no_note(pg_dsn: str, tmp_path: Path) -> None:
    with Store(tmp_path / "qw.db") as st:
        source = PostgresSource(pg_dsn)
        caps = source.connect()
        source.close()
        monitor = Monitor(st, st.server("db").id, "db", Detector(DetectSettings()))
        assert monitor.note_visibility(caps) == ""
        found = monitor.diagnose_window(0.0, 10.0)
        assert found.note == "" and "note" not in diagnosis_to_json(found)
        [s] = status.build(st)
        assert s.visibility_note == ""


# -- the watcher's own downtime -------------------------------------------------------------------
def test_downtime_is_a_gap_only_when_no_snapshot_can_be_continued(
    pg_dsn: str, tmp_path: Path
) -> None:
    with Store(tmp_path / "qw.db") as st:
        server = st.server("db").id
        ended = time.time() - 30
        st.record_interval(server, interval(ended), {KEY: "fp"}, {"fp": "q"})  # no snapshot kept
        first = Watcher(PostgresSource(pg_dsn), st, "db", interval_s=0.2)
        first.start()
        first.collect_once()  # stores its snapshot with the interval
        first.source.close()
        [gap] = st.gaps(server, 0, time.time())
        assert (gap.reason, gap.start, gap.partial) == (GapReason.DOWN, ended, False)
        assert gap.end >= ended + 29
        again = Watcher(PostgresSource(pg_dsn), st, "db", interval_s=0.2)
        again.start()  # continues from the stored snapshot: a catch-up, no gap
        again.collect_once()
        again.source.close()
        assert len(st.gaps(server, 0, time.time())) == 1
        [s] = status.build(st)
        assert dict(s.gaps) == {"down": 1}


def test_one_shot_diagnosis_as_a_limited_role_says_so(limited_role: str) -> None:
    found = diagnose_now(PostgresSource(limited_role), 1.0, step_s=0.5, activity_s=0.25)
    note = "only the statements of role 'qw_limited' are visible"
    assert found.note == note and f"(note: {note})" in found.summary
