"""`advise` over a 200-statement workload: the review's wall time and the time per statement.

Run: ``.venv/bin/python bench/advise.py [--statements 200] [--rows 100000]``.

A throwaway ``LocalPostgres`` (pg_stat_statements, hypopg) gets 10 tables of ``--rows`` rows each
(columns of every selectivity, an append-only time column, rare NULLs, a low-selectivity index);
``--statements`` distinct statements (equalities, composites, ORDER BY ... LIMIT, ranges, IS NULL,
rare values, joins, UPDATE/DELETE, primary-key lookups) run once each with parameters, so that
pg_stat_statements holds them as ``$n`` texts. Then, as ``querywatch advise`` does:
``server_workload(session, N)`` and ``review()`` (plans, findings, candidates, hypopg verification
of each, health checks), timed as a whole and per statement. Writes ``bench/results/advise.json``;
exits 1 when the review takes 60 s or more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from querywatch.advise import advisor
from querywatch.advise.session import Session
from querywatch.localpg import LocalPostgres
from querywatch.model import Statement

TARGET_S = 60.0
TABLES = 10
SCHEMA = """
CREATE TABLE t{n} (
    id bigserial PRIMARY KEY, a int NOT NULL, b int NOT NULL, c text NOT NULL,
    status text NOT NULL, note text, created_at timestamptz NOT NULL, payload text NOT NULL
);
INSERT INTO t{n} (a, b, c, status, note, created_at, payload)
SELECT (g * 7919) % 10000, g % 10, md5((g % 1000)::text),
       CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'done' END,
       CASE WHEN g % 200 = 1 THEN NULL ELSE 'n' END,
       timestamptz '2026-01-01' + g * interval '1 second', repeat('x', 30)
FROM generate_series(1, {rows}) AS g;
CREATE INDEX t{n}_b_idx ON t{n} (b);
"""
# (template, parameters): {t} a table, {u} another one.
TEMPLATES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("SELECT id, payload FROM {t} WHERE a = %s", (42,)),
    ("SELECT id FROM {t} WHERE b = %s AND a = %s", (3, 42)),
    ("SELECT id, a FROM {t} WHERE b = %s ORDER BY created_at DESC LIMIT 20", (3,)),
    (
        "SELECT count(*) FROM {t} WHERE created_at >= %s AND created_at < %s",
        ("2026-01-01 10:00", "2026-01-01 11:00"),
    ),
    ("SELECT id FROM {t} WHERE note IS NULL", ()),
    ("SELECT id, c FROM {t} WHERE status = %s", ("failed",)),
    ("SELECT * FROM {t} WHERE id = %s", (7,)),
    ("SELECT {t}.id FROM {t} JOIN {u} ON {u}.a = {t}.a WHERE {t}.id = %s", (7,)),
    ("UPDATE {t} SET payload = payload WHERE c = %s", ("nothing",)),
    ("DELETE FROM {t} WHERE a = %s AND b = %s AND id < 0", (1, 2)),
    ("SELECT id FROM {t} ORDER BY created_at DESC LIMIT 10", ()),
    ("SELECT a, count(*) FROM {t} WHERE b = %s GROUP BY a", (3,)),
    ("SELECT id FROM {t} WHERE lower(c) = %s", ("abc",)),
    ("SELECT id FROM {t} WHERE a BETWEEN %s AND %s", (10, 20)),
    (
        "SELECT id FROM {t} WHERE b = %s AND created_at > %s ORDER BY created_at LIMIT 5",
        (3, "2026-01-01"),
    ),
    ("SELECT id FROM {t} WHERE c = %s AND status = %s", ("abc", "failed")),
    ("SELECT max(created_at) FROM {t} WHERE a = %s", (5,)),
    ("SELECT id FROM {t} WHERE a = %s OR b = %s", (5, 6)),
    ("SELECT id FROM {t} WHERE a IN (%s, %s, %s)", (1, 2, 3)),
    ("SELECT id FROM {t} WHERE note IS NULL AND b = %s", (3,)),
)


def statements(count: int) -> list[tuple[str, tuple[Any, ...]]]:
    found = []
    for k in range(count):
        template, params = TEMPLATES[k % len(TEMPLATES)]
        n = k // len(TEMPLATES) % TABLES
        found.append((template.format(t=f"t{n}", u=f"t{(n + 1) % TABLES}"), params))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    pg = LocalPostgres().start()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_advise")
        dsn = make_conninfo(pg.dsn, dbname="bench_advise")
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("CREATE EXTENSION hypopg")
            for n in range(TABLES):
                conn.execute(SCHEMA.format(n=n, rows=args.rows))
            conn.execute("ANALYZE")
            conn.execute("SELECT pg_stat_statements_reset()")
            work = statements(args.statements)
            for text, params in work:
                conn.execute(text, params)
        setup_s = time.perf_counter() - started

        with Session.open(dsn) as session:
            t0 = time.perf_counter()
            workload, since, end = advisor.server_workload(session, args.statements)
            fetch_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            review = advisor.review(
                session,
                workload,
                server="bench",
                window=(since, end),
                stats_source="pg_stat_statements",
            )
            review_s = time.perf_counter() - t0
            per: list[float] = []
            for w in workload:  # the same work again, one statement at a time
                t1 = time.perf_counter()
                advisor.advise_with(session, Statement(w.fingerprint, w.query, w.queryids), w.stats)
                per.append((time.perf_counter() - t1) * 1000)
    finally:
        pg.cleanup()

    advice = [i for a in review.statements for i in a.indexes]
    total_s = fetch_s + review_s
    per.sort()
    result = {
        "statements_run": len(work),
        "statements_reviewed": len(review.statements),
        "rows_per_table": args.rows,
        "tables": TABLES,
        "setup_s": round(setup_s, 2),
        "workload_fetch_s": round(fetch_s, 3),
        "review_s": round(review_s, 2),
        "total_s": round(total_s, 2),
        "ms_per_statement_mean": round(review_s * 1000 / max(len(review.statements), 1), 1),
        "ms_per_statement_median": round(statistics.median(per), 1) if per else None,
        "ms_per_statement_p95": round(per[int(len(per) * 0.95) - 1], 1) if per else None,
        "ms_per_statement_max": round(per[-1], 1) if per else None,
        "index_advice": len(advice),
        "verified": sum(1 for i in advice if i.verified),
        "brin": sum(1 for i in advice if getattr(i.candidate, "method", "") == "brin"),
        "partial": sum(1 for i in advice if getattr(i.candidate, "predicate", "")),
        "errors": sum(1 for a in review.statements if a.error),
        "target_s": TARGET_S,
        "pass": total_s < TARGET_S,
    }
    out = Path(__file__).resolve().parent / "results" / "advise.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
