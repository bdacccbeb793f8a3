"""Benchmark: the dashboard's overview page over a store holding a week of history.

The store is generated synthetically in the shape `querywatch watch` leaves behind after 7 days at a
10 s interval with 1,000 statements active in every interval and the default retention: raw
intervals (and their 17 million deltas) for the last 48 h, 1-minute rollups for 7 days, 1-hour
rollups for 7 days, a few deploys and incidents, collector and detector status. Rows are inserted
directly with INSERT ... SELECT (the same values as rolling the raw intervals up would give: a
statement's per-interval figures depend only on the hour).

Then a real uvicorn server (``querywatch.web.start_in_thread``) serves the store on 127.0.0.1 and
an httpx client times, interleaved, GET / (the default 1 h overview), GET /?range=7d, GET
/?range=24h and the reference GET /static/querywatch.css (same server, no store access). A second
pass (``_cold``) empties the store's cache of rolled-up rows before each request (the first view
after a rollup mark moved); the first shows a dashboard being refreshed. Target: overview p95
<= 200 ms, cold included.

Run: /tmp/qwvenv/bin/python bench/web.py [--requests 60] [--store PATH] [--statements 1000]
(the store is kept at PATH and reused when it already holds the same shape).
Writes bench/results/web.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from querywatch.model import Incident, IncidentEvent, IncidentState  # noqa: E402
from querywatch.store import Store  # noqa: E402
from querywatch.store.series import WEB_CACHE  # noqa: E402
from querywatch.web import start_in_thread  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "web.json"
TARGET_P95_MS = 200.0
INTERVAL_S = 10
DAYS = 7
RAW_HOURS = 48

# A statement's figures per 10 s interval: calls fall off as 1/rank (a few statements dominate),
# mean time varies by statement, and traffic follows the hour of the day (triangle wave).
CALLS = "MAX(1, 600 / s.id) * (1 + abs(12 - CAST(({t} % 86400) / 3600 AS INTEGER)) / 12.0)"
MEAN_US = "(80 + (s.id * 37) % 900)"
GEN_STATEMENTS = """
WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?)
INSERT INTO statements (id, server_id, dbid, userid, queryid, toplevel, fingerprint, first_seen)
SELECT k, ?, 5, 10, k * 7919, 1, printf('%016x', k * 2654435761), ? FROM n
"""
GEN_TEXTS = """
INSERT INTO texts (fingerprint, query, first_seen)
SELECT fingerprint, 'SELECT c' || id || ' FROM t' || (id % 97) || ' WHERE id = $1', first_seen
FROM statements
"""
GEN_INTERVALS = """
WITH RECURSIVE n(t) AS (SELECT ? UNION ALL SELECT t + ? FROM n WHERE t + ? < ?)
INSERT INTO intervals (server_id, start, end, complete, dealloc, act_samples)
SELECT ?, t, t + ?, 1, 0, 0 FROM n
"""
GEN_DELTAS = f"""
INSERT INTO deltas (interval_id, statement_id, calls, exec_us, rows)
SELECT i.id, s.id, CAST({CALLS.format(t="i.start")} AS INTEGER),
    CAST({CALLS.format(t="i.start")} AS INTEGER) * {MEAN_US}, CAST({CALLS.format(t="i.start")} AS INTEGER) * 3
FROM intervals i CROSS JOIN statements s ORDER BY i.id, s.id
"""
GEN_ROLLUPS = f"""
WITH RECURSIVE n(t) AS (SELECT ? UNION ALL SELECT t + ? FROM n WHERE t + ? < ?)
INSERT INTO rollups (resolution, server_id, bucket, statement_id, calls, exec_us, rows)
SELECT ?, ?, n.t, s.id, ? * CAST({CALLS.format(t="n.t")} AS INTEGER),
    ? * CAST({CALLS.format(t="n.t")} AS INTEGER) * {MEAN_US}, ? * CAST({CALLS.format(t="n.t")} AS INTEGER) * 3
FROM n CROSS JOIN statements s ORDER BY n.t, s.id
"""
GEN_BUCKETS = """
WITH RECURSIVE n(t) AS (SELECT ? UNION ALL SELECT t + ? FROM n WHERE t + ? < ?)
INSERT INTO rollup_buckets (resolution, server_id, bucket, seconds) SELECT ?, ?, t, ? FROM n
"""
SET_MARK = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
SHAPE = "SELECT value FROM meta WHERE key = 'bench_shape'"


def build_store(path: Path, statements: int, now: float) -> None:
    """Write the week-old store described in the module docstring."""
    minute_mark = math.floor((now - 30) / 60) * 60
    hour_mark = math.floor(minute_mark / 3600) * 3600
    week = math.floor((now - DAYS * 86400) / 3600) * 3600
    raw_from = math.floor((now - RAW_HOURS * 3600) / INTERVAL_S) * INTERVAL_S
    with Store(path) as store:
        server = store.server("bench", "bench", "15.18")
        _history(store, server.id, statements, now)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    db.execute(GEN_STATEMENTS, (statements, server.id, week))
    db.execute(GEN_TEXTS)
    step = INTERVAL_S
    db.execute(GEN_INTERVALS, (raw_from, step, step, now - step, server.id, step))
    db.execute(GEN_DELTAS)
    for res, lo, hi in ((60, week, minute_mark), (3600, week, hour_mark)):
        per = res // INTERVAL_S
        db.execute(GEN_ROLLUPS, (lo, res, res, hi, res, server.id, per, per, per))
        db.execute(GEN_BUCKETS, (lo, res, res, hi, res, server.id, res))
    db.execute(SET_MARK, ("rollup_minute", repr(float(minute_mark))))
    db.execute(SET_MARK, ("rollup_hour", repr(float(hour_mark))))
    db.execute(SET_MARK, ("bench_shape", json.dumps({"statements": statements, "now": now})))
    db.execute("COMMIT")
    db.close()


def _history(store: Store, server_id: int, statements: int, now: float) -> None:
    for days_ago in range(DAYS):
        store.add_deploy(f"v1.{DAYS - days_ago}", now - days_ago * 86400 - 1800, "bench")
    for n, days_ago in enumerate((5, 2, 0)):
        opened = now - days_ago * 86400 - 1500
        resolved = None if days_ago == 0 else opened + 900
        state = IncidentState.FIRING if resolved is None else IncidentState.RESOLVED
        events = [IncidentEvent(opened, IncidentState.FIRING, "calls/s x12")]
        if resolved is not None:
            events.append(IncidentEvent(resolved, IncidentState.RESOLVED, "3 clean intervals"))
        incident = Incident(
            f"bench-{n}", f"{1 * 2654435761:016x}", state, opened, opened, resolved,
            ("calls_spike",), tuple(events),
        )  # fmt: skip
        diagnosis = {
            "verdict": "query_regression",
            "summary": "SELECT c1 FROM t1 WHERE id = $1 holds 87% of the extra database time",
            "culprits": [],
            "deploys": [],
        }
        store.save_incident(server_id, incident, diagnosis)
    status = {"last_success": now - 5, "intervals": 60480, "gaps": 2, "dealloc": 0}
    store.set_status("collector:bench", status)
    store.set_status(
        "detector:bench",
        {"learning": False, "open_incidents": [{"id": "bench-2", "state": "firing"}]},
    )


def store_for(path: Path, statements: int) -> Path:
    """Reuse ``path`` when it holds this shape from the last hour, else generate it again."""
    now = time.time()
    if path.exists():
        try:
            with sqlite3.connect(path) as db:
                row = db.execute(SHAPE).fetchone()
        except sqlite3.Error:
            row = None
        shape = json.loads(row[0]) if row else {}
        if shape.get("statements") == statements and now - shape.get("now", 0) < 3600:
            return path
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    started = time.perf_counter()
    build_store(path, statements, now)
    print(f"generated {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def time_requests(
    base: str, paths: dict[str, str], requests: int, cold: bool = False
) -> dict[str, list[float]]:
    """Milliseconds per GET, the paths interleaved so load on the machine hits them alike. With
    ``cold`` the store's rollup row cache is emptied before each request."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths.values():  # warm-up: connection, page cache
            client.get(path).raise_for_status()
        for _ in range(requests):
            for name, path in paths.items():
                if cold:
                    WEB_CACHE.clear()
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                samples[name].append(elapsed)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--statements", type=int, default=1000)
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "qw-web.db")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    path = store_for(args.store, args.statements)
    paths = {
        "overview_1h": "/",
        "overview_24h": "/?range=24h",
        "overview_7d": "/?range=7d",
        "overview_json_7d": "/index.json?range=7d",
        "reference_static": "/static/querywatch.css",
    }
    handle = start_in_thread(path, "127.0.0.1", args.port, "")
    try:
        samples = time_requests(handle.url, paths, args.requests)
        cold = time_requests(handle.url, paths, args.requests, cold=True)
        samples.update({f"{name}_cold": values for name, values in cold.items()})
    finally:
        handle.stop()
    reference = p95(samples["reference_static"])
    reference_cold = p95(samples["reference_static_cold"])
    report: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "store": {"path": str(path), "bytes": path.stat().st_size, "statements": args.statements},
        "requests_each": args.requests,
        "transport": "real uvicorn server on 127.0.0.1, httpx.Client keep-alive",
        "target_p95_ms": TARGET_P95_MS,
        "results": {},
    }
    print(f"store {path.stat().st_size / 1e6:.0f} MB, {args.requests} requests each")
    for name, values in samples.items():
        entry = {
            "p50_ms": round(statistics.median(values), 2),
            "p95_ms": round(p95(values), 2),
            "ratio_p95_to_reference": round(
                p95(values) / (reference_cold if name.endswith("_cold") else reference), 1
            ),
        }
        report["results"][name] = entry
        print(
            f"{name:<23} p50 {entry['p50_ms']:7.1f} ms  p95 {entry['p95_ms']:7.1f} ms  "
            f"x{entry['ratio_p95_to_reference']} of the static reference"
        )
    worst = max(v["p95_ms"] for n, v in report["results"].items() if n.startswith("overview"))
    report["pass"] = worst <= TARGET_P95_MS
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst overview p95 {worst:.1f} ms (target <= {TARGET_P95_MS:.0f} ms)")
    return 0 if report["pass"] else 1


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
