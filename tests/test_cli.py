"""The command line against a real server: preflight, top, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit

from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher
from tests.workload import closed_port


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "querywatch", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("querywatch: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_check_passes_on_a_ready_server(pg_dsn: str) -> None:
    result = run("check", "--dsn", pg_dsn, "--format", "json")
    assert result.returncode == 0, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["preload"]["level"] == "ok"
    assert checks["extension"]["level"] == "ok"
    assert checks["privileges"]["level"] == "ok"
    assert checks["capacity"]["level"] == "ok"


def test_check_without_preload_gives_the_line_and_says_restart(make_pg: Any) -> None:
    bare = make_pg(preload=())
    result = run("check", "--dsn", bare.dsn)
    assert result.returncode == 1
    assert "shared_preload_libraries = 'pg_stat_statements'" in result.stdout
    assert "restart" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_role_without_pg_monitor_gets_the_grant(pg_dsn: str, conn: Any) -> None:
    conn.execute("DROP ROLE IF EXISTS qw_plain")
    conn.execute("CREATE ROLE qw_plain LOGIN")
    dsn = pg_dsn.replace("user=postgres", "user=qw_plain")
    result = run("check", "--dsn", dsn)
    assert result.returncode == 1
    assert "GRANT pg_monitor TO qw_plain;" in result.stdout
    conn.execute("GRANT pg_monitor TO qw_plain")
    assert run("check", "--dsn", dsn).returncode == 0


def test_check_shows_dealloc(make_pg: Any) -> None:
    small = make_pg({"pg_stat_statements.max": "100"})
    with psycopg.connect(small.dsn, autocommit=True) as c:
        for n in range(1, 301):
            c.execute("SELECT " + ", ".join(["1"] * n))
    result = run("check", "--dsn", small.dsn, "--format", "json")
    capacity = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["capacity"]
    assert capacity["level"] == "warn"
    assert "dealloc=" in capacity["message"] and "dealloc=0" not in capacity["message"]
    assert "pg_stat_statements.max" in capacity["fix"]


def test_top_ranks_the_expensive_statement_first(pg_dsn: str, conn: Any, tmp_path: Path) -> None:
    conn.execute(
        "CREATE TABLE top_t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g"
    )
    # indexed: 200 lookups stay far cheaper than one 300 ms sleep even on a loaded machine
    conn.execute("ALTER TABLE top_t ADD PRIMARY KEY (id)")
    store_path = tmp_path / "qw.db"
    store = Store(store_path)
    source = PostgresSource(pg_dsn)
    watcher = Watcher(source, store, "top-test", interval_s=1.0)
    watcher.start()
    conn.execute("SELECT pg_sleep(0.3)")
    for _ in range(200):
        conn.execute("SELECT v FROM top_t WHERE id = %s", (5,))
    watcher.collect_once()
    source.close()
    store.close()
    result = run("top", "--store", str(store_path), "--format", "json", "--limit", "50")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    first = doc["statements"][0]
    assert first["query"] == "SELECT pg_sleep($1)"
    total = sum(s["total_ms"] for s in doc["statements"])
    assert first["share"] == pytest.approx(first["total_ms"] / total, abs=0.001)
    assert 0.5 < first["share"] < 1.0
    scan = next(s for s in doc["statements"] if s["query"].startswith("SELECT v FROM top_t"))
    assert scan["calls"] == 200
    text = run("top", "--store", str(store_path))
    assert text.returncode == 0 and "pg_sleep" in text.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["check", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"],
            ["cannot connect", "port=1"],
        ),
        (["check", "--dsn", "this is not a dsn"], ["invalid dsn"]),
        (
            ["diagnose", "--now", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"],
            ["cannot connect", "port=1"],
        ),
        (
            [
                "collect",
                "--once",
                "--dsn",
                "host=127.0.0.1 port=1",
                "--store",
                "/nonexistent/dir/qw.db",
            ],
            ["/nonexistent/dir"],
        ),
        (["top", "--store", "/nonexistent/qw.db"], ["no store"]),
        (["top", "--since", "yesterday", "--store", "x.db"], ["--since", "yesterday"]),
        (["collect", "--once", "--interval", "abc"], ["interval", "abc"]),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], needles: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "/nonexistent/dir/qw.db" in args:  # a missing folder: about the SQLite file's path
        storekit.sqlite_only(monkeypatch)
    (tmp_path / "x.db").write_bytes(b"")
    assert_one_line_error(run(*args, cwd=tmp_path), *needles)


def test_bad_config_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "querywatch.toml").write_text('interval = "soon"\n')
    assert_one_line_error(run("collect", "--once", cwd=tmp_path), "interval", "soon")
    (tmp_path / "querywatch.toml").write_text("intervall = 10\n")
    assert_one_line_error(run("collect", "--once", cwd=tmp_path), "intervall")
    (tmp_path / "querywatch.toml").write_text("interval = [\n")
    assert_one_line_error(run("collect", "--once", cwd=tmp_path), "not valid TOML")
    (tmp_path / "querywatch.toml").unlink()
    result = run("collect", "--once", env={"QUERYWATCH_STATEMENT_TIMEOUT_MS": "-5"}, cwd=tmp_path)
    assert_one_line_error(result, "statement_timeout_ms")


@pytest.mark.usefixtures("sqlite_only")  # a damaged SQLite file: only the SQLite engine has one
def test_corrupt_store_is_refused_and_left_intact(pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    garbage = b"this is not sqlite " * 500
    path.write_bytes(garbage)
    assert_one_line_error(
        run("collect", "--once", "--dsn", pg_dsn, "--store", str(path)), "damaged"
    )
    assert_one_line_error(run("top", "--store", str(path)), "damaged")
    assert path.read_bytes() == garbage


@pytest.mark.usefixtures("sqlite_only")  # another program's SQLite file at the store's path
def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE mine (x)")
    before = path.read_bytes()
    assert_one_line_error(run("top", "--store", str(path)), "not a querywatch store")
    assert path.read_bytes() == before


@pytest.mark.usefixtures("sqlite_only")  # file modes of the SQLite file's folder
def test_unwritable_store(pg_dsn: str, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/qw.db"  # root ignores file modes; /proc refuses new files to anyone
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
        target = str(folder / "qw.db")
    result = run("collect", "--once", "--dsn", pg_dsn, "--store", target, "--interval", "1")
    assert_one_line_error(result, "store", target)


def test_collect_once_then_top(pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    started = time.monotonic()
    result = run("collect", "--once", "--dsn", pg_dsn, "--store", str(path), "--interval", "1")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert run("top", "--store", str(path), "--format", "json").returncode == 0


def test_dsn_from_libpq_environment(pg: Any, tmp_path: Path) -> None:
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres"}
    assert run("check", env=env).returncode == 0
    env_qw = {"QUERYWATCH_DSN": pg.dsn}
    assert run("check", env=env_qw).returncode == 0


def test_a_negative_queryid_is_a_statement_not_an_option(tmp_path: Path) -> None:
    """pg_stat_statements' queryids are signed: `explain -4444...` must reach the lookup."""
    dsn = f"host=127.0.0.1 port={closed_port()} connect_timeout=2"
    result = run("explain", "-4444042563679928335", "--dsn", dsn, "--store", str(tmp_path / "q.db"))
    assert_one_line_error(result, "cannot connect")
    assert "No such option" not in result.stderr
