"""Benchmark: the highest rate querywatch's load generator sustains for ``SELECT 1``, against pgbench.

One throwaway LocalPostgres, in the same run:

1. pgbench running the same statement (``-n -f select1.sql -M prepared -c C -j 2 -T S``): a
   closed loop that sends the next query as soon as one returns, the machine's ceiling;
2. ``run_loadtest`` at increasing fixed rates (open model, C connections, psycopg prepares the
   statement after 5 executions like ``-M prepared``); a rate is *sustained* when the achieved rate
   is within 2 % of the target, nothing is left unfinished and p99 stays under 50 ms (no backlog).
   The rates step up by 1.5x, then a bisection narrows the edge.

The ratio sustained / pgbench TPS goes in BENCHMARKS.md. Both share the machine with the server.

Run: /tmp/qwvenv/bin/python bench/loadtest.py [--seconds 3] [--concurrency 4]
Writes bench/results/loadtest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from querywatch.loadtest import LoadResult, run_loadtest  # noqa: E402
from querywatch.localpg import LocalPostgres  # noqa: E402

STATEMENT = "SELECT 1"
P99_LIMIT_MS = 50.0
RATE_TOLERANCE = 0.02


def pgbench_tps(pg: LocalPostgres, concurrency: int, seconds: int) -> tuple[float, str]:
    folder = Path(tempfile.mkdtemp(prefix="qw-bench-"))
    folder.chmod(0o755)
    script = folder / "select1.sql"
    script.write_text(STATEMENT + ";\n")
    script.chmod(0o644)
    conn = ["-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
    args = ["-n", "-f", str(script), "-M", "prepared", "-c", str(concurrency), "-j", "2"]
    argv = [str(pg.bin("pgbench")), *conn, *args, "-T", str(seconds), "postgres"]
    try:
        result = pg.run_as_owner(argv, timeout=600)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    output = result.stdout + result.stderr
    match = re.search(r"tps = ([\d.]+)", output)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"pgbench failed:\n{output[-800:]}")
    return float(match.group(1)), " ".join(argv[1:])


def trial(dsn: str, rate: float, seconds: float, concurrency: int) -> tuple[bool, LoadResult]:
    r = run_loadtest(dsn, STATEMENT, rate, seconds, concurrency, drain_s=1.0, measure_db=False)
    ok = (
        r.errors == 0
        and r.unfinished == 0
        and abs(r.achieved_rate - rate) / rate <= RATE_TOLERANCE
        and r.latency.p99_ms <= P99_LIMIT_MS
    )
    line = (
        f"  rate {rate:8.0f}/s: achieved {r.achieved_rate:8.1f}/s  p50 {r.latency.p50_ms:7.2f} ms"
        f"  p99 {r.latency.p99_ms:8.2f} ms  unfinished {r.unfinished:6d}  "
        + ("sustained" if ok else "NOT sustained")
    )
    print(line, flush=True)
    return ok, r


def highest_rate(dsn: str, seconds: float, concurrency: int) -> tuple[float, list[dict[str, Any]]]:
    tried: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        ok, r = trial(dsn, rate, seconds, concurrency)
        tried.append(
            {
                "rate": rate,
                "sustained": ok,
                "achieved": round(r.achieved_rate, 1),
                "p50_ms": r.latency.p50_ms,
                "p99_ms": r.latency.p99_ms,
                "unfinished": r.unfinished,
            }
        )
        return ok

    good, rate = 0.0, 500.0
    while run(rate):
        good, rate = rate, rate * 1.5
    bad = rate
    for _ in range(4):
        middle = (good + bad) / 2
        if run(middle):
            good = middle
        else:
            bad = middle
    return good, tried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each rate trial")
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with LocalPostgres() as pg:
        run_loadtest(pg.dsn, STATEMENT, 200, 1, args.concurrency, measure_db=False)  # warm-up
        print(f"querywatch loadtest, {args.concurrency} connections, {args.seconds:g} s per rate:")
        started = time.time()
        sustained, tried = highest_rate(pg.dsn, args.seconds, args.concurrency)
        tps, command = pgbench_tps(pg, args.concurrency, args.pgbench_seconds)
        elapsed = time.time() - started
    ratio = sustained / tps
    print(f"highest sustained rate: {sustained:.0f}/s")
    print(f"pgbench ({command}): {tps:.0f} tps")
    print(f"ratio loadtest / pgbench: {ratio:.3f}")
    result = {
        "benchmark": "loadtest",
        "statement": STATEMENT,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "concurrency": args.concurrency,
        "trial_seconds": args.seconds,
        "criteria": {
            "rate_within": RATE_TOLERANCE,
            "p99_ms_at_most": P99_LIMIT_MS,
            "unfinished": 0,
        },
        "highest_sustained_rate": round(sustained, 1),
        "pgbench": {"command": command, "tps": tps},
        "ratio": round(ratio, 4),
        "trials": tried,
        "elapsed_s": round(elapsed, 1),
    }
    out = ROOT / "bench" / "results" / "loadtest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
