"""`querywatch logs` as a person runs it: bad input gives one line and a non-zero exit, garbage is
counted and never stops the file, --state reads only what is new, --follow tails through
rotation into the store, --anonymize masks literals, HTML escapes what it shows."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from querywatch.errors import StoreError
from querywatch.fingerprint import fingerprint
from querywatch.store import Store
from querywatch.web import create_app, render_incident_report
from tests.test_cli import assert_one_line_error, run
from tests.webstore import Client

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)


def line(seconds: float, text: str, ms: float = 1.5, pid: int = 42) -> str:
    at = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{at} UTC [{pid}] bob@shop LOG:  duration: {ms:.3f} ms  statement: {text}\n"


def lookups(n: int, start: float = 0.0) -> str:
    return "".join(line(start + i, f"SELECT * FROM users WHERE id = {i}") for i in range(n))


def report(*args: str) -> dict[str, Any]:
    result = run("logs", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def executions(doc: dict[str, Any]) -> int:
    return int(doc["counts"].get("executions", 0))


# -- bad input ---------------------------------------------------------------------------------------
def test_missing_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("logs", str(tmp_path / "nope.log")), "no such file", "nope.log")


def test_a_folder_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("logs", str(tmp_path)), "is a folder")


def test_unreadable_file_is_one_line() -> None:
    # readable by its mode, but reading fails (EIO): what an unreadable disk block gives
    assert_one_line_error(run("logs", "/proc/self/mem"), "cannot read", "/proc/self/mem")


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(lookups(2))
    assert_one_line_error(run("logs", str(log), str(log), "--follow"), "--follow")
    assert_one_line_error(run("logs", str(log), "--dsn", "host=127.0.0.1"), "--keep-params")
    unwritable = tmp_path / "no" / "such" / "folder" / "r.html"
    assert_one_line_error(run("logs", str(log), "--output", str(unwritable)), "--output")
    csv = tmp_path / "a.csv"
    csv.write_text(
        '2026-11-30 10:00:00.000 UTC,"bob","shop",42,"127.0.0.1:5",a.1,1,"SELECT",,,,LOG,'
        '00000,"x",,,,,,,,""\n'
    )
    assert_one_line_error(run("logs", str(csv), "--prefix", "%m [%p] "), "--prefix")


def test_garbage_is_counted_never_fatal(tmp_path: Path) -> None:
    rng = random.Random(14)
    log = tmp_path / "mixed.log"
    with log.open("wb") as out:
        out.write(lookups(5).encode())
        out.write(bytes(rng.randrange(256) for _ in range(3000)))
        out.write(b"\nnot a log line at all\n\xff\xfe truncated 2026-11-30 10:0\n")
        out.write(lookups(4, start=10).encode())
    doc = report(str(log))
    assert executions(doc) == 9  # the lines after the garbage are read too
    assert doc["unparsed"]["count"] >= 2
    assert doc["unparsed"]["samples"] and all(s["reason"] for s in doc["unparsed"]["samples"])
    text = run("logs", str(log))
    assert text.returncode == 0 and "unparsed lines" in text.stdout


def test_binary_file_and_truncated_gzip(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(random.Random(3).randrange(256) for _ in range(20000)))
    doc = report(str(noise))
    assert executions(doc) == 0 and doc["unparsed"]["count"] > 0
    packed = gzip.compress(lookups(40_000).encode())  # ~3.5 MB: more than one read block
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    doc = report(str(cut))
    assert 0 < executions(doc) < 40_000  # what could be read, then a clean stop


def test_standard_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "logs", "-", "--format", "json"],
        input=lookups(3),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert executions(json.loads(result.stdout)) == 3


# -- incremental and live -------------------------------------------------------------------------------
def test_state_reads_only_what_is_new(tmp_path: Path) -> None:
    log, state = tmp_path / "pg.log", tmp_path / "state.json"
    log.write_text(lookups(4))
    assert executions(report(str(log), "--state", str(state))) == 4
    assert executions(report(str(log), "--state", str(state))) == 0
    with log.open("a") as out:
        out.write(lookups(2, start=100))
    assert executions(report(str(log), "--state", str(state))) == 2
    log.unlink()  # rotated away: a new file at the path is read from its start
    log.write_text(lookups(3, start=200))
    assert executions(report(str(log), "--state", str(state))) == 3


def store_calls(db: Path, server: str) -> int:
    try:
        st = Store(db, create=False)  # (a schema of PostgreSQL under QW_TEST_STORE=postgresql)
    except StoreError:
        return 0  # not created yet
    with st:
        found = [s for s in st.servers() if s.name == server]
        if not found:
            return 0
        rows, _ = st.totals(found[0].id, T0.timestamp() - 3600, T0.timestamp() + 3600)
    return int(sum(r.counters.calls for r in rows))


def wait_for(check: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_follow_tails_through_rotation_into_the_store(tmp_path: Path) -> None:
    log, db = tmp_path / "pg.log", tmp_path / "qw.db"
    log.write_text(lookups(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    argv = [sys.executable, "-m", "querywatch", "logs", str(log), "--follow"]
    proc = subprocess.Popen(
        [*argv, "--store", str(db), "--server", "tail", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert wait_for(lambda: store_calls(db, "tail") == 3), "the first lines never stored"
        with log.open("a") as out:
            out.write(lookups(2, start=60))
        assert wait_for(lambda: store_calls(db, "tail") == 5), "appended lines never stored"
        log.rename(tmp_path / "pg.log.1")  # rotation: a new file takes the path
        log.write_text(lookups(4, start=120))
        assert wait_for(lambda: store_calls(db, "tail") == 9), "the rotated-in file never read"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    doc = json.loads(stdout)
    assert executions(doc) == 9
    assert doc["loaded"]["statements"] == 9


# -- what is shown ------------------------------------------------------------------------------------
SECRET_LOG = "".join(
    f"2026-11-30 10:00:0{second}.000 UTC [42] bob@shop {message}\n" if second else message
    for second, message in (
        (
            "0",
            "LOG:  duration: 12.500 ms  statement: SELECT * FROM users"
            " WHERE email = 'alice@example.com' AND id = 4242",
        ),
        ("1", "LOG:  duration: 0.109 ms  plan:"),
        ("", "\tQuery Text: SELECT count(*) FROM t WHERE v LIKE 'secret%'\n"),
        ("", "\tAggregate  (cost=25.89..25.90 rows=1 width=8)\n"),
        ("", "\t  ->  Seq Scan on t  (cost=0.00..25.88 rows=6 width=0)\n"),
        ("", "\t        Filter: (v ~~ 'secret%'::text)\n"),
        ("1", "LOG:  duration: 0.200 ms  statement: SELECT count(*) FROM t WHERE v LIKE 'secret%'"),
        ("2", "LOG:  duration: 0.300 ms  execute <unnamed>: SELECT * FROM users WHERE email = $1"),
        ("2", "DETAIL:  parameters: $1 = 'carol@example.com'"),
        ("3", 'ERROR:  duplicate key value violates unique constraint "users_pkey"'),
        ("3", "DETAIL:  Key (id)=(4242) already exists."),
        ("3", "STATEMENT:  INSERT INTO users VALUES (4242, 'alice@example.com')"),
    )
)


@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_anonymize_masks_literals(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "app.log"
    log.write_text(SECRET_LOG)
    kept = run("logs", str(log), "--keep-params", "--format", fmt)
    assert kept.returncode == 0, kept.stderr
    assert "carol@example.com" in kept.stdout and "secret%" in kept.stdout  # kept as asked
    masked = run("logs", str(log), "--keep-params", "--anonymize", "--format", fmt)
    assert masked.returncode == 0, masked.stderr
    for secret in ("alice@example.com", "carol@example.com", "secret", "4242"):
        assert secret not in masked.stdout, (secret, fmt)
    assert "users" in masked.stdout  # the statements are still there


def test_parameters_are_dropped_unless_kept(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(SECRET_LOG)
    plain = run("logs", str(log), "--format", "json")
    assert plain.returncode == 0
    assert "carol@example.com" not in plain.stdout and "alice@example.com" not in plain.stdout


def test_html_report_escapes_and_has_every_section(tmp_path: Path) -> None:
    log = tmp_path / "odd.log"
    log.write_text(lookups(3) + line(5, 'SELECT "<b>col</b>" FROM t WHERE x = 1') + SECRET_LOG)
    page = tmp_path / "r.html"
    result = run("logs", str(log), "--format", "html", "--output", str(page))
    assert result.returncode == 0, result.stderr
    body = page.read_text()
    assert "&lt;b&gt;col&lt;/b&gt;" in body and "<b>col</b>" not in body
    for anchor in ("by-time", "by-count", "slowest", "plans", "locks", "deadlocks", "temp"):
        assert f"id='{anchor}'" in body
    for anchor in ("errors", "hours", "unparsed"):
        assert f"id='{anchor}'" in body
    assert "<script" not in body


def test_text_and_json_agree(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(lookups(6) + SECRET_LOG)
    doc = report(str(log))
    text = run("logs", str(log)).stdout
    top = doc["top_by_count"][0]
    assert top["fingerprint"] == fingerprint("SELECT * FROM users WHERE id = 1")
    assert top["calls"] == 6
    assert "top statements by count" in text and top["query"] in text


def outage_log() -> str:
    """An hour of a server's log: a steady lookup every 2 s, then at 10:40 a new statement
    10 times every 2 s at 80 ms (the outage the log alone can tell)."""
    lines = []
    for s in range(0, 3600, 2):
        lines.append(line(s, f"SELECT * FROM users WHERE id = {s}", 2.0))
        if s >= 2400:
            lines += [
                line(s + k * 0.1, f"SELECT * FROM orders WHERE lower(email) = 'u{k}@x'", 80.0)
                for k in range(10)
            ]
    return "".join(lines)


def test_post_mortem_from_logs_opens_the_incident(tmp_path: Path) -> None:
    """A server known only from its log: the incident detection would have opened, diagnosed,
    and rendered by the incident report."""
    log, db = tmp_path / "outage.log", tmp_path / "qw.db"
    log.write_text(outage_log())
    doc = report(str(log), "--store", str(db), "--server", "shop", "--incidents")
    found = doc["loaded"]["incidents"]
    assert len(found) == 1, found
    culprit = "SELECT * FROM orders WHERE lower(email) = $1"
    assert culprit in found[0]["summary"] and found[0]["state"] == "firing"
    assert found[0]["opened_at"] >= "2026-11-30T10:40"
    end = datetime(2026, 11, 30, 10, 55, tzinfo=UTC).timestamp()
    with Store(db, create=False) as st:
        page = render_incident_report(st, found[0]["id"])
        dashboard = Client(create_app(st, clock=lambda: end)).get("/index.json?range=1h")
    assert "lower(email)" in page
    assert dashboard.status_code == 200, dashboard.text
    top = dashboard.json()["statements"][0]
    assert (top["query"], top["calls"], top["queryids"]) == (culprit, 15 * 300, [])
    again = report(str(log), "--store", str(db), "--server", "shop", "--incidents")
    assert again["loaded"]["incidents"] == [] and again["loaded"]["statements"] == 0
    start, end = "2026-11-30T10:30:00Z", "2026-11-30T10:50:00Z"
    diag = run("diagnose", "--store", str(db), "--start", start, "--end", end, "--format", "json")
    assert diag.returncode == 0, diag.stderr
    verdict = json.loads(diag.stdout)
    assert verdict["verdict"] == "query_regression"
    assert verdict["culprits"][0]["fingerprint"] == fingerprint(culprit.replace("$1", "'a'"))


def test_incidents_need_a_store(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(lookups(2))
    assert_one_line_error(run("logs", str(log), "--incidents"), "--store")


def test_a_gap_between_two_files_stays_loadable(tmp_path: Path) -> None:
    """Monday's and Wednesday's logs loaded together, then Tuesday's: Tuesday counts."""
    days = {}
    for n, day in enumerate(("mon", "tue", "wed")):
        days[day] = tmp_path / f"{day}.log"
        days[day].write_text(lookups(5, start=n * 86400))
    db = tmp_path / "qw.db"
    first = report(str(days["mon"]), str(days["wed"]), "--store", str(db), "--server", "s")
    assert first["loaded"]["statements"] == 10
    second = report(str(days["tue"]), "--store", str(db), "--server", "s")
    assert second["loaded"]["statements"] == 5 and second["loaded"]["already_loaded"] == 0
