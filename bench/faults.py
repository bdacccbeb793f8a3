"""Faults injected on real PostgreSQL, and what each one lost (issue 12; docs/RELIABILITY.md).

Each fault runs ``querywatch watch`` as a subprocess (1 s interval) against a private throwaway
PostgreSQL while a counted workload runs, then reads the store and compares with what was executed:

- ``kill9``:    watch killed with SIGKILL 5 times, restarted each time; store integrity, uncovered
                time between intervals, calls executed vs stored.
- ``restart``:  the server restarted under watch: the gap, negative values, calls lost.
- ``reset``:    pg_stat_statements_reset() under watch: the gap, negative values, calls lost.
- ``dealloc``:  pg_stat_statements.max=100 with 500 distinct statements: partial gaps, negatives,
                calls of a steady statement lost.
- ``tests``:    the faults other tests already cover (channel outage, saturation, disk full,
                restored incidents, bad input): run with pytest, their figures taken from -s output.

Run: .venv/bin/python bench/faults.py [--only kill9,restart,reset,dealloc,tests]
Writes bench/results/faults.json and prints one Markdown row per fault.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from querywatch.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "faults.json"
INTERVAL = 1.0
COUNTED_SQL = "SELECT count(*) FROM fault_items WHERE id < %s"
COUNTED_TEXT = "SELECT count(*) FROM fault_items WHERE id < $1"


@dataclass
class Row:
    fault: str
    done: str
    check: str
    figures: dict[str, Any] = field(default_factory=dict)
    lost: str = ""
    command: str = ""
    ok: bool = True


# -- the workload whose every call is counted -------------------------------------------------------
class Counted:
    """Runs COUNTED_SQL at ``rate`` per second, reconnecting after errors; counts successes."""

    def __init__(self, dsn: str, rate: float = 50.0) -> None:
        self.dsn, self.rate = dsn, rate
        self.executed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    while not self._stop.wait(1.0 / self.rate):
                        conn.execute(COUNTED_SQL, (self.executed % 100 + 1,))
                        self.executed += 1
            except psycopg.Error:
                self.failed += 1
                self._stop.wait(0.2)


def private_server(settings: dict[str, str] | None = None) -> LocalPostgres:
    server = LocalPostgres(settings).start()
    with psycopg.connect(server.dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        c.execute("CREATE TABLE fault_items AS SELECT g AS id FROM generate_series(1, 1000) g")
    return server


@contextmanager
def watch(dsn: str, store: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``querywatch watch`` as a subprocess; the caller kills it, else SIGTERM at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    argv = ["watch", "--dsn", dsn, "--store", str(store), "--interval", f"{INTERVAL}s", *args]
    with store.with_suffix(".log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querywatch", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def wait_until(probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    return None


# -- reading the store ---------------------------------------------------------------------------------
def query(store: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(store, timeout=10) as db:
        return db.execute(sql, params).fetchall()


def count_intervals(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        return int(query(store, "SELECT count(*) FROM intervals")[0][0])
    except sqlite3.Error:
        return 0


def stored_calls(store: Path, text: str = COUNTED_TEXT) -> int:
    rows = query(
        store,
        "SELECT coalesce(sum(d.calls), 0) FROM deltas d JOIN statements s ON s.id = d.statement_id "
        "JOIN texts t ON t.fingerprint = s.fingerprint WHERE t.query = ?",
        text,
    )
    return int(rows[0][0])


def coverage(store: Path) -> dict[str, Any]:
    """Intervals, gaps and the time no interval covers between the first start and the last end."""
    spans = query(store, "SELECT start, end, complete, catch_up FROM intervals ORDER BY start")
    holes = sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans))
    negatives = query(
        store,
        "SELECT count(*) FROM deltas WHERE calls < 0 OR exec_us < 0 OR rows < 0 "
        "OR shared_blks_hit < 0",
    )[0][0]
    gaps = query(store, "SELECT reason, partial FROM gaps ORDER BY start")
    return {
        "intervals": len(spans),
        "incomplete_intervals": sum(1 for s in spans if not s[2]),
        "catch_ups": sum(1 for s in spans if s[3]),
        "uncovered_s": round(holes, 3),
        "negative_deltas": int(negatives),
        "gaps": [r[0] for r in gaps if not r[1]],
        "partial_gaps": sum(1 for r in gaps if r[1]),
        "integrity": query(store, "PRAGMA integrity_check")[0][0],
    }


def grow(store: Path, by: float, timeout: float = 60) -> None:
    """Wait until the store holds ``by`` more intervals than now."""
    target = count_intervals(store) + by
    wait_until(lambda: count_intervals(store) >= target, timeout)


def settle(store: Path, intervals: float = 2.5) -> None:
    """Let the watcher store the intervals after the workload stopped."""
    grow(store, intervals, 30)


# -- the faults ------------------------------------------------------------------------------------
def fault_kill9(folder: Path, kills: int = 5, seed: int = 12) -> Row:
    rng = random.Random(seed)
    server = private_server()
    store = folder / "kill9.db"
    load = Counted(server.dsn)
    try:
        for kill in range(kills):
            with watch(server.dsn, store) as proc:
                if kill == 0:  # every counted call comes after the first snapshot
                    grow(store, 1)
                    load.start()
                grow(store, 2)
                time.sleep(rng.uniform(0.0, INTERVAL))  # anywhere inside an interval
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            time.sleep(rng.uniform(0.5, 2.0))  # down for a while
        with watch(server.dsn, store) as proc:
            grow(store, 2)
            load.stop()
            settle(store)
            code = proc.poll()
        executed = load.executed
    finally:
        load.stop()
        server.cleanup()
    figures = coverage(store) | {"kills": kills, "executed": executed}
    figures["stored"] = stored_calls(store)
    lost = executed - figures["stored"]
    ok = (
        figures["integrity"] == "ok"
        and figures["uncovered_s"] == 0
        and lost == 0
        and figures["negative_deltas"] == 0
        and code is None
    )
    return Row(
        "kill -9 of watch",
        f"`querywatch watch` killed with SIGKILL {kills} times at a random point of an interval, "
        "down 0.5-2 s each time, restarted; 50 counted calls/s throughout",
        "store `PRAGMA integrity_check`; time between the first and last interval that no "
        "interval covers; calls executed vs stored",
        figures,
        f"{lost} of {executed} calls; {figures['uncovered_s']} s uncovered",
        "python bench/faults.py --only kill9",
        ok,
    )


def _event_under_watch(name: str, event: Callable[[LocalPostgres], None], folder: Path) -> Row:
    server = private_server()
    store = folder / f"{name}.db"
    load = Counted(server.dsn)
    try:
        with watch(server.dsn, store) as proc:
            grow(store, 1)
            load.start()  # every counted call comes after the first snapshot
            grow(store, 3)
            event(server)
            wait_until(lambda: count_intervals(store) >= 8, 60)
            load.stop()
            settle(store)
            alive = proc.poll() is None
        executed, failed = load.executed, load.failed
    finally:
        load.stop()
        server.cleanup()
    figures = coverage(store) | {"executed": executed, "stored": stored_calls(store)}
    figures["calls_failed_while_down"] = failed
    lost = executed - figures["stored"]
    ok = alive and figures["negative_deltas"] == 0 and name in figures["gaps"]
    return Row(
        name,
        "",
        "",
        figures,
        f"{lost} of {executed} calls (those in the interval cut by the {name}: "
        "pg_stat_statements cannot tell them apart), recorded as one gap",
        f"python bench/faults.py --only {name}",
        ok,
    )


def fault_restart(folder: Path) -> Row:
    row = _event_under_watch("restart", lambda s: s.restart(), folder)
    row.fault = "server restart"
    row.done = "PostgreSQL restarted (pg_ctl restart) under `watch`, 50 counted calls/s"
    row.check = "gaps table (reason restart), no negative delta, calls executed vs stored"
    return row


def _reset(server: LocalPostgres) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as c:
        c.execute("SELECT pg_stat_statements_reset()")


def fault_reset(folder: Path) -> Row:
    row = _event_under_watch("reset", _reset, folder)
    row.fault = "pg_stat_statements_reset()"
    row.done = "statistics reset by another session under `watch`, 50 counted calls/s"
    row.check = "gaps table (reason reset), no negative delta, calls executed vs stored"
    return row


def fault_dealloc(folder: Path, distinct: int = 500) -> Row:
    server = private_server({"pg_stat_statements.max": "100"})
    store = folder / "dealloc.db"
    load = Counted(server.dsn, rate=20)
    try:
        with watch(server.dsn, store) as proc:
            grow(store, 1)
            load.start()  # every counted call comes after the first snapshot
            grow(store, 2)
            with psycopg.connect(server.dsn, autocommit=True) as c:
                for _ in range(3):  # 500 queryids (IN lists of 1..500 items), three times
                    for n in range(1, distinct + 1):
                        items = ", ".join(str(i) for i in range(n))
                        c.execute(f"SELECT count(*) FROM fault_items WHERE id IN ({items})")
                    time.sleep(INTERVAL)
                dealloc = c.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()
            load.stop()
            settle(store)
            alive = proc.poll() is None
        executed = load.executed
    finally:
        load.stop()
        server.cleanup()
    figures = coverage(store) | {"executed": executed, "stored": stored_calls(store)}
    figures["pg_dealloc"] = dealloc[0] if dealloc else None
    lost = executed - figures["stored"]
    ok = alive and figures["negative_deltas"] == 0 and figures["partial_gaps"] > 0
    return Row(
        "dealloc storm",
        f"pg_stat_statements.max=100, {distinct} distinct statements run 3 times under `watch` "
        "beside a steady counted statement (20 calls/s)",
        "partial gaps stored for the evictions, no negative delta, the steady statement's calls "
        "executed vs stored",
        figures,
        f"{lost} of {executed} calls of the steady statement (evicted entries' counts are lost "
        "by PostgreSQL; recorded as partial gaps)",
        "python bench/faults.py --only dealloc",
        ok,
    )


# -- faults covered by tests -------------------------------------------------------------------------
TESTS = (
    (
        "channel outage",
        "webhook answering 500, hanging, refusing connections for 2 minutes during an incident, "
        "then back; also with `watch` restarted (kill -9) while it is down",
        ["tests/test_outbox.py"],
    ),
    ("saturation", "4 CPU-bound sessions for 60 s under `watch`", ["tests/test_saturation_pg.py"]),
    (
        "disk full",
        "the store on a full tmpfs under `watch`, then space back",
        ["tests/test_diskfull.py"],
    ),
    (
        "restart during an incident",
        "`watch` restarted while an incident fires",
        ["tests/test_restore_pg.py", "tests/test_status.py"],
    ),
)


def run_tests(paths: list[str], env: dict[str, str] | None = None) -> tuple[bool, str, float]:
    present = [p for p in paths if (ROOT / p).exists()]
    if not present:
        return False, f"missing: {', '.join(paths)}", 0.0
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *present],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )
    return result.returncode == 0, result.stdout[-6000:], time.monotonic() - started


def summary_line(output: str) -> str:
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", output, re.MULTILINE)
    return found[-1] if found else output.strip().splitlines()[-1] if output.strip() else ""


def fault_tests(folder: Path) -> list[Row]:
    rows = []
    for name, done, paths in TESTS:
        ok, output, seconds = run_tests(paths)
        printed = [
            line
            for line in (re.sub(r"^[.FE]+", "", raw).strip() for raw in output.splitlines())
            if re.search(r"\d", line) and not line.startswith(("=", "tests/", "E ", "[", "/"))
        ]
        rows.append(
            Row(
                name,
                done,
                " ".join(f"`{p}`" for p in paths),
                {
                    "result": summary_line(output),
                    "seconds": round(seconds, 1),
                    "printed": printed[-8:],
                },
                "",
                f"python -m pytest -q -s {' '.join(paths)}",
                ok,
            )
        )
    counts = folder / "fuzz.json"
    ok, output, seconds = run_tests(["tests/test_fuzz.py"], {"QUERYWATCH_FUZZ_COUNTS": str(counts)})
    figures: dict[str, Any] = {"result": summary_line(output), "seconds": round(seconds, 1)}
    if counts.exists():
        figures["inputs"] = json.loads(counts.read_text())
    rows.append(
        Row(
            "bad input",
            "hypothesis fuzz (derandomized) of querywatch.toml text and bytes, QUERYWATCH_* "
            "variables, flag values, the [detect] and [alerts] tables, command lines, and the "
            "HTTP API (paths, query strings, Host, Authorization, POST /api/deploys bodies)",
            "`tests/test_fuzz.py`: a one-line querywatch error or a load; never a 5xx",
            figures,
            "",
            "python -m pytest -q -s tests/test_fuzz.py",
            ok,
        )
    )
    return rows


FAULTS: dict[str, Callable[[Path], Row | list[Row]]] = {
    "kill9": fault_kill9,
    "restart": fault_restart,
    "reset": fault_reset,
    "dealloc": fault_dealloc,
    "tests": fault_tests,
}


def markdown(rows: list[Row]) -> str:
    lines = ["| fault | done | checked by | figures | lost | held |", "|---|---|---|---|---|---|"]
    for r in rows:
        figures = ", ".join(f"{k} {v}" for k, v in r.figures.items() if k != "printed")
        held = "yes" if r.ok else "**no**"
        lines.append(f"| {r.fault} | {r.done} | {r.check} | {figures} | {r.lost} | {held} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FAULTS), help="comma-separated faults")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := [n for n in names if n not in FAULTS]:
        parser.error(f"unknown fault {unknown[0]!r} (known: {', '.join(FAULTS)})")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qw-faults-") as tmp:
        for name in names:
            started = time.monotonic()
            made = FAULTS[name](Path(tmp))
            for row in made if isinstance(made, list) else [made]:
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
            print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update({r.fault: asdict(r) for r in rows})
    RESULTS.write_text(json.dumps(previous, indent=2) + "\n")
    print(markdown(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
