"""Benchmark: reading PostgreSQL server logs, querywatch against pgBadger, in one run.

Targets (issue 14): at least 20x pgBadger's single-process throughput, and a peak RSS of at most
300 MB on a log of at least 1 GB (streaming, bounded state).

1. A stderr log of ``--size`` MB (default 1,100) is generated in a temporary folder (deleted at the
   end) with ``log_line_prefix = '%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h '`` and
   ``log_min_duration_statement = 0``: ~2,500 statement shapes over 40 tables (ORM SELECTs with IN
   lists of varying length run through the extended protocol with their ``parameters:`` DETAIL
   lines, multi-line report queries with joins, INSERTs, UPDATEs, DELETEs, BEGIN/COMMIT), values
   drawn at random, log-normal durations; and, as a busy server writes them, auto_explain plans,
   lock waits (still waiting / acquired), temp files, errors with their STATEMENT lines,
   checkpoints, connections and disconnections.
2. querywatch reads the whole log in a child process (peak RSS is that child's ``ru_maxrss``):
   ``querywatch logs FILE --format json`` when the CLI has the command, and again with ``-j 2``
   (two processes on byte ranges; CPU time and RSS include both workers), and the library's fast
   path ``summarize`` (what ``logs`` calls without ``--store``) in any case.
3. pgBadger (``pgbadger -q -o out.json``) reads the first ``--slice`` MB (default 100) of the same
   log, single process and ``-j 2``: on the full GB it would take about ten minutes; its
   throughput is steady over a file, so MB/s on the slice stands for the whole.
4. Both read each file of the pgBadger corpus (tests/fixtures/logs/pgbadger), decompressed sizes.

The machine is shared: the figures are wall times, with the load average printed beside them.

Run: .venv/bin/python bench/logs.py [--size 1100] [--slice 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "logs" / "pgbadger"
PREFIX = "%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h "
PYTHON = sys.executable

TABLES = [
    "orders",
    "order_items",
    "customers",
    "products",
    "invoices",
    "payments",
    "sessions",
    "carts",
    "cart_items",
    "shipments",
    "addresses",
    "reviews",
    "coupons",
    "inventory",
    "warehouses",
    "suppliers",
    "categories",
    "tags",
    "product_tags",
    "events_2026_11",
    "audit_log",
    "users",
    "user_roles",
    "permissions",
    "notifications",
    "messages",
    "subscriptions",
    "plans",
    "refunds",
    "taxes",
    "currencies",
    "exchange_rates",
    "returns",
    "pricing_rules",
    "promotions",
    "wishlists",
    "search_terms",
    "page_views",
    "api_keys",
    "webhooks",
]
COLUMNS = [
    "id",
    "customer_id",
    "status",
    "created_at",
    "updated_at",
    "total_cents",
    "currency",
    "email",
    "name",
    "sku",
    "quantity",
    "price_cents",
    "region",
    "country",
    "deleted_at",
    "external_ref",
    "priority",
    "kind",
    "score",
    "owner_id",
]
USERS = [
    ("app", "shop", "web"),
    ("app", "shop", "worker"),
    ("report", "shop", "metabase"),
    ("admin", "shop", "psql"),
    ("app", "billing", "billing-api"),
]


def _quote(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return str(rng.randint(1, 5_000_000))
    if pick < 0.8:
        return f"'{rng.choice(['paid', 'pending', 'shipped', 'refunded', 'cancelled'])}'"
    return f"'user{rng.randint(1, 99999)}@example.com'"


def _templates(rng: random.Random, count: int) -> list[tuple[str, str, float]]:
    """(kind, text with {v} slots for values, median ms) of `count` statement shapes."""
    out: list[tuple[str, str, float]] = []
    while len(out) < count:
        table = rng.choice(TABLES)
        cols = rng.sample(COLUMNS, rng.randint(3, 9))
        kind = rng.random()
        if kind < 0.40:  # ORM select through the extended protocol
            where = rng.sample(COLUMNS, rng.randint(1, 3))
            conds = " AND ".join(f'"{table}"."{c}" = ${i + 1}' for i, c in enumerate(where))
            sel = ", ".join(f'"{table}"."{c}"' for c in cols)
            text = (
                f'SELECT {sel} FROM "public"."{table}" WHERE {conds} AND "{table}"."id" IN ({{in}}) '
                f'ORDER BY "{table}"."created_at" DESC LIMIT {rng.choice([1, 20, 50, 100])}'
            )
            out.append(("execute", text, rng.lognormvariate(0, 1.2)))
        elif kind < 0.55:  # a hand-written multi-line report query
            other = rng.choice(TABLES)
            text = (
                f"SELECT t.{cols[0]}, count(*) AS n, sum(o.{cols[1]}) AS total\n"
                f"  FROM {table} t\n  JOIN {other} o ON o.{cols[2]} = t.id\n"
                f" WHERE t.{rng.choice(COLUMNS)} = {{v}} AND t.created_at > {{v}}\n"
                f" GROUP BY t.{cols[0]}\n ORDER BY total DESC\n LIMIT {{v}}"
            )
            out.append(("statement", text, rng.lognormvariate(3, 1.5)))
        elif kind < 0.72:
            vals = ", ".join("{v}" for _ in cols)
            text = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({vals}) RETURNING id"
            out.append(("statement", text, rng.lognormvariate(-0.5, 0.8)))
        elif kind < 0.88:
            sets = ", ".join(f"{c} = {{v}}" for c in cols[:3])
            text = f"UPDATE {table} SET {sets}, updated_at = now() WHERE id = {{v}}"
            out.append(("statement", text, rng.lognormvariate(0, 1)))
        elif kind < 0.94:
            text = f"DELETE FROM {table} WHERE {rng.choice(COLUMNS)} < {{v}} AND status = {{v}}"
            out.append(("statement", text, rng.lognormvariate(1, 1)))
        else:
            out.append(("statement", rng.choice(["BEGIN", "COMMIT", "ROLLBACK", "SELECT 1"]), 0.02))
    return out


def _render(rng: random.Random, template: tuple[str, str, float]) -> tuple[str, str, str | None]:
    kind, text, _ = template
    params: str | None = None
    if "{in}" in text:
        n = rng.choice([1, 1, 2, 3, 5, 8, 13])
        first = text.count("$") + 1
        text = text.replace("{in}", ", ".join(f"${first + i}" for i in range(n)))
        params = ", ".join(f"${i + 1} = {_quote(rng)}" for i in range(first - 1 + n))
    while "{v}" in text:
        text = text.replace("{v}", _quote(rng), 1)
    return kind, text.replace("\n", "\n\t"), params


def generate(path: Path, size_mb: int, seed: int = 14) -> dict[str, int]:
    """Write the log; return what was written (statements, plans, lock waits...)."""
    rng = random.Random(seed)
    templates = _templates(rng, 2500)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(templates))]  # a few hot, a long tail
    pool = [(t, _render(rng, t)) for t in rng.choices(templates, weights, k=40_000)]
    target = size_mb * 1_000_000
    written = 0
    counts = {
        "statements": 0,
        "plans": 0,
        "lock_waits": 0,
        "temp_files": 0,
        "errors": 0,
        "checkpoints": 0,
        "connections": 0,
    }
    t = 1_795_000_000.0
    line_of: dict[int, int] = {}
    pids = list(range(20_000, 20_200))
    with open(path, "w", encoding="utf-8") as out:
        buf: list[str] = []
        last_second = -1
        stamp_s = ""
        next_checkpoint = t + 300
        while written < target:
            for _ in range(5000):
                t += rng.expovariate(1 / 0.004)
                second = int(t)
                if second != last_second:
                    last_second = second
                    stamp_s = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
                stamp = f"{stamp_s}.{int((t - second) * 1000):03d} UTC"
                pid = rng.choice(pids)
                user, db, app = rng.choice(USERS)
                line_of[pid] = line_of.get(pid, 0) + 1
                prefix = (
                    f"{stamp} [{pid}]: [{line_of[pid]}-1] user={user},db={db},app={app},"
                    f"client=10.0.{pid % 7}.{pid % 250} "
                )
                template, (kind, text, params) = rng.choice(pool)
                ms = template[2] * rng.lognormvariate(0, 0.4)
                r = rng.random()
                if r < 0.0005:
                    plan = (
                        f"{prefix}LOG:  duration: {ms:.3f} ms  plan:\n\tQuery Text: {text}\n"
                        f"\tSeq Scan on orders  (cost=0.00..35811.00 rows=1000 width=64)"
                        f" (actual time=0.011..{ms:.3f} rows=1000 loops=1)\n"
                        f"\t  Filter: (status = 'paid'::text)\n\t  Rows Removed by Filter: 99000\n"
                    )
                    buf.append(plan)
                    counts["plans"] += 1
                elif r < 0.0007:
                    holder = rng.choice(pids)
                    wait = 1000 + rng.random() * 5000
                    xid = rng.randint(1000, 9999999)
                    buf.append(
                        f"{prefix}LOG:  process {pid} still waiting for ShareLock on transaction "
                        f"{xid} after 1000.{rng.randint(100, 999)} ms\n"
                        f"{prefix}DETAIL:  Process holding the lock: {holder}. Wait queue: {pid}.\n"
                        f"{prefix}CONTEXT:  while updating tuple (12,{rng.randint(1, 99)}) "
                        f'in relation "orders"\n'
                        f"{prefix}STATEMENT:  {text}\n"
                        f"{prefix}LOG:  process {pid} acquired ShareLock on transaction "
                        f"{xid} after {wait:.3f} ms\n"
                    )
                    counts["lock_waits"] += 1
                elif r < 0.0017:
                    buf.append(
                        f"{prefix}LOG:  temporary file: path "
                        f'"base/pgsql_tmp/pgsql_tmp{pid}.{rng.randint(0, 9)}", '
                        f"size {rng.randint(1, 2000) * 8192 * 128}\n{prefix}STATEMENT:  {text}\n"
                    )
                    counts["temp_files"] += 1
                elif r < 0.0022:
                    buf.append(
                        f'{prefix}ERROR:  duplicate key value violates unique constraint "orders_pkey"\n'
                        f"{prefix}DETAIL:  Key (id)=({rng.randint(1, 99999)}) already exists.\n"
                        f"{prefix}STATEMENT:  {text}\n"
                    )
                    counts["errors"] += 1
                elif r < 0.0042:
                    buf.append(
                        f"{prefix}LOG:  connection authorized: user={user} database={db} "
                        f"application_name={app}\n"
                        f"{prefix}LOG:  disconnection: session time: 0:{rng.randint(0, 59):02d}:"
                        f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d} user={user} database={db} "
                        f"host=10.0.0.1 port=5432\n"
                    )
                    counts["connections"] += 1
                elif kind == "execute":
                    buf.append(
                        f"{prefix}LOG:  duration: {ms:.3f} ms  execute <unnamed>: {text}\n"
                        f"{prefix}DETAIL:  parameters: {params}\n"
                    )
                    counts["statements"] += 1
                else:
                    buf.append(f"{prefix}LOG:  duration: {ms:.3f} ms  statement: {text}\n")
                    counts["statements"] += 1
                if t > next_checkpoint:
                    next_checkpoint = t + 300
                    buf.append(
                        f"{stamp} [99]: [1-1] user=,db=,app=,client= LOG:  checkpoint complete: wrote "
                        f"{rng.randint(100, 9000)} buffers (1.2%); 0 WAL file(s) added, 0 removed, "
                        f"3 recycled;"
                        f" write=26.912 s, sync=0.004 s, total=26.957 s; sync files=41\n"
                    )
                    counts["checkpoints"] += 1
            chunk = "".join(buf)
            buf.clear()
            out.write(chunk)
            written += len(chunk.encode("utf-8"))
    return counts


CPU: dict[str, float] = {}  # CPU seconds (user + system) of the last child run, by its argv[0]


def _run_child(argv: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[float, int, int]:
    """(wall seconds, peak RSS kB, exit status) of a child process; its CPU time in CPU."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    CPU["last"] = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(
            f"  ! {' '.join(argv[:4])}... exit {proc.returncode}: {err.strip()[-300:]}", flush=True
        )
    return wall, usage.ru_maxrss, proc.returncode


_API = (
    "import sys, json; from querywatch.logs.reader import read_chunks;"
    " from querywatch.logs.summary import summarize;"
    " s = summarize(read_chunks(sys.argv[1])); r = s.report(files=(sys.argv[1],));"
    " print(json.dumps(dict(r.counts)))"
)


def querywatch_api(path: Path) -> tuple[float, int, dict[str, int]]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, "-c", _API, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    CPU["last"] = usage.ru_utime + usage.ru_stime
    out = proc.stdout.read().decode() if proc.stdout else "{}"
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"querywatch failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss, json.loads(out)


def cli_has_logs() -> bool:
    exe = Path(PYTHON).with_name("querywatch")
    try:
        done = subprocess.run([str(exe), "logs", "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pgbadger(
    path: Path, out: Path, jobs: int = 1, extra: tuple[str, ...] = ()
) -> tuple[float, int]:
    argv = ["pgbadger", "-q", "-o", str(out), *extra]
    if jobs > 1:
        argv += ["-j", str(jobs)]
    wall, rss, _ = _run_child([*argv, str(path)])
    return wall, rss


def _slice(src: Path, dst: Path, mb: int) -> int:
    """The first `mb` MB of src into dst, cut before a line with a prefix (no message is cut).

    Copied in blocks: this process stays small, so the children forked after it do not start
    with its pages (ru_maxrss counts them).
    """
    want = mb * 1_000_000
    done = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        while done < want:
            block = f.read(min(1 << 20, want - done))
            if not block:
                break
            last = done + len(block) >= want
            if last:
                block = block[: block.rfind(b"\n20") + 1]
            out.write(block)
            done += len(block)
            if last:
                break
    return done


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _figure(
    results: dict[str, Any], name: str, mb: float, wall: float, rss: int | None = None
) -> None:
    """Record and print one run: wall and CPU seconds, MB/s by each, peak RSS."""
    cpu = CPU["last"]
    row: dict[str, Any] = {"s": round(wall, 1), "cpu_s": round(cpu, 1), "mb_s": round(mb / wall, 2)}
    row["mb_per_cpu_s"] = round(mb / cpu, 2)
    if rss is not None:
        row["rss_mb"] = round(rss / 1024, 1)
    results[name] = row
    extra = f", peak RSS {row['rss_mb']:.0f} MB" if rss is not None else ""
    print(
        f"  {name}: {mb:,.0f} MB in {wall:.1f} s wall ({row['mb_s']} MB/s), {cpu:.1f} s CPU "
        f"({row['mb_per_cpu_s']} MB/CPU-s){extra}, load {_load()}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1100, help="generated log size, MB")
    ap.add_argument("--slice", type=int, default=100, help="MB of it pgBadger reads")
    ap.add_argument("--keep", type=Path, help="folder to keep (and reuse) the generated log in")
    ap.add_argument("--no-corpus", action="store_true", help="skip the corpus files")
    args = ap.parse_args()
    if shutil.which("pgbadger") is None:
        raise SystemExit("bench/logs.py: pgbadger is not installed (apt-get install pgbadger)")
    work = Path(tempfile.mkdtemp(prefix="qw-logs-bench-"))
    try:
        folder = args.keep or work
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"generated-{args.size}MB.log"
        if not log.exists():
            t0 = time.perf_counter()
            written = generate(log, args.size)
            took = time.perf_counter() - t0
            print(f"generated {log.stat().st_size / 1e6:,.0f} MB in {took:.0f} s: {written}")
        size = log.stat().st_size / 1e6
        results: dict[str, Any] = {"size_mb": round(size, 1), "load_start": _load()}

        print(f"querywatch, library fast path (summarize), {size:,.0f} MB:", flush=True)
        wall, rss, counts = querywatch_api(log)
        _figure(results, "qw_1gb", size, wall, rss)
        print(f"  counts: {counts}")
        if cli_has_logs():
            exe = str(Path(PYTHON).with_name("querywatch"))
            print(f"querywatch logs FILE --format json, {size:,.0f} MB:", flush=True)
            wall, rss, code = _run_child([exe, "logs", str(log), "--format", "json"])
            if code == 0:
                _figure(results, "qw_cli_1gb", size, wall, rss)
            print(f"querywatch logs FILE --format json -j 2, {size:,.0f} MB:", flush=True)
            wall, rss, code = _run_child([exe, "logs", str(log), "--format", "json", "-j", "2"])
            if code == 0:
                _figure(results, "qw_cli_j2_1gb", size, wall, rss)
        else:
            print(
                "querywatch logs: the CLI has no `logs` command here, the library's figures stand"
            )

        part = work / "slice.log"
        slice_mb = _slice(log, part, args.slice) / 1e6
        print(f"the first {slice_mb:,.0f} MB, pgBadger -j 1, -j 2 and querywatch:", flush=True)
        wall, rss = pgbadger(part, work / "pgb1.json", extra=("--prefix", PREFIX))
        _figure(results, "pgbadger_j1", slice_mb, wall, rss)
        wall, rss = pgbadger(part, work / "pgb2.json", jobs=2, extra=("--prefix", PREFIX))
        _figure(results, "pgbadger_j2", slice_mb, wall, rss)
        wall, rss, _ = querywatch_api(part)
        _figure(results, "qw_slice", slice_mb, wall, rss)
        part.unlink()

        qw, pg = results["qw_1gb"], results["pgbadger_j1"]
        results["ratio_wall"] = round(qw["mb_s"] / pg["mb_s"], 1)
        results["ratio_cpu"] = round(qw["mb_per_cpu_s"] / pg["mb_per_cpu_s"], 1)
        print(
            f"querywatch (1 GB) / pgBadger -j 1: x{results['ratio_wall']} by wall time, "
            f"x{results['ratio_cpu']} by CPU time (target x20); peak RSS {qw['rss_mb']} MB "
            f"(target <= 300)"
        )
        for name, against in (("qw_cli_1gb", "pgbadger_j1"), ("qw_cli_j2_1gb", "pgbadger_j2")):
            if name in results:
                a, b = results[name], results[against]
                print(
                    f"{name} / {against}: x{a['mb_s'] / b['mb_s']:.1f} by wall time, "
                    f"x{a['mb_per_cpu_s'] / b['mb_per_cpu_s']:.1f} by CPU time"
                )
        if not args.no_corpus:
            results["corpus"] = _corpus(work)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _corpus(work: Path) -> dict[str, Any]:
    """Both tools on each file of pgBadger's corpus (decompressed first: the same bytes read)."""
    rows: list[dict[str, Any]] = []
    for f in sorted(CORPUS.iterdir()):
        if f.name in ("LICENSE", "README.md") or f.suffix == ".expected":
            continue
        plain = work / (f.name + ".plain")
        head = f.read_bytes()[:4]
        if head.startswith(b"\x1f\x8b"):
            plain.write_bytes(gzip.decompress(f.read_bytes()))
        elif head.startswith(b"BZh"):
            plain.write_bytes(bz2.decompress(f.read_bytes()))
        else:
            shutil.copy(f, plain)
        mb = plain.stat().st_size / 1e6
        qw, _, _ = querywatch_api(plain)
        qw_cpu = CPU["last"]
        pg, _ = pgbadger(plain, work / "c.json", extra=_PGBADGER_ARGS.get(f.name, ()))
        pg_cpu = CPU["last"]
        rows.append(
            {
                "file": f.name,
                "mb": round(mb, 2),
                "qw_cpu_s": round(qw_cpu, 2),
                "pg_cpu_s": round(pg_cpu, 2),
            }
        )
        print(
            f"  corpus {f.name}: {mb:.2f} MB, querywatch {qw:.2f} s ({qw_cpu:.2f} CPU), "
            f"pgBadger {pg:.2f} s ({pg_cpu:.2f} CPU)",
            flush=True,
        )
        plain.unlink()
    total = sum(r["mb"] for r in rows)
    qw_cpu = sum(r["qw_cpu_s"] for r in rows)
    pg_cpu = sum(r["pg_cpu_s"] for r in rows)
    print(
        f"corpus: {total:.1f} MB, querywatch {qw_cpu:.1f} CPU-s, pgBadger {pg_cpu:.1f} CPU-s "
        f"(x{pg_cpu / qw_cpu:.1f}); each start-up included"
    )
    return {"mb": round(total, 1), "qw_cpu_s": round(qw_cpu, 1), "pg_cpu_s": round(pg_cpu, 1)}


# pgBadger cannot detect these formats by itself (it says "please use -f option").
_PGBADGER_ARGS: dict[str, tuple[str, ...]] = {
    "anonymize.log": ("-f", "csv"),
    "csv_statement_without_duration.log": ("-f", "csv"),
    "weeknumber.log": ("-f", "csv"),
    "cnpg.log.gz": ("-f", "jsonlog"),
    "pg-timezones.log": ("-f", "rds"),
    "postgresql_param_range.log": ("--prefix", "%t [%p]: [%l-1] [%x] usr=%u,db=%d,appli=%a "),
}


if __name__ == "__main__":
    main()
