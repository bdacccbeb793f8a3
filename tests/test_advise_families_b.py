"""Advisor depth (issue 17, second half) against a real PostgreSQL with hypopg: a weaker index
already in use, IS NULL and rare values (partial or plain indexes), append-only time columns (BRIN
or B-tree), no index where none is needed, and N+1 only on evidence of many calls per transaction.

The cases are SQL fixtures (tests/fixtures/advise/*.sql): each says the index expected, an
equivalent index (with it, nothing is proposed) and a small table (nothing is proposed either).
One module-scoped database of 200,000-row tables serves every case.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MakePg, missing
from psycopg.conninfo import make_conninfo

from querywatch.advise import advisor, families, findings
from querywatch.advise.advisor import advise_statement
from querywatch.advise.records import Advice, IndexCandidate, IndexFact, KeyPart, QueryStats
from querywatch.advise.session import Session
from querywatch.localpg import LocalPostgres
from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher

FIXTURES = Path(__file__).parent / "fixtures" / "advise"
DEBIAN_PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")


@dataclass
class Case:
    name: str
    sql: str
    propose: str = ""
    existing: str = ""
    small: str = ""
    why: str = ""
    stats: QueryStats | None = None
    keys: dict[str, str] = field(default_factory=dict)


def load(name: str) -> list[Case]:
    """The cases of one fixture: ``-- key: value`` lines, then the statement (blank-line blocks)."""
    cases = []
    for block in re.split(r"\n\s*\n", (FIXTURES / name).read_text()):
        keys: dict[str, str] = {}
        body = []
        for line in block.strip().splitlines():
            found = re.match(r"--\s*(\w+):\s*(.*)$", line)
            if found:
                keys[found[1]] = found[2].strip()
            elif not line.startswith("--"):
                body.append(line)
        if "case" not in keys:
            continue
        stats = None
        if "stats" in keys:
            nums = dict(kv.split("=") for kv in keys["stats"].split())
            stats = QueryStats(
                float(nums["calls"]),
                float(nums["rows"]),
                float(nums["total_ms"]),
                float(nums["seconds"]),
            )
        cases.append(
            Case(
                keys["case"],
                " ".join(body).strip().rstrip(";"),
                keys.get("propose", ""),
                keys.get("existing", ""),
                keys.get("small", ""),
                keys.get("why", ""),
                stats,
                keys,
            )
        )
    assert cases, name
    return cases


@pytest.fixture(scope="module")
def dsn(pg: LocalPostgres) -> str:
    if not pg.has_extension("hypopg"):
        missing(f"hypopg is not installed for postgresql {pg.major_version}")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS advise_families_b")
        conn.execute("CREATE DATABASE advise_families_b")
    target = make_conninfo(pg.dsn, dbname="advise_families_b")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hypopg")
        conn.execute((FIXTURES / "families_b_schema.sql").read_text())
    return target


def advise(dsn: str, sql: str, stats: QueryStats | None = None) -> Advice:
    advice = advise_statement(dsn, sql, 10.0, stats=stats)
    assert advice.error == "", advice.error
    return advice


def small_variant(case: Case) -> str:
    big = "jobs" if case.small == "small_jobs" else r"events(?:_shuffled)?"
    return re.sub(rf"\b{big}\b", case.small, case.sql)


def check_family(dsn: str, fixture: str) -> list[str]:
    """Each case: proposed (exactly), verified with hypopg (the hypothetical index in the plan,
    cost down), and not proposed with an equivalent index in place or on a small table."""
    rows = []
    for case in load(fixture):
        advice = advise(dsn, case.sql, case.stats)
        ddls = [i.ddl for i in advice.indexes]
        assert case.propose in ddls, (case.name, ddls, advice.notes)
        [fix] = [i for i in advice.indexes if i.ddl == case.propose]
        assert fix.verified and fix.verification.used, (case.name, fix.verification)
        least = families.min_cost_ratio(fix.candidate, 0.5)
        assert fix.verification.cost_ratio >= least, (case.name, fix.verification)
        method = fix.candidate.method
        assert re.search(rf">{method}_", fix.verification.detail), fix.verification.detail
        assert 0 < fix.saving <= 1 and fix.evidence, case.name

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(case.existing)
            conn.execute("ANALYZE")
            try:
                again = advise(dsn, case.sql, case.stats)
            finally:
                name = case.existing.split()[2 if " INDEX " in case.existing else 3]
                conn.execute(f"DROP INDEX {name}")
        assert again.indexes == () or all(
            i.candidate.table != fix.candidate.table for i in again.indexes
        ), (case.name, [i.ddl for i in again.indexes], again.notes)
        assert any("already" in n for n in again.notes), (case.name, again.notes)

        small = advise(dsn, small_variant(case), case.stats)
        assert small.indexes == (), (case.name, [i.ddl for i in small.indexes])
        assert any("small table" in n for n in small.notes), (case.name, small.notes)
        rows.append(f"{case.name}: {fix.ddl} -{fix.verification.cost_ratio:.0%} planner")
    print("\n" + "\n".join(rows))
    return rows


def test_weaker_index_in_use_gets_the_composite(dsn: str) -> None:
    [first, *_] = load("weaker_index.sql")
    before = advise(dsn, first.sql)
    assert before.summary is not None
    assert any("events_tenant_id_idx" in n for n in before.summary.nodes)  # the weaker index
    assert len(check_family(dsn, "weaker_index.sql")) == 3
    [fix] = [i for i in advise(dsn, first.sql).indexes if i.candidate.table == "events"]
    assert any("through events_tenant_id_idx now" in e for e in fix.evidence)


def test_is_null_and_rare_values_get_partial_or_plain_indexes(dsn: str) -> None:
    assert len(check_family(dsn, "rare_values.sql")) == 4
    by_param = load("rare_values.sql")[3]
    [fix] = advise(dsn, by_param.sql, by_param.stats).indexes
    assert any("values queried for status are rare" in e for e in fix.evidence)
    assert any("status = 'failed' holds" in e or "'pending' holds" in e for e in fix.evidence)
    # Without rows per call the generic plan (1/3 of the rows per value) rejects it.
    bare = advise(dsn, by_param.sql)
    assert bare.indexes == () and any("rejected by hypopg" in n for n in bare.notes)


def test_append_only_time_column_gets_brin_when_ordered_and_large(dsn: str) -> None:
    assert len(check_family(dsn, "time_columns.sql")) == 3
    brin, shuffled, ordered = load("time_columns.sql")
    [fix] = advise(dsn, brin.sql, brin.stats).indexes
    assert any(
        e.startswith("BRIN: pg_stats correlation of created_at is 1.00") for e in fix.evidence
    )
    assert fix.basis == "brin_pages" and fix.saving > 0.9
    [other] = advise(dsn, shuffled.sql).indexes
    assert any(e.startswith("B-tree: correlation") for e in other.evidence)
    [order] = advise(dsn, ordered.sql).indexes
    assert any("which a BRIN index cannot give" in e for e in order.evidence)


def pages_read(conn: psycopg.Connection[Any], sql: str) -> int:
    [[plan]] = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").fetchall()
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def test_brin_advice_holds_on_a_real_index(dsn: str) -> None:
    """The BRIN saving is an estimate from block ranges: a real BRIN index reads that few pages."""
    [brin, *_] = load("time_columns.sql")
    [fix] = advise(dsn, brin.sql, brin.stats).indexes
    with psycopg.connect(dsn, autocommit=True) as conn:
        [[since]] = conn.execute(
            "SELECT (max(created_at) - interval '5 hours')::text FROM events"
        ).fetchall()
        recent = f"SELECT id, kind FROM events WHERE created_at >= '{since}'"  # the newest 1%
        conn.execute("SET max_parallel_workers_per_gather = 0")
        before = pages_read(conn, recent)
        conn.execute(fix.ddl)
        try:
            conn.execute("SET enable_seqscan = off")
            after = pages_read(conn, recent)
        finally:
            conn.execute(f"DROP INDEX {fix.name}")
    print(f"\nBRIN: {before:,} pages -> {after:,} pages (estimated -{fix.saving:.1%})")
    assert after * 5 < before


def test_statements_that_need_no_index_get_none(dsn: str) -> None:
    cases = load("no_index_b.sql")
    assert len(cases) == 7
    for case in cases:
        advice = advise(dsn, case.sql, case.stats)
        assert advice.indexes == (), (case.name, [i.ddl for i in advice.indexes])
        assert any(case.why in n for n in advice.notes), (case.name, advice.notes)
    # The write-heavy statement gets its index once it runs enough to pay for the upkeep.
    heavy = cases[-1]
    busy = QueryStats(calls=300_000, rows=600_000, total_ms=2_000_000, seconds=600)
    [fix] = advise(dsn, heavy.sql, busy).indexes
    assert fix.write_heavy and any("write-heavy" in w for w in fix.warnings)


# -- pure parts ------------------------------------------------------------------------------------
def test_substitute_renumbers_later_parameters() -> None:
    text = "SELECT * FROM t WHERE a = $1 AND b = $2 AND c < $3 AND d = $12"
    assert (
        families.substitute(text, 2, "'x'")
        == "SELECT * FROM t WHERE a = $1 AND b = 'x' AND c < $2 AND d = $11"
    )


def test_partial_candidates_and_existing_indexes() -> None:
    part = IndexCandidate(
        None, "jobs", (KeyPart("queue", "queue", "equality"),), "", "finished_at IS NULL"
    )
    same = IndexFact(
        "public", "jobs", "p", ("queue",), partial=True, predicate="(finished_at IS NULL)"
    )
    other = IndexFact(
        "public", "jobs", "o", ("queue",), partial=True, predicate="status = 'x'::text"
    )
    plain_one = IndexFact("public", "jobs", "q", ("queue",))
    plain_both = IndexFact("public", "jobs", "qf", ("finished_at", "queue"))
    assert families.covered_partial(part, [same]) == "p"
    assert families.covered_partial(part, [other, plain_one]) is None
    assert families.covered_partial(part, [plain_both]) == "qf"


def test_array_text_of_pg_stats() -> None:
    assert families._array_items('{done,"a b","x\\"y",NULL}') == ("done", "a b", 'x"y', "NULL")
    assert families._array_items(None) == ()


# -- n_plus_one ------------------------------------------------------------------------------------
def pgbench(server: LocalPostgres, *args: str) -> subprocess.CompletedProcess[str]:
    binary = server.bindir / "pgbench"
    if not binary.exists():
        binary = DEBIAN_PGBENCH if DEBIAN_PGBENCH.exists() else Path(shutil.which("pgbench") or "")
    if not binary.name:
        missing("pgbench is not installed (apt-get install postgresql-15)")
    conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    return subprocess.run(
        [str(binary), *conn, *args, "postgres"],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def private(make_pg: MakePg) -> Iterator[LocalPostgres]:
    """A server of its own: pg_stat_statements' window starts with it."""
    yield make_pg()


def n_plus_one_of(review: list[Advice]) -> dict[str, bool]:
    return {a.query: any(f.rule == "n_plus_one" for f in a.findings) for a in review}


def test_tpcb_raises_no_n_plus_one(private: LocalPostgres, tmp_path: Path) -> None:
    pgbench(private, "-i", "-s", "1", "-q")
    with psycopg.connect(private.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    source = PostgresSource(private.dsn)
    source.connect()
    store = Store(tmp_path / "qw.db")
    watcher = Watcher(source, store, "tpcb", interval_s=1.0)
    watcher.start()
    pgbench(private, "-c", "2", "-j", "2", "-T", "6")
    watcher.collect_once()
    source.close()
    with Session.open(private.dsn) as session:
        loads, _, _ = advisor.server_workload(session, 20)
        review = [advisor.advise_with(session, advisor._statement(w.query), w.stats) for w in loads]
    [update] = [w for w in loads if w.query.startswith("UPDATE pgbench_branches")]
    assert update.stats.xacts and update.stats.calls >= findings.N_PLUS_ONE_CALLS
    assert update.stats.calls_per_s >= findings.N_PLUS_ONE_RATE
    per_xact = update.stats.calls_per_xact
    assert per_xact is not None and 0.5 < per_xact < 1.5, per_xact
    # The rate alone would have cried wolf: without the transactions it is flagged.
    assert findings.n_plus_one({}, replace(update.stats, xacts=None))
    flagged = n_plus_one_of(review)
    assert len([q for q in flagged if q.startswith(("UPDATE", "SELECT", "INSERT"))]) >= 4
    assert not any(flagged.values()), flagged

    # The same from querywatch's store: the interval's transactions come with its deltas.
    with store:
        [server] = store.servers()
        stored = advisor.store_workload(store, server.id, 0, time.time() + 10, 20)
    [branches] = [w for w in stored if w.query.startswith("UPDATE pgbench_branches")]
    assert branches.stats.calls >= findings.N_PLUS_ONE_CALLS and branches.stats.xacts
    assert 0.5 < (branches.stats.calls_per_xact or 0) < 1.5, branches.stats
    assert findings.n_plus_one({}, replace(branches.stats, xacts=None))
    assert not any(findings.n_plus_one({}, w.stats) for w in stored)


def test_a_loop_of_twenty_lookups_per_transaction_is_n_plus_one(private: LocalPostgres) -> None:
    with psycopg.connect(private.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS loop20")
        conn.execute("CREATE DATABASE loop20")
    dsn = make_conninfo(private.dsn, dbname="loop20")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE EXTENSION pg_stat_statements;"
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100000) g;"
            "ANALYZE items"
        )
        conn.execute("SELECT pg_stat_statements_reset()")
        for order in range(60):
            with conn.transaction():
                conn.execute("SELECT id FROM items WHERE id = %s", (order,))
                for line in range(20):
                    conn.execute("SELECT name FROM items WHERE id = %s", (order * 20 + line + 1,))
    with Session.open(dsn) as session:
        loads, _, _ = advisor.server_workload(session, 10)
        review = [advisor.advise_with(session, advisor._statement(w.query), w.stats) for w in loads]
    flagged = n_plus_one_of(review)
    [loop] = [w for w in loads if "SELECT name FROM items" in w.query]
    [once] = [w for w in loads if "SELECT id FROM items" in w.query]
    assert loop.stats.calls == 1200 and loop.stats.calls_per_xact is not None
    assert loop.stats.calls_per_xact >= 15, loop.stats.calls_per_xact
    assert flagged[loop.query] is True
    assert flagged[once.query] is False
    [finding] = [
        f for a in review if a.query == loop.query for f in a.findings if f.rule == "n_plus_one"
    ]
    assert any("calls per transaction" in e for e in finding.evidence)


def test_n_plus_one_needs_many_calls_per_transaction() -> None:
    """The rule on its own: the same rate and one row per call, judged by calls per transaction."""
    busy = QueryStats(calls=60_000, rows=60_000, total_ms=1_800, seconds=60)
    assert findings.n_plus_one({}, busy)  # no transaction figures: the rate rule as before
    assert findings.n_plus_one({}, replace(busy, xacts=60_000)) == []  # once per transaction
    assert findings.n_plus_one({}, replace(busy, xacts=30_000)) == []  # twice
    [loop] = findings.n_plus_one({}, replace(busy, xacts=3_000))  # 20 per transaction
    assert "pg_stat_database: 20.0 calls per transaction (3,000 transactions)" in loop.evidence


def test_a_partial_index_through_a_view_is_planned_on_the_flattened_statement(dsn: str) -> None:
    """hypopg issue #116: a partial hypothetical index planned through a view can crash the
    backend; a partial candidate is planned only on the statement flattened to its base table."""
    from querywatch.advise import indexes

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE VIEW open_jobs_v AS SELECT id, queue, finished_at FROM jobs"
        )
    text = "SELECT id, queue FROM open_jobs_v WHERE finished_at IS NULL"
    partial = IndexCandidate(
        None,
        "jobs",
        (KeyPart("finished_at", "finished_at", "equality"),),
        "test",
        predicate="finished_at IS NULL",
    )
    views = {"open_jobs_v": "SELECT id, queue, finished_at FROM jobs"}
    with Session.open(dsn) as session:
        ctx = indexes._Context({}, (), {}, views=views)
        flat = indexes._without_views(session, text, partial, ctx)
        assert isinstance(flat, tuple), flat
        assert "FROM jobs AS" in flat[0] and flat[1] > 0
        unflattenable = indexes._Context({}, (), {}, views={"other_v": "SELECT 1"})
        refused = indexes._without_views(
            session, "SELECT * FROM other_v, LATERAL (SELECT 1) x", partial, unflattenable
        )
        assert isinstance(refused, str) and "not verified" in refused
