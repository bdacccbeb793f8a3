"""`querywatch logs` on logs written by real PostgreSQL servers: stderr, csvlog and jsonlog of one
server, a second server with another log_line_prefix; auto_explain plans, a lock wait, a deadlock,
temp files and errors. What the report and the store say is compared with what the test ran and
with pg_stat_statements of the same server (same fingerprints, same call counts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from querywatch.store import Store
from tests import logkit
from tests.logkit import Ran
from tests.test_cli import assert_one_line_error, run

FORMATS = ("stderr", "csvlog", "jsonlog")


@pytest.fixture(scope="module")
def ran(make_pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    return logkit.write_logs(make_pg, tmp_path_factory.mktemp("logs-a"))


@pytest.fixture(scope="module")
def ran_b(make_pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    return logkit.write_logs(
        make_pg, tmp_path_factory.mktemp("logs-b"), prefix=logkit.PREFIX_B, destinations="stderr"
    )


def report(*args: str) -> dict[str, Any]:
    result = run("logs", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def by_fp(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["fingerprint"]: r for r in rows}


def check_statements(doc: dict[str, Any], ran: Ran) -> None:
    """Calls per statement as pg_stat_statements counted them, under its fingerprint."""
    counted = by_fp(doc["top_by_count"])
    for name in ("lookup", "count"):
        fp, calls = ran.pgss[name]
        assert counted[fp]["calls"] == calls, (name, counted.get(fp))
    assert ran.pgss["lookup"][1] == logkit.LOOKUPS and ran.pgss["count"][1] == logkit.COUNTS
    timed = by_fp(doc["top_by_time"])
    assert timed[ran.fp("lookup")]["total_ms"] > 0


@pytest.mark.parametrize("kind", FORMATS)
def test_report_matches_what_ran(ran: Ran, kind: str) -> None:
    doc = report(str(ran.logs[kind]))
    check_statements(doc, ran)
    assert doc["unparsed"]["count"] == 0, doc["unparsed"]
    # temp files: the sort spilled, and the log names its statement
    temp = by_fp([t for t in doc["temp_files"] if t["fingerprint"]])
    assert temp[ran.fp("sort")]["count"] >= 1 and temp[ran.fp("sort")]["total_bytes"] > 0
    # the lock wait: still waiting after deadlock_timeout, then acquired after the holder's commit
    waits = [w for w in doc["lock_waits"] if w["query"] and "UPDATE items" in w["query"]]
    acquired = [w for w in waits if w["acquired"]]
    assert any(w["wait_ms"] >= logkit.LOCK_HELD_S * 1000 * 0.8 for w in acquired), waits
    assert all(w["wait_ms"] <= ran.lock_wait_s * 1000 + 50 for w in acquired)
    assert any(not w["acquired"] and w["holders"] for w in waits)
    # the deadlock, once, and its error
    assert len(doc["deadlocks"]) == ran.deadlocks == 1
    errors = {e["message"].split(" at or near")[0]: e for e in doc["errors"]}
    assert errors["deadlock detected"]["count"] == 1
    assert errors["division by zero"]["count"] == 1
    assert errors["syntax error"]["count"] == logkit.SYNTAX_ERRORS
    if kind != "stderr":  # csvlog and jsonlog carry the SQLSTATE (stderr only with %e)
        states = {e["sqlstate"]: e["count"] for e in doc["errors"]}
        assert (states["40P01"], states["22012"], states["42601"]) == (1, 1, 2)
    # auto_explain plans beside their executions, JSON and text
    plans = {e["fingerprint"]: e for e in doc["plans"]}
    assert plans[ran.fp("plan_json")]["plan_format"] == "json"
    assert '"Node Type"' in plans[ran.fp("plan_json")]["plan"]
    assert plans[ran.fp("plan_text")]["plan_format"] == "text"
    assert "Scan" in plans[ran.fp("plan_text")]["plan"]
    # per hour: every execution of the log counted once
    assert sum(h["statements"] for h in doc["hours"]) == doc["counts"]["executions"]


def test_another_log_line_prefix(ran_b: Ran) -> None:
    doc = report(str(ran_b.logs["stderr"]))
    check_statements(doc, ran_b)
    assert doc["unparsed"]["count"] == 0
    assert len(doc["deadlocks"]) == 1


def test_the_three_formats_agree(ran: Ran) -> None:
    docs = [report(str(ran.logs[k])) for k in FORMATS]
    keys = ("executions", "lock_waits", "deadlocks", "temp_files", "errors", "plans")
    assert len({tuple(d["counts"].get(k) for k in keys) for d in docs}) == 1, [
        d["counts"] for d in docs
    ]
    assert len({json.dumps(d["top_by_count"], sort_keys=True) for d in docs}) == 1


def test_store_from_logs_serves_top_diagnose_and_plans(ran: Ran, tmp_path: Path) -> None:
    """A server known only from its log: top and diagnose read it, plans are in the history."""
    db = tmp_path / "qw.db"
    doc = report(str(ran.logs["stderr"]), "--store", str(db), "--server", "from-logs")
    assert doc["loaded"]["server"] == "from-logs" and doc["loaded"]["buckets"] >= 1
    since = f"{int(time.time() - ran.started + 120)}s"
    top = run("top", "--store", str(db), "--since", since, "--by", "calls", "--format", "json")
    assert top.returncode == 0, top.stderr
    listed = by_fp(json.loads(top.stdout)["statements"])
    assert listed[ran.fp("lookup")]["calls"] == logkit.LOOKUPS
    assert listed[ran.fp("count")]["calls"] == logkit.COUNTS
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ran.started - 60))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ran.ended + 60))
    diag = run("diagnose", "--store", str(db), "--start", start, "--end", end, "--format", "json")
    assert diag.returncode == 0, diag.stderr
    assert json.loads(diag.stdout)["verdict"]
    with Store(db, create=False) as st:
        srv = next(s for s in st.servers() if s.name == "from-logs")
        json_plans = st.plans(ran.fp("plan_json"), srv.id)
        text_plans = st.plans(ran.fp("plan_text"), srv.id)
        waits = st.log_events(srv.id, "lock_wait", ran.started - 5, ran.ended + 5)
        temps = st.log_events(srv.id, "temp_file", ran.started - 5, ran.ended + 5)
        dead = st.log_events(srv.id, "deadlock", ran.started - 5, ran.ended + 5)
    assert json_plans and json_plans[0].plan["Plan"]["Node Type"] == "Aggregate"
    assert text_plans and text_plans[0].total_cost > 0
    assert any(w.fingerprint == ran.fp("locked") for w in waits)
    assert [t.fingerprint for t in temps] == [ran.fp("sort")]
    assert len(dead) == 1
    kinds = (
        "lock_wait_messages",
        "deadlocks",
        "temp_files",
        "errors",
        "checkpoints",
        "autovacuums",
    )
    assert doc["loaded"]["events"] == sum(doc["counts"].get(k, 0) for k in kinds)
    again = report(str(ran.logs["stderr"]), "--store", str(db), "--server", "from-logs")
    assert again["loaded"]["statements"] == 0 and again["loaded"]["events"] == 0
    other = report(str(ran.logs["csvlog"]), "--store", str(db), "--server", "from-logs")
    assert other["loaded"]["statements"] == 0  # the same span of log in another format: skipped


def test_watch_follows_the_server_log_beside_pg_stat_statements(
    make_pg: Any, tmp_path: Path
) -> None:
    """watch --log: plans, lock waits and temp files of the live log reach the store while
    pg_stat_statements stays the only source of durations."""
    settings = logkit.log_settings(logkit.PREFIX_A, "stderr")
    pg = make_pg(settings, preload=("pg_stat_statements", "auto_explain"))
    log = pg.data_dir / "log" / "postgresql.log"
    db = tmp_path / "qw.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    argv = [sys.executable, "-m", "querywatch", "watch", "--dsn", pg.dsn, "--store", str(db)]
    errors = tmp_path / "watch.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [*argv, "--server", "live", "--interval", "1", "--log", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    ran = Ran()
    try:
        started = wait_until(lambda: "following the log" in errors.read_text())
        assert started, errors.read_text()
        logkit.workload(pg.dsn, ran)

        def stored() -> bool:
            with Store(db, create=False) as st:
                srv = next(s for s in st.servers() if s.name == "live")
                now = time.time()
                kinds = st.log_event_counts(srv.id, now - 600, now + 60)
                return bool(
                    st.plans(ran.fp("plan_json"), srv.id)
                    and kinds.get("lock_wait")
                    and kinds.get("temp_file")
                    and kinds.get("deadlock")
                )

        assert wait_until(stored, 30), "the log's events never reached the store"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, errors.read_text()
    assert "Traceback" not in errors.read_text()
    with Store(db, create=False) as st:
        srv = next(s for s in st.servers() if s.name == "live")
        temps = st.log_events(srv.id, "temp_file", ran.started - 5, time.time())
        assert [t.fingerprint for t in temps] == [ran.fp("sort")]
        assert st.plans(ran.fp("plan_text"), srv.id)
        assert st.log_ranges(srv.id) == []  # no durations from the log: pg_stat_statements has them


def wait_until(check: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def node_types(doc: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        found.add(str(node.get("Node Type")))
        for child in node.get("Plans", ()):
            walk(child)

    walk(doc["Plan"])
    return found


def test_keep_params_explains_the_logged_values(make_pg: Any, tmp_path: Path) -> None:
    """One statement, two values: a common status reads the table, a rare one the index. The
    EXPLAIN of each logged execution, with its own value, shows the difference."""
    settings = logkit.log_settings(logkit.PREFIX_A, "stderr")
    pg = make_pg(settings, preload=("pg_stat_statements", "auto_explain"))
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE jobs (id int PRIMARY KEY, status text, pad text)")
        c.execute(
            "INSERT INTO jobs SELECT g, CASE WHEN g % 200 = 0 THEN 'new' ELSE 'done' END,"
            " repeat('x', 100) FROM generate_series(1, 40000) g"
        )
        c.execute("CREATE INDEX jobs_status ON jobs (status)")
        c.execute("ANALYZE jobs")
        c.execute("SET auto_explain.log_min_duration = 0")
        c.execute("SET auto_explain.log_format = 'json'")
        for status in ("done", "new"):
            c.execute("SELECT id, pad FROM jobs WHERE status = %s", (status,))
    log = pg.data_dir / "log" / "postgresql.log"
    assert wait_until(lambda: "'new'" in log.read_text(errors="replace"), 10)
    doc = report(str(log), "--keep-params", "--dsn", pg.dsn, "--top", "50")
    lookups = [e for e in doc["slowest"] if e["query"].startswith("SELECT id, pad FROM jobs")]
    by_value = {tuple(e["params"]): e for e in lookups if e["params"]}
    assert set(by_value) == {("'done'",), ("'new'",)}, lookups
    done, new = by_value[("'done'",)]["explain"], by_value[("'new'",)]["explain"]
    assert done is not None and new is not None
    assert "Seq Scan" in node_types(done)
    assert node_types(new) & {"Index Scan", "Bitmap Index Scan"}
    plain = report(str(log), "--keep-params")
    assert all(e["explain"] is None for e in plain["slowest"])  # no --dsn: nothing explained
    assert_one_line_error(
        run("logs", str(log), "--keep-params", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"),
        "cannot connect",
    )
    # the auto_explain plans of both executions are the statement's plan history in `explain`
    db = tmp_path / "qw.db"
    loaded = report(str(log), "--store", str(db), "--server", "jobs")
    assert loaded["loaded"]["plans"] == 2
    fp = lookups[0]["fingerprint"]
    explained = run(
        "explain", fp, "--dsn", pg.dsn, "--store", str(db), "--server", "jobs", "--format", "json"
    )
    assert explained.returncode == 0, explained.stderr
    history = json.loads(explained.stdout)["plan_history"]
    assert len({h["plan_hash"] for h in history}) >= 2, history  # seq scan and index scan
