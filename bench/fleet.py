"""Benchmark (issue 13): one `querywatch watch` process watching N local PostgreSQL clusters.

Each cluster (16 MB shared_buffers) holds ``--statements`` distinct statements, and a load
thread in this process (not measured) runs every one of them once per interval, so each server's
every interval carries that many changed pg_stat_statements rows. The watcher is the real CLI
(``querywatch watch`` with ``[[servers]]`` in a querywatch.toml), collecting, detecting and
writing one SQLite store. The store holds ``--history`` of history for each server beforehand
(1 hour: the detector's whole baseline window, of the same statements with their real queryids
and mean times), so detection runs from the start as in steady state; with no history the
learning period is cut to 3 intervals instead. After every server has stored ``--warmup`` new
intervals, the watcher's own CPU time (utime + stime of its process, all threads, from /proc) is
read over ``--intervals`` intervals:

- CPU per server per interval = CPU time / intervals stored by all servers meanwhile;
- share of one core = CPU time / wall time;
- servers one core holds = interval / (CPU per server per interval), the target being >= 100
  (pgwatch's published figure: 100 databases in one vCPU at under 20% load).

Cadence is reported too: the lengths of the intervals stored during the measurement.

Run: .venv/bin/python bench/fleet.py [--servers 20] [--interval 10] [--intervals 6]
Keeps the latest run of each configuration in bench/results/fleet.json and prints the Markdown
rows of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from querywatch.fingerprint import Fingerprinter, normalize
from querywatch.localpg import LocalPostgres
from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fleet.json"
SMALL = {"shared_buffers": "16MB", "max_connections": "20", "autovacuum": "off"}
TICK = os.sysconf("SC_CLK_TCK")
WIDTH = 50  # target lists of 1..WIDTH columns per table
HISTORY_ROWS = """
SELECT dbid, userid, queryid, toplevel, query, mean_exec_time FROM pg_stat_statements
WHERE query LIKE '%FROM fleet_t% WHERE id = $1'
"""


def start(sql: list[str]) -> LocalPostgres:
    pg = LocalPostgres(SMALL).start()
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for n in range(tables(len(sql))):
            c.execute(
                f"CREATE TABLE fleet_t{n} AS SELECT g AS id, g % 10 AS k "
                "FROM generate_series(1, 1000) g"
            )
            c.execute(f"ALTER TABLE fleet_t{n} ADD PRIMARY KEY (id)")
        for statement in sql:  # each known to pg_stat_statements, for the history below
            c.execute(statement, (1,))  # type: ignore[arg-type]
    return pg


def prefill(
    store: Path, names: list[str], clusters: list[LocalPostgres], interval: float, span: float
) -> None:
    """``span`` seconds of history before now for every server, of the statements its cluster
    holds (their real queryids, fingerprints and mean times): a watcher starting on it judges
    at once, against a full baseline window, as one that has run for that long."""
    now = time.time()
    fingerprints = Fingerprinter()
    with Store(store) as st:
        for name, pg in zip(names, clusters, strict=True):
            with psycopg.connect(pg.dsn, autocommit=True) as c:
                rows = c.execute(HISTORY_ROWS).fetchall()
            keys = {
                StatementKey(r[0], r[1], r[2], r[3]): fingerprints.for_queryid(r[2], r[4])
                for r in rows
            }
            texts = {keys[StatementKey(r[0], r[1], r[2], r[3])]: normalize(r[4]) for r in rows}
            means = {StatementKey(r[0], r[1], r[2], r[3]): float(r[5]) for r in rows}
            srv = st.server(name)
            t, first = now - span, True
            while t + interval <= now - interval:
                deltas = tuple(
                    StatementDelta(k, Counters(calls=1, exec_ms=means[k], rows=1)) for k in keys
                )
                interval_row = Interval(t, t + interval, deltas, None)
                st.record_interval(
                    srv.id, interval_row, keys if first else {}, texts if first else {}
                )
                t, first = t + interval, False
        st.maintain(now)


def statements(count: int) -> list[str]:
    """``count`` distinct statements: pg_stat_statements tells them apart by their shape (a
    column alias or a constant would not), so target lists of 1..WIDTH columns over as many
    tables as needed."""
    return [
        f"SELECT id{', k' * (n % WIDTH + 1)} FROM fleet_t{n // WIDTH} WHERE id = %s"
        for n in range(count)
    ]


def tables(count: int) -> int:
    return (count + WIDTH - 1) // WIDTH


class Load:
    """Runs every statement once per interval on every cluster, spread over the interval."""

    def __init__(self, dsns: list[str], sql: list[str], interval: float) -> None:
        self.dsns, self.sql, self.interval = dsns, sql, interval
        self.stop = threading.Event()
        self.executed = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conns = [psycopg.connect(d, autocommit=True) for d in self.dsns]
        rng = random.Random(1)
        per_round = len(self.sql) * len(conns)
        pause = self.interval / per_round
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                for n, statement in enumerate(self.sql):
                    for conn in conns:
                        try:
                            conn.execute(statement, (rng.randint(1, 1000),))  # type: ignore[arg-type]
                            self.executed += 1
                        except psycopg.Error:
                            pass  # a cluster stopping at the end
                    if self.stop.is_set():
                        break
                    ahead = started + (n + 1) * len(conns) * pause - time.monotonic()
                    if ahead > 0:
                        self.stop.wait(ahead)
        finally:
            for conn in conns:
                conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: every thread


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored(store: Path) -> dict[str, list[tuple[float, float]]]:
    """Per server name, the (start, end) of its stored intervals."""
    if not store.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT s.name, i.start, i.end FROM intervals i JOIN servers s ON s.id = i.server_id"
            ).fetchall()
    except sqlite3.Error:
        return {}
    out: dict[str, list[tuple[float, float]]] = {}
    for name, begin, end in rows:
        out.setdefault(name, []).append((begin, end))
    return out


def rows_per_interval(store: Path, since: float) -> float:
    """Statement rows stored per interval that started after ``since`` (a check on the load)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
        rows, intervals = db.execute(
            "SELECT (SELECT count(*) FROM deltas d JOIN intervals i ON i.id = d.interval_id "
            "WHERE i.start >= ?), (SELECT count(*) FROM intervals WHERE start >= ?)",
            (since, since),
        ).fetchone()
    return rows / intervals if intervals else 0.0


def wait_for(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise SystemExit(f"bench/fleet.py: timed out waiting for {what}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="qw-fleet-bench-"))
    started = time.monotonic()
    sql = statements(args.statements)
    with ThreadPoolExecutor(max_workers=4) as pool:
        clusters = list(pool.map(start, [sql] * args.servers))
    names = [f"db{n:02d}" for n in range(1, args.servers + 1)]
    store = folder / "qw.db"
    if args.history > 0:
        prefill(store, names, clusters, args.interval, args.history)
    setup_s = time.monotonic() - started
    config = folder / "querywatch.toml"
    tables = "".join(
        f'[[servers]]\nname = "{name}"\ndsn = "{pg.dsn}"\nlabels = {{ env = "bench" }}\n\n'
        for name, pg in zip(names, clusters, strict=True)
    )
    detect = "" if args.history > 0 else "[detect]\nlearning_intervals = 3\n\n"
    config.write_text(f'interval = "{args.interval}s"\n\n{detect}{tables}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_CONFIG"] = str(config)
    load = Load([pg.dsn for pg in clusters], sql, args.interval)
    load.thread.start()
    log = (folder / "watch.log").open("w")
    argv = [sys.executable, "-m", "querywatch", "watch", "--store", str(store)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    held = {n: len(v) for n, v in stored(store).items()}
    try:
        wait_for(
            lambda: all(
                len(stored(store).get(n, [])) >= held.get(n, 0) + args.warmup for n in names
            ),
            args.interval * (args.warmup + 6) + 120,
            f"{args.warmup} intervals on every server",
        )
        before = stored(store)
        cpu0, wall0, measured_from = cpu_seconds(proc.pid), time.monotonic(), time.time()
        time.sleep(args.intervals * args.interval)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        after = stored(store)
        rss = peak_rss_mb(proc.pid)
        per_interval = rows_per_interval(store, measured_from)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        log.close()
        load.stop.set()
        load.thread.join(30)
        for pg in clusters:
            pg.cleanup()
    text = (folder / "watch.log").read_text()
    if code != 0 or "Traceback" in text:
        raise SystemExit(f"watch exited {code}:\n{text[-3000:]}")
    new = {n: sorted(set(after.get(n, [])) - set(before.get(n, []))) for n in names}
    intervals = sum(len(v) for v in new.values())
    lengths = [end - begin for v in new.values() for begin, end in v]
    cpu = cpu1 - cpu0
    wall = wall1 - wall0
    per = cpu / intervals if intervals else float("nan")
    return {
        "servers": args.servers,
        "statements_per_server": args.statements,
        "interval_s": args.interval,
        "measured_intervals": args.intervals,
        "history_s": args.history,
        "setup_s": round(setup_s, 1),
        "intervals_stored": intervals,
        "statement_rows_per_interval": round(per_interval, 1),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_ms_per_server_interval": round(per * 1000, 2),
        "core_share": round(cpu / wall, 4),
        "servers_per_core": round(args.interval / per, 1) if intervals else None,
        "interval_lengths_s": {
            "min": round(min(lengths), 3) if lengths else None,
            "median": round(statistics.median(lengths), 3) if lengths else None,
            "max": round(max(lengths), 3) if lengths else None,
            "within_10pct": sum(
                1 for x in lengths if abs(x - args.interval) <= 0.1 * args.interval
            ),
            "count": len(lengths),
        },
        "peak_rss_mb": round(rss, 1),
        "statements_executed_by_load": load.executed,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["bench/fleet.py", *sys.argv[1:]]),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(r: dict[str, Any]) -> str:
    lengths = r["interval_lengths_s"]
    rows = [
        "| figure | target | measured | verdict |",
        "|---|---|---|---|",
        f"| CPU per server per interval ({r['statement_rows_per_interval']:,.0f} statement rows "
        "each) | - "
        f"| {r['cpu_ms_per_server_interval']:.1f} ms | |",
        f"| share of one core, {r['servers']} servers at {r['interval_s']:g} s | - "
        f"| {r['core_share']:.1%} | |",
        f"| **servers one core holds** (interval / CPU per server-interval) | >= 100 "
        f"| **{r['servers_per_core']:,.0f}** | {'PASS' if (r['servers_per_core'] or 0) >= 100 else 'FAIL'} |",
        f"| intervals stored while measured / within 10% of {r['interval_s']:g} s | - "
        f"| {r['intervals_stored']} / {lengths['within_10pct']} "
        f"({lengths['min']}-{lengths['max']} s, median {lengths['median']}) | |",
        f"| watcher peak RSS | - | {r['peak_rss_mb']:.0f} MB | |",
    ]
    return "\n".join(rows)


def kept(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored runs with this one, the latest of each configuration kept."""
    shape = ("servers", "statements_per_server", "interval_s", "history_s")
    try:
        runs = json.loads(RESULTS.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        runs = []
    same = [r for r in runs if all(r.get(k) == result[k] for k in shape)]
    return [r for r in runs if r not in same] + [result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--intervals", type=int, default=6, help="intervals measured")
    parser.add_argument("--warmup", type=int, default=4, help="intervals stored before measuring")
    parser.add_argument("--statements", type=int, default=200, help="distinct statements each")
    parser.add_argument(
        "--history",
        type=float,
        default=3600.0,
        help="seconds of history stored before the watcher starts (0: none, learning cut to 3)",
    )
    args = parser.parse_args()
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": kept(result)}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
