"""Server logs written by real PostgreSQL servers for the `querywatch logs` tests.

:func:`write_logs` starts a server with logging settings, runs a known workload on it (counted
statements, auto_explain plans in JSON and text, a lock wait, a deadlock, temp files, errors),
reads pg_stat_statements, stops the server and copies its log files. The tests compare what
querywatch reads from the logs with :class:`Ran`, what the workload did.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from querywatch.fingerprint import fingerprint
from querywatch.localpg import LocalPostgres

PREFIX_A = "%m [%p] %q%u@%d "
PREFIX_B = "%t:%r:%u@%d:[%p]: "

LOOKUP = "SELECT v FROM items WHERE id = %s"  # extended protocol: parse/bind/execute lines
LOOKUPS = 25
COUNT = "SELECT count(*) FROM items WHERE v = 'v7'"  # simple protocol, literal inline
COUNTS = 7
SORT = "SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC LIMIT 1"  # a temp file
PLAN_JSON = "SELECT count(*) FROM items WHERE v LIKE 'v1%'"
PLAN_TEXT = "SELECT count(*) FROM items WHERE id > 10"
LOCKED = "UPDATE items SET v = 'waiter' WHERE id = 1"
LOCK_HELD_S = 0.6
DEADLOCK_A = "UPDATE items SET v = 'a' WHERE id = {}"
DIVIDE = "SELECT 1/0"
SYNTAX = "SELEC broken"
SYNTAX_ERRORS = 2


def log_settings(prefix: str, destinations: str) -> dict[str, str]:
    return {
        "logging_collector": "on",
        "log_destination": destinations,
        "log_directory": "log",
        "log_filename": "postgresql.log",
        "log_rotation_size": "0",
        "log_rotation_age": "0",
        "log_line_prefix": prefix,
        "log_min_duration_statement": "0",
        "log_lock_waits": "on",
        "deadlock_timeout": "100ms",
        "log_temp_files": "0",
        "log_connections": "on",
        "log_disconnections": "on",
        "auto_explain.log_analyze": "on",
        "lc_messages": "C",
    }


@dataclass
class Ran:
    """What the workload did, and the log files it left."""

    logs: dict[str, Path] = field(default_factory=dict)  # 'stderr', 'csvlog', 'jsonlog'
    pgss: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (fingerprint, calls)
    lock_wait_s: float = 0.0
    deadlocks: int = 0
    started: float = 0.0
    ended: float = 0.0

    def fp(self, name: str) -> str:
        return self.pgss[name][0]


def _pgss(conn: psycopg.Connection[Any], like: str) -> tuple[str, int]:
    row = conn.execute(
        "SELECT query, calls FROM pg_stat_statements WHERE query LIKE %s ORDER BY calls DESC",
        (like,),
    ).fetchone()
    assert row is not None, f"pg_stat_statements has no {like!r}"
    return fingerprint(row[0]), int(row[1])


def workload(dsn: str, ran: Ran) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 2000) g")
        c.execute("ANALYZE items")
        for i in range(LOOKUPS):
            c.execute(LOOKUP, (i,))
        for _ in range(COUNTS):
            c.execute(COUNT)
        c.execute("SET work_mem = '64kB'")
        c.execute(SORT)
        c.execute("RESET work_mem")
        c.execute("SET auto_explain.log_min_duration = 0")
        c.execute("SET auto_explain.log_format = 'json'")
        c.execute(PLAN_JSON)
        c.execute("SET auto_explain.log_format = 'text'")
        c.execute(PLAN_TEXT)
        c.execute("SET auto_explain.log_min_duration = -1")
        for bad in (DIVIDE, *[SYNTAX] * SYNTAX_ERRORS):
            with contextlib.suppress(psycopg.Error):
                c.execute(bad)
    ran.lock_wait_s = lock_wait(dsn)
    ran.deadlocks = deadlock(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        ran.pgss = {
            "lookup": _pgss(c, "SELECT v FROM items WHERE id = $1%"),
            "count": _pgss(c, "SELECT count(*) FROM items WHERE v = $1%"),
            "sort": _pgss(c, "SELECT g FROM generate_series%"),
            "plan_json": _pgss(c, "SELECT count(*) FROM items WHERE v LIKE%"),
            "plan_text": _pgss(c, "SELECT count(*) FROM items WHERE id >%"),
            "locked": _pgss(c, "UPDATE items SET v = $1 WHERE id = $2%"),
        }


def lock_wait(dsn: str) -> float:
    """One session holds a row lock for LOCK_HELD_S while another waits for it."""
    holder, waiter = psycopg.connect(dsn), psycopg.connect(dsn)
    try:
        holder.execute("UPDATE items SET v = 'holder' WHERE id = 1")
        release = threading.Timer(LOCK_HELD_S, holder.commit)
        release.start()
        t0 = time.monotonic()
        waiter.execute(LOCKED)
        waiter.commit()
        release.join()
        return time.monotonic() - t0
    finally:
        holder.close()
        waiter.close()


def deadlock(dsn: str) -> int:
    """Two sessions update rows 2 and 3 in opposite orders: one of them is a deadlock victim."""
    a, b = psycopg.connect(dsn), psycopg.connect(dsn)
    victims = []
    try:
        a.execute(DEADLOCK_A.format(2))
        b.execute(DEADLOCK_A.format(3))

        def second() -> None:
            try:
                b.execute(DEADLOCK_A.format(2))
                b.commit()
            except psycopg.errors.DeadlockDetected:
                victims.append("b")
                b.rollback()

        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.3)
        try:
            a.execute(DEADLOCK_A.format(3))
            a.commit()
        except psycopg.errors.DeadlockDetected:
            victims.append("a")
            a.rollback()
        other.join()
    finally:
        a.close()
        b.close()
    return len(victims)


SUFFIXES = {"stderr": "postgresql.log", "csvlog": "postgresql.csv", "jsonlog": "postgresql.json"}


def write_logs(
    make_pg: Callable[..., LocalPostgres],
    into: Path,
    prefix: str = PREFIX_A,
    destinations: str = "stderr,csvlog,jsonlog",
    extra: Mapping[str, str] | None = None,
) -> Ran:
    """Start a server logging to ``destinations``, run the workload, copy its logs into ``into``."""
    settings = log_settings(prefix, destinations) | dict(extra or {})
    pg = make_pg(settings, preload=("pg_stat_statements", "auto_explain"))
    ran = Ran(started=time.time())
    workload(pg.dsn, ran)
    ran.ended = time.time()
    pg.stop()  # the logging collector writes everything out
    into.mkdir(parents=True, exist_ok=True)
    for kind, name in SUFFIXES.items():
        found = pg.data_dir / "log" / name
        if found.exists():
            target = into / f"{kind}-{name}"
            shutil.copyfile(found, target)
            ran.logs[kind] = target
    return ran
