"""Benchmark: the fleet page (/fleet and /fleet.json's context) over a store of N servers.

The store is generated in the shape a fleet's watcher leaves behind at a 10 s interval with S
statements active on every server (default 20 x 200), ``maintain`` running every minute:

- raw intervals of the last ``--raw-hours`` (24 h) per server; only the last 2.5 minutes, not
  rolled up yet, carry their S deltas (the fleet page reads no older raw deltas, and a day of
  20 x 200 deltas, 35 million rows, takes too long to generate for a benchmark);
- 1-minute rollups of the last ``--minute-hours`` (4 h: S rows per server and minute), 1-hour
  rollups of the last 24 h, each bucket's covered seconds and DB time
  (querywatch.store.bucket_time, computed by the store's own refresh);
- collector, detector and label status rows per server, and a firing incident on every fifth.

Then, interleaved so the load on the machine hits both alike, it times (wall and CPU ms of this
process per page context, medians of ``--repeats``) for the 1 h (default) and 3 h ranges:

- ``fleet``: ``querywatch.web.views.fleet``, the page's context as served (a few set-based
  queries for the whole fleet, querywatch.store.fleet);
- ``reference``: the same figures read the way the page read them before (querywatch.status'
  per-server build: gaps, incidents, interval count, last end, then ``Store.db_time`` per server,
  which reads every statement's rollup rows), kept here as the reference. Each run checks that
  both give the same sparklines.

Ratios reference / fleet are the figures; with ``--servers 10,20,40`` the fleet page's time
per server shows it is linear in servers. SQLite store (the default engine).

Run: .venv/bin/python bench/fleet_page.py [--servers 20] [--statements 200] [--repeats 7]
Writes bench/results/fleet_page.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from querywatch import status  # noqa: E402
from querywatch.model import (  # noqa: E402
    Counters,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.store import (  # noqa: E402
    Store,
    bucket_time,
    rollup,
)
from querywatch.web import views  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet_page.json"
INTERVAL_S = 10.0
NOW = 1_800_000_000.0 + 95.0  # 95 s after a minute mark: a raw tail of 1.5 minutes
TAIL_S = 95.0 + 60.0  # maintain ran a minute ago: two minutes and a half not rolled up

INSERT_INTERVAL = (
    "INSERT INTO intervals (server_id, start, end, complete, dealloc) VALUES (?, ?, ?, 1, 0)"
)
INSERT_ROLLUP = (
    "INSERT INTO rollups (server_id, resolution, bucket, statement_id, calls, exec_us, rows) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_BUCKET = (
    "INSERT INTO rollup_buckets (server_id, resolution, bucket, seconds) VALUES (?, ?, ?, ?)"
)


def _calls(rank: int, t: float) -> int:
    """Calls per 10 s: 1/rank (a few statements dominate), following the hour of the day."""
    hour = int((t % 86400) // 3600)
    return max(1, int(600 / rank * (1 + abs(12 - hour) / 12.0)))


def _mean_us(rank: int, server: int) -> int:
    return 80 + (rank * 37 + server * 101) % 900


def build(path: Path, servers: int, statements: int, raw_hours: float, minute_hours: float) -> None:
    """Write the store described in the module docstring."""
    minute_mark = math.floor((NOW - TAIL_S) / 60) * 60
    hour_mark = math.floor((minute_mark - rollup.SETTLE_S) / 3600) * 3600
    keys = [StatementKey(5, 10, 7919 * rank) for rank in range(1, statements + 1)]
    fps = {k: f"{k.queryid:016x}" for k in keys}
    texts = {fp: f"SELECT c{n} FROM t{n % 97} WHERE id = $1" for n, fp in enumerate(fps.values())}
    with Store(path) as store:
        for n in range(servers):
            name = f"db{n:03d}"
            srv = store.server(name, "bench", "15.18")
            _tail(store, srv.id, n, keys, fps, texts, minute_mark)
            ids = {k: store.known_keys(srv.id)[k] for k in keys}
            with store._errors(), store._transaction() as conn:
                conn.executemany(INSERT_INTERVAL, _old_intervals(srv.id, minute_mark, raw_hours))
                conn.executemany(INSERT_ROLLUP, _rollups(srv.id, n, ids, minute_mark, minute_hours))
                conn.executemany(INSERT_ROLLUP, _hour_rollups(srv.id, n, ids, hour_mark))
                conn.executemany(
                    INSERT_BUCKET, _buckets(srv.id, minute_mark, hour_mark, minute_hours)
                )
            _status(store, srv.id, n, name)
        with store._errors(), store._transaction() as conn:
            bucket_time.refresh(conn, rollup.MINUTE, 0.0, minute_mark)
            bucket_time.refresh(conn, rollup.HOUR, 0.0, hour_mark)
            for key, value in (("rollup_minute", minute_mark), ("rollup_hour", hour_mark)):
                conn.execute(rollup.SET_MARK, (key, repr(float(value))))


def _tail(
    store: Store,
    server_id: int,
    server: int,
    keys: list[StatementKey],
    fps: dict[StatementKey, str],
    texts: dict[str, str],
    minute_mark: float,
) -> None:
    """The intervals not rolled up yet, with every statement's delta, through the store."""
    t, first = minute_mark, True
    while t + INTERVAL_S <= NOW:
        deltas = tuple(
            StatementDelta(k, Counters(calls=c, exec_ms=c * _mean_us(r, server) / 1000.0, rows=c))
            for r, k in enumerate(keys, 1)
            for c in (_calls(r, t),)
        )
        known = (fps, texts) if first else ({}, {})
        store.record_interval(server_id, Interval(t, t + INTERVAL_S, deltas, None), *known)
        t, first = t + INTERVAL_S, False


def _old_intervals(server_id: int, minute_mark: float, hours: float) -> list[tuple[Any, ...]]:
    count = int(hours * 3600 / INTERVAL_S)
    starts = (minute_mark - (count - n) * INTERVAL_S for n in range(count))
    return [(server_id, t, t + INTERVAL_S) for t in starts]


def _rollups(
    server_id: int, server: int, ids: dict[StatementKey, int], minute_mark: float, hours: float
) -> list[tuple[Any, ...]]:
    minutes = int(hours * 60)
    out = []
    for m in range(minutes):
        bucket = minute_mark - (minutes - m) * 60
        for r, sid in enumerate(ids.values(), 1):
            calls = 6 * _calls(r, bucket)
            out.append((server_id, 60, bucket, sid, calls, calls * _mean_us(r, server), calls))
    return out


def _hour_rollups(
    server_id: int, server: int, ids: dict[StatementKey, int], hour_mark: float
) -> list[tuple[Any, ...]]:
    out = []
    for h in range(24):
        bucket = hour_mark - (24 - h) * 3600
        for r, sid in enumerate(ids.values(), 1):
            calls = 360 * _calls(r, bucket)
            out.append((server_id, 3600, bucket, sid, calls, calls * _mean_us(r, server), calls))
    return out


def _buckets(
    server_id: int, minute_mark: float, hour_mark: float, hours: float
) -> list[tuple[Any, ...]]:
    minutes = int(hours * 60)
    out = [(server_id, 60, minute_mark - (minutes - m) * 60, 60.0) for m in range(minutes)]
    out += [(server_id, 3600, hour_mark - (24 - h) * 3600, 3600.0) for h in range(24)]
    return out


def _status(store: Store, server_id: int, n: int, name: str) -> None:
    store.set_status(f"collector:{name}", {"last_success": NOW - 3, "intervals": 8640})
    store.set_status(f"detector:{name}", {"learning": False, "updated_at": NOW})
    store.set_status(f"server:{name}", {"labels": {"env": "prod"}, "interval_s": INTERVAL_S})
    if n % 5 == 0:
        opened = NOW - 300
        event = IncidentEvent(opened + 10, IncidentState.FIRING, "calls/s x12")
        incident = Incident(
            f"inc-{name}", "0", IncidentState.FIRING, opened, opened + 10, None,
            ("calls_spike",), (event,),
        )  # fmt: skip
        store.save_incident(server_id, incident, {"summary": "SELECT c1 ... x12"})


def reference(site: views.Site, range_name: str) -> dict[str, list[float | None]]:
    """The fleet's sparklines read as the page read them before: per server, its status
    (querywatch.status.build) and ``Store.db_time`` over every statement's rows."""
    now = site.clock()
    span = views.RANGES[range_name].seconds
    buckets = status.SPARK_BUCKETS
    step = max(1.0, float(math.ceil(span / buckets)))
    start = math.floor(now / step) * step - (buckets - 1) * step
    out: dict[str, list[float | None]] = {}
    for s in status.build(site.store):
        sums, seconds = site.store.db_time(s.server_id, start, start + buckets * step, step)
        spark: list[float | None] = []
        for n in range(buckets):
            covered = seconds.get(start + n * step, 0.0)
            spent = sum(pair[1] for pair in sums.get(start + n * step, {}).values())
            spark.append(round(spent / covered, 3) if covered > 0 else None)
        out[s.name] = spark
    return out


def fleet_page(site: views.Site, range_name: str) -> dict[str, list[float | None]]:
    ctx = views.fleet(site, range_name)
    return {row["server"]: row["db_time"] for row in ctx["rows"]}


def time_both(site: views.Site, range_name: str, repeats: int) -> dict[str, float]:
    """Median wall and CPU ms of each, interleaved; fails when their sparklines differ."""
    runs: dict[str, Callable[[views.Site, str], dict[str, list[float | None]]]] = {
        "fleet": fleet_page,
        "reference": reference,
    }
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    found = {name: run(site, range_name) for name, run in runs.items()}  # warm-up
    _check_same(found["fleet"], found["reference"])
    for _ in range(repeats):
        for name, run in runs.items():
            started, used = time.perf_counter(), time.process_time()
            run(site, range_name)
            wall[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - used) * 1000)
    out = {name: round(statistics.median(values), 1) for name, values in wall.items()}
    out |= {f"{name}_cpu": round(statistics.median(values), 1) for name, values in cpu.items()}
    return out


def _check_same(got: dict[str, list[float | None]], want: dict[str, list[float | None]]) -> None:
    assert set(got) == set(want), "the fleet page and the reference list other servers"
    for name, spark in want.items():
        for a, b in zip(got[name], spark, strict=True):
            assert (a is None) == (b is None), name
            assert a is None or b is None or math.isclose(a, b, rel_tol=1e-6, abs_tol=2e-3), name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="20", help="fleet sizes, comma-separated")
    parser.add_argument("--statements", type=int, default=200)
    parser.add_argument("--raw-hours", type=float, default=24.0)
    parser.add_argument("--minute-hours", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="qw-fleet-page-") as tmp:
        for servers in (int(n) for n in args.servers.split(",")):
            path = Path(tmp) / f"fleet{servers}.db"
            started = time.perf_counter()
            build(path, servers, args.statements, args.raw_hours, args.minute_hours)
            built = time.perf_counter() - started
            with Store(path) as store:
                site = views.Site(store, lambda: NOW)
                for range_name in ("1h", "3h"):
                    ms = time_both(site, range_name, args.repeats)
                    run = {
                        "servers": servers,
                        "statements": args.statements,
                        "range": range_name,
                        **ms,
                        "ratio": round(ms["reference"] / ms["fleet"], 1),
                        "cpu_ratio": round(ms["reference_cpu"] / ms["fleet_cpu"], 1),
                        "fleet_cpu_ms_per_server": round(ms["fleet_cpu"] / servers, 2),
                        "build_s": round(built, 1),
                    }
                    runs.append(run)
                    print(json.dumps(run), flush=True)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "shape": {"raw_hours": args.raw_hours, "minute_hours": args.minute_hours},
        "runs": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"load average {doc['load_average']}; wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
