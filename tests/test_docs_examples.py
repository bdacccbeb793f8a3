"""The SQL examples of docs/queries/*.md run against a real PostgreSQL, so their plans stay true.

A fenced ``sql`` block preceded by an HTML comment ``<!-- example: NAME ROLE [key=value ...] -->``
belongs to the example NAME of its page; the blocks run in page order, in a database of the page's
own on a private server:

* ``setup``: executed (tables, rows, ANALYZE); ``fix``: executed (the DDL the page recommends);
* ``params``: a SELECT whose rows are the parameters of the next ``before``/``after`` block, which
  then runs once per row (the application's loop), ``batch=N`` rows per transaction;
* ``baseline``: the statement as the CI gate's committed baseline records it (calls = its runs);
* ``before``: ``finding=RULE`` must be among the advisor's findings (``querywatch advise`` and
  ``explain``: :func:`querywatch.advise.advisor.advise_statement`, with pg_stat_statements' figures
  as ``querywatch advise`` reads them when the block ran in a loop); ``gate=RULE`` must be among the
  CI gate's violations against the ``baseline`` blocks; ``analyze`` asks for an EXPLAIN ANALYZE plan;
* ``after``: the same finding or gate rule must be gone; ``faster=N``: it runs at least N times
  faster than the example's ``before`` block did (measured when each ran, before and after the fix).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MakePg

from querywatch.advise import advisor, findings
from querywatch.advise.records import QueryStats
from querywatch.advise.session import Session
from querywatch.fingerprint import shape
from querywatch.gate.baseline import Budget, Capture, StatementRecord
from querywatch.gate.plans import Explainer
from querywatch.gate.rules import RuleName, check_test
from querywatch.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "queries"
SQL_BLOCK = re.compile(r"```sql\n(.*?)\n```", re.DOTALL)
# what a reader runs to look (catalog queries); statements that act (end a session, drop a slot,
# resume replay) or that hold a placeholder to fill in are not run here
LOOKS = re.compile(r"(SELECT|SHOW|WITH)\b", re.IGNORECASE)
ACTS = re.compile(
    r"pg_(terminate|cancel)_backend|pg_drop_replication_slot|pg_wal_replay_|pg_reload_conf"
    r"|<\w[^>]*>|\$\d"
    r"|pg_is_wal_replay_paused",  # answers on a replica only; the test's server is a primary
)
MARKER = re.compile(
    r"<!-- example: (?P<name>[\w-]+) (?P<role>\w+)(?P<keys>(?: [\w=.]+)*) -->\s*\n"
    r"```sql\n(?P<sql>.*?)\n```",
    re.DOTALL,
)
ROLES = {"setup", "fix", "params", "baseline", "before", "after"}
TEST_ID = "tests/test_app.py::test_page"  # the gate's test id for every example
RUNS = 5  # timed runs of a statement (the median counts), after one warm-up


@dataclass(frozen=True)
class Block:
    name: str
    role: str
    keys: dict[str, str]
    sql: str


@dataclass
class Example:
    """What one example saw so far on its page."""

    baseline: dict[str, StatementRecord] = field(default_factory=dict)
    before_s: float | None = None
    checked: dict[str, str] = field(default_factory=dict)  # "finding"/"gate" -> rule


def blocks(text: str) -> list[Block]:
    found = []
    for m in MARKER.finditer(text):
        keys = {k: v for k, _, v in (item.partition("=") for item in m["keys"].split())}
        found.append(Block(m["name"], m["role"], keys, m["sql"].strip()))
    return found


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if blocks(p.read_text(encoding="utf-8")))


def statements(sql: str) -> list[str]:
    """A block's statements, split at a semicolon that ends a line."""
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]


def single(sql: str) -> str:
    found = statements(sql)
    assert len(found) == 1, f"a before/after/baseline block holds one statement: {sql!r}"
    return found[0]


def psycopg_text(query: str) -> str:
    """$1, $2 ... as psycopg's placeholders (they are numbered in order in the examples)."""
    return re.sub(r"\$\d+", "%s", query.replace("%", "%%"))


@pytest.fixture(scope="module")
def server(make_pg: MakePg) -> LocalPostgres:
    """A private server: the examples reset pg_stat_statements, as nothing else may."""
    return make_pg()


@pytest.fixture
def page_dsn(server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "docs_" + re.sub(r"\W", "_", request.node.callspec.id)
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = server.dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    yield dsn


def run_loop(
    conn: psycopg.Connection[Any], query: str, rows: list[tuple[Any, ...]], batch: int
) -> float:
    """``query`` once per parameter row, ``batch`` rows per transaction; the wall time."""
    text = psycopg_text(query)
    started = time.perf_counter()
    for at in range(0, len(rows), batch):
        with conn.transaction(), conn.cursor() as cur:
            for row in rows[at : at + batch]:
                cur.execute(text, row)
                cur.fetchall()
    return time.perf_counter() - started


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """This session's transaction counts into pg_stat_database now (PostgreSQL 15+ flushes them
    once a second at most), so that the calls per transaction the advisor reads are the loop's."""
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.1)  # 14 and older: the stats collector's reporting delay


def timed(conn: psycopg.Connection[Any], query: str) -> float:
    """The median wall time of RUNS executions (after one warm-up)."""
    times = []
    for n in range(RUNS + 1):
        started = time.perf_counter()
        conn.execute(query).fetchall()
        if n:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def loop_stats(dsn: str, query: str) -> QueryStats:
    """What `querywatch advise` reads for the statement: pg_stat_statements and pg_stat_database."""
    wanted = shape(query).fingerprint
    with Session.open(dsn) as session:
        workload, _, _ = advisor.server_workload(session, 50)
    found = [w.stats for w in workload if w.fingerprint == wanted]
    assert found, f"pg_stat_statements has no entry for {query!r}"
    return found[0]


def gate_violations(dsn: str, example: Example, query: str, calls: int) -> set[str]:
    explainer = Explainer(Budget().large_rows)
    try:
        plan = explainer.plan(dsn, query)
    finally:
        explainer.close()
    fp = shape(query).fingerprint
    capture = Capture({fp: StatementRecord(fp, query, plan, {TEST_ID: calls})})
    baseline = Capture(dict(example.baseline))
    return {v.rule.value for v in check_test(baseline, capture, TEST_ID)}


def judge(
    dsn: str, conn: psycopg.Connection[Any], block: Block, example: Example, rows: list[Any] | None
) -> None:
    query = single(block.sql)
    if rows is not None:
        conn.execute("SELECT pg_stat_statements_reset()")  # a private server: see `server`
        conn.execute("SELECT pg_stat_reset()")
        seconds = run_loop(conn, query, rows, int(block.keys.get("batch", len(rows) or 1)))
        flush_stats(conn)
        stats: QueryStats | None = loop_stats(dsn, query)
    else:
        seconds, stats = timed(conn, query), None
    finding = block.keys.get("finding") or (
        example.checked.get("finding") if block.role == "after" else None
    )
    if finding:
        advice = advisor.advise_statement(
            dsn, query, stats=stats, analyze="analyze" in block.keys, timeout_ms=20_000
        )
        assert not advice.error, advice.error
        rules = {f.rule for f in advice.findings}
        if block.role == "before":
            assert finding in rules, f"{block.name}: {finding} not in {sorted(rules)}: {query}"
            example.checked["finding"] = finding
        else:
            assert finding not in rules, f"{block.name}: {finding} still found: {query}"
    gate = block.keys.get("gate") or (
        example.checked.get("gate") if block.role == "after" else None
    )
    if gate:
        found = gate_violations(dsn, example, query, len(rows) if rows is not None else 1)
        if block.role == "before":
            assert gate in found, f"{block.name}: gate {gate} not in {sorted(found)}: {query}"
            example.checked["gate"] = gate
        else:
            assert gate not in found, f"{block.name}: gate {gate} still fails: {query}"
    if block.role == "before":
        example.before_s = seconds
    elif "faster" in block.keys:
        assert example.before_s is not None, f"{block.name}: faster= needs a before block"
        ratio = example.before_s / seconds
        factor = float(block.keys["faster"])
        assert ratio >= factor, (
            f"{block.name}: only {ratio:.1f}x faster, the page claims {factor:g}x"
        )


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.stem)
def test_page_examples(page: Path, page_dsn: str) -> None:
    examples: dict[str, Example] = {}
    rows: list[Any] | None = None
    with psycopg.connect(page_dsn, autocommit=True) as conn:
        for block in blocks(page.read_text(encoding="utf-8")):
            assert block.role in ROLES, f"{page.name}: unknown role {block.role!r}"
            example = examples.setdefault(block.name, Example())
            if block.role in {"setup", "fix"}:
                for statement in statements(block.sql):
                    conn.execute(statement)
            elif block.role == "params":
                rows = conn.execute(single(block.sql)).fetchall()
            elif block.role == "baseline":
                query = single(block.sql)
                explainer = Explainer(Budget().large_rows)
                try:
                    plan = explainer.plan(page_dsn, query)
                finally:
                    explainer.close()
                fp = shape(query).fingerprint
                calls = int(block.keys.get("calls", "1"))
                example.baseline[fp] = StatementRecord(fp, query, plan, {TEST_ID: calls})
            else:
                judge(page_dsn, conn, block, example, rows)
                rows = None
    for name, example in examples.items():
        assert example.checked or example.before_s is not None, (
            f"{page.name}: {name} checks nothing"
        )


def test_every_finding_and_gate_rule_has_an_example() -> None:
    """Each plan finding and CI-gate rule the code has gets a before/after example."""
    wanted = {f"finding={rule.__name__}" for rule in findings.RULES}
    wanted |= {f"gate={rule.value}" for rule in RuleName}
    shown = {
        f"{key}={value}"
        for page in pages()
        for block in blocks(page.read_text(encoding="utf-8"))
        if block.role == "before"
        for key, value in block.keys.items()
        if key in {"finding", "gate"}
    }
    assert sorted(wanted - shown) == []


def catalog_queries() -> list[tuple[str, str]]:
    """(page, statement) of every read-only query the reference pages and the install page give."""
    found = []
    for page in [
        *sorted((ROOT / "docs" / "reference").glob("*/*.md")),
        ROOT / "docs" / "install.md",
    ]:
        for body in SQL_BLOCK.findall(page.read_text(encoding="utf-8")):
            if re.search(r"^\s*BEGIN\b", body, re.MULTILINE | re.IGNORECASE):
                continue  # a recipe around an application statement, not a look at the server
            lines = [line.split("--")[0] for line in body.splitlines()]
            found += [
                (page.name, s)
                for s in statements("\n".join(lines))
                if LOOKS.match(s) and not ACTS.search(s)
            ]
    return found


def test_reference_catalog_queries_run(server: LocalPostgres) -> None:
    """Every read-only query the reference pages tell a reader to run is valid SQL on a server
    with pg_stat_statements (catalog names, columns, functions)."""
    queries = catalog_queries()
    assert len(queries) >= 15
    failed = []
    dsn = server.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for page, query in queries:
            try:
                conn.execute(query).fetchall()
            except psycopg.Error as exc:
                failed.append(f"{page}: {query[:80]}: {str(exc).splitlines()[0]}")
    assert failed == []
