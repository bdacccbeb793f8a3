"""Benchmark: store write throughput, PostgreSQL vs SQLite, in the same run.

Synthetic intervals for N servers x 1,000 active statements (every statement has a delta in every
interval, the worst case for the store), written through ``Store.record_interval`` exactly as the
watcher does: one transaction per interval (its row, 1,000 delta rows, its activity summary).
``--writers`` threads write at once, each owning its share of the servers (a watcher collects each
server in a thread of its own). Each engine is first warmed up (every server's statements are
registered by its first interval), then written to for ``--seconds``; the figure is delta rows
per second sustained (wall clock), and from it the servers one store host holds at a 10 s interval
(rows/s x 10 s / 1,000 rows per server interval).

PostgreSQL is a throwaway local cluster (``querywatch.localpg``, default settings plus
synchronous_commit as given) on this machine, SQLite a file in a temporary folder (WAL,
synchronous=NORMAL, as querywatch opens it). Both share the machine's 2 cores with the benchmark
process itself; the load average is printed, as other work on the machine lowers both figures.

Run: .venv/bin/python bench/store.py [--servers 8] [--statements 1000] [--seconds 20]
     [--writers 4] [--synchronous-commit on]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from querywatch.localpg import LocalPostgres
from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Store

INTERVAL_S = 10.0
DAY0 = 1_795_000_000.0 // 86400 * 86400


@dataclass(frozen=True)
class Result:
    engine: str
    rows: int
    seconds: float
    cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def servers_at_10s(self, statements: int) -> float:
        return self.rows_per_s * INTERVAL_S / statements


def intervals(statements: int, seed: int) -> list[tuple[StatementDelta, ...]]:
    """A few jittered sets of deltas, reused (building them is not what is measured)."""
    rng = random.Random(seed)
    out = []
    for _ in range(4):
        out.append(
            tuple(
                StatementDelta(
                    StatementKey(16384, 10, 10_000 + i),
                    Counters(
                        calls=rng.randint(1, 500),
                        exec_ms=rng.uniform(0.1, 900.0),
                        rows=rng.randint(0, 5000),
                        shared_blks_hit=rng.randint(0, 10_000),
                        shared_blks_read=rng.randint(0, 100),
                    ),
                )
                for i in range(statements)
            )
        )
    return out


def run(location: str, servers: int, statements: int, seconds: float, writers: int) -> Result:
    sets = intervals(statements, 7)
    keys = [d.key for d in sets[0]]
    fingerprints = {k: f"fp{k.queryid:06d}" for k in keys}
    texts = {fp: f"SELECT c FROM t{fp} WHERE id = $1" for fp in fingerprints.values()}
    with Store(location) as store:
        ids = [store.server(f"srv{n:03d}").id for n in range(servers)]
        for n, sid in enumerate(ids):  # warm-up: statements and texts registered
            store.record_interval(sid, Interval(DAY0, DAY0 + 10, sets[0], None), fingerprints,
                                  texts if n == 0 else {})  # fmt: skip
        written = [0] * writers
        stop = threading.Event()

        def writer(w: int) -> None:
            mine = ids[w::writers]
            t = DAY0 + 10
            i = 0
            while not stop.is_set():
                for sid in mine:
                    deltas = sets[i % len(sets)]
                    store.record_interval(sid, Interval(t, t + 10, deltas, None), {}, {})
                    written[w] += len(deltas)
                    i += 1
                t += 10

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(seconds)
        stop.set()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - began
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        counted = sum(store.interval_count(sid) for sid in ids) - servers
        rows = sum(written)
        assert counted * statements == rows, (counted, rows)  # nothing lost, nothing twice
    return Result(location.split(":", 1)[0], rows, elapsed, cpu)


def uri(dsn: str) -> str:
    """The cluster's conninfo as a postgresql:// URI (the store's location form)."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = info.get("user", "postgres")
    return (
        f"postgresql://{user}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/"
        f"{info.get('dbname', 'postgres')}?options=-csearch_path%3Dbench"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=8)
    ap.add_argument("--statements", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--synchronous-commit", default="on", choices=("on", "off"))
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)
    settings = {"synchronous_commit": args.synchronous_commit, "max_wal_size": "4GB"}
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="qw-bench-store-") as tmp:
        pg = LocalPostgres(settings, preload=()).start()
        try:
            shape = (args.servers, args.statements, args.seconds, args.writers)
            res = run(uri(pg.dsn), *shape)
            results["postgresql"] = Result("postgresql", res.rows, res.seconds, res.cpu_s)
        finally:
            pg.cleanup()
        res = run(str(Path(tmp) / "bench.db"), *shape)
        results["sqlite"] = Result("sqlite", res.rows, res.seconds, res.cpu_s)
    load = os.getloadavg()
    figures = {
        name: {
            "rows_per_s": round(r.rows_per_s),
            "servers_at_10s": round(r.servers_at_10s(args.statements)),
            "client_cpu_s_per_1k_rows": round(r.cpu_s / r.rows * 1000, 4),
            "rows": r.rows,
            "seconds": round(r.seconds, 1),
        }
        for name, r in results.items()
    }
    ratio = results["postgresql"].rows_per_s / results["sqlite"].rows_per_s
    if args.json:
        print(json.dumps({"figures": figures, "pg_over_sqlite": round(ratio, 2), "load": load}))
        return 0
    print(
        f"{args.servers} servers x {args.statements} active statements, {args.writers} writer "
        f"threads, {args.seconds:.0f} s per engine, synchronous_commit={args.synchronous_commit}"
    )
    for name, f in figures.items():
        print(
            f"  {name:<10} {f['rows_per_s']:>9,} interval rows/s  -> {f['servers_at_10s']:>5,} "
            f"servers at 10 s  (client CPU {f['client_cpu_s_per_1k_rows']:.4f} s per 1k rows)"
        )
    print(f"  PostgreSQL / SQLite: x{ratio:.2f}   load average {load[0]:.1f} {load[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
