"""Advisor depth (issue 17), families A: statements through a view, partitioned tables, CTEs
(inlined and MATERIALIZED) and ORDER BY ... LIMIT by ordinal or alias.

The cases live in tests/fixtures/advise/<family>.sql: a setup script (tables of 10^5 rows or
more, built with generate_series, and small twins), then ``-- case:`` blocks with the index the
statement needs (``-- proposes:``), an equivalent index (``-- existing:``), the same statement on
the small twin (``-- small:``) and, for partitioned tables, the partitions the plan reads
(``-- touches:``). One database, built once for the module, serves every case.

For each case against a real PostgreSQL with hypopg: the index is proposed and verified (the plan
uses the hypothetical index, its cost falls by half or more); it is not proposed when an
equivalent index exists; nothing is proposed for the small twin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pglast import ast, parse_sql
from pglast.stream import RawStream
from psycopg.conninfo import make_conninfo

from querywatch.advise import derived
from querywatch.advise.advisor import advise_statement
from querywatch.advise.candidates import candidates
from querywatch.advise.records import Advice, IndexAdvice
from querywatch.localpg import LocalPostgres

FIXTURES = Path(__file__).parent / "fixtures" / "advise"
FAMILIES = ("view", "partitioned", "cte", "order_alias")
EXISTING = "families_a_existing_idx"
_HEADER = re.compile(r"^-- (\w+): (.*)$")
_INDEX = re.compile(r"^(\S+) \((.*)\)$")


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    statement: str
    proposes: tuple[str, tuple[str, ...]] | None  # (table, keys); None: nothing to propose
    existing: str = ""
    small: str = ""
    touches: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def _index(text: str) -> tuple[str, tuple[str, ...]] | None:
    if text == "none":
        return None
    found = _INDEX.match(text)
    assert found, f"bad '-- proposes:' line {text!r}"
    return found[1], tuple(k.strip() for k in found[2].split(", "))


def load(family: str) -> tuple[str, list[Case]]:
    """A fixture file's setup script and its cases."""
    setup, *blocks = re.split(r"^-- case: ", (FIXTURES / f"{family}.sql").read_text(), flags=re.M)
    cases = []
    for block in blocks:
        name, _, body = block.partition("\n")
        headers: dict[str, str] = {}
        lines: list[str] = []
        for line in body.splitlines():
            header = _HEADER.match(line)
            if header and not lines:
                headers[header[1]] = header[2].strip()
            elif line.strip() and not line.startswith("--"):
                lines.append(line)
        cases.append(
            Case(
                family,
                name.strip(),
                "\n".join(lines).strip().rstrip(";"),
                _index(headers["proposes"]),
                headers.get("existing", ""),
                headers.get("small", ""),
                tuple(headers.get("touches", "").split()),
            )
        )
    return setup, cases


CASES = [case for family in FAMILIES for case in load(family)[1]]
PROPOSING = [c for c in CASES if c.proposes is not None]


def _ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


@pytest.fixture(scope="module")
def families_dsn(pg: LocalPostgres) -> str:
    """One database holding every family's schema and data."""
    name = "advise_families_a"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(pg.dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if pg.has_extension("hypopg"):
            conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        for family in FAMILIES:
            conn.execute(load(family)[0])
        conn.execute("ANALYZE")
    return dsn


def advise(dsn: str, text: str) -> Advice:
    advice = advise_statement(dsn, text)
    assert not advice.error, advice.error
    return advice


def proposal(advice: Advice, table: str, keys: tuple[str, ...]) -> IndexAdvice | None:
    found = [
        a for a in advice.indexes if a.candidate.table == table and a.candidate.key_texts == keys
    ]
    return found[0] if found else None


def _explain(advice: Advice) -> str:
    return "\n".join(
        [*(f"advice: {a.ddl} {a.verification}" for a in advice.indexes), *advice.notes]
    )


@pytest.mark.parametrize("case", PROPOSING, ids=_ids(PROPOSING))
def test_proposed_and_verified(
    families_dsn: str, require_hypopg: LocalPostgres, case: Case
) -> None:
    assert case.proposes is not None
    table, keys = case.proposes
    advice = advise(families_dsn, case.statement)
    fix = proposal(advice, table, keys)
    assert fix is not None, f"{table} ({', '.join(keys)}) not proposed:\n{_explain(advice)}"
    assert fix.verified and fix.verification.available and fix.verification.used
    assert fix.verification.cost_ratio >= 0.5, fix.verification
    assert fix.saving > 0 and not any(w.startswith("unverified") for w in fix.warnings)
    assert f" ON {table} ({', '.join(keys)});" in fix.ddl
    # No advice names a view, a CTE or a subquery, and hypopg refused nothing.
    tables = {a.candidate.table for a in advice.indexes}
    assert tables <= {t for t in derived.mentioned(case.statement)} | _base_tables(families_dsn)
    assert not any("hypopg refused" in n for n in advice.notes), advice.notes
    if case.family == "partitioned":
        assert fix.ddl.startswith("CREATE INDEX ") and "CONCURRENTLY" not in fix.ddl
        assert any("ON ONLY" in w for w in fix.warnings)
        detail = fix.verification.detail
        assert f"of the {len(case.touches)} partitions the plan reads" in detail, detail
        leaves = {f"events_2024_q{q}" for q in range(1, 5)}
        assert {p for p in leaves if p in detail} == set(case.touches), detail
    else:
        assert fix.ddl.startswith("CREATE INDEX CONCURRENTLY ")
    check = fix.verification
    print(
        f"\n{case.id}: {fix.ddl} cost {check.cost_before:,.0f} -> {check.cost_after:,.0f}"
        f" (-{check.cost_ratio:.1%}), saving {fix.saving:.1%} ({check.detail})"
    )


def _base_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
            "AND relnamespace = 'public'::regnamespace"
        ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("case", PROPOSING, ids=_ids(PROPOSING))
def test_not_proposed_when_an_equivalent_index_exists(
    families_dsn: str, require_hypopg: LocalPostgres, case: Case
) -> None:
    assert case.proposes is not None and case.existing.startswith("CREATE INDEX ON ")
    table, keys = case.proposes
    with psycopg.connect(families_dsn, autocommit=True) as conn:
        conn.execute(case.existing.replace("CREATE INDEX ON ", f"CREATE INDEX {EXISTING} ON ", 1))
        try:
            advice = advise(families_dsn, case.statement)
        finally:
            conn.execute(f"DROP INDEX {EXISTING}")
    assert proposal(advice, table, keys) is None, _explain(advice)
    assert not [a for a in advice.indexes if a.candidate.table == table], _explain(advice)
    said = [n for n in advice.notes if n.startswith(f"({', '.join(keys)}) on {table}: ")]
    assert said and ("already covers it" in said[0] or EXISTING in said[0]), advice.notes


@pytest.mark.parametrize("case", PROPOSING, ids=_ids(PROPOSING))
def test_not_proposed_on_a_small_table(
    families_dsn: str, require_hypopg: LocalPostgres, case: Case
) -> None:
    assert case.proposes is not None and case.small
    table, keys = case.proposes
    advice = advise(families_dsn, case.small)
    assert advice.indexes == (), _explain(advice)
    # It was the small base table that was judged (not a view name left unresolved).
    assert any(n.startswith(f"({', '.join(keys)}) on small_{table}: ") for n in advice.notes), (
        advice.notes
    )


NONE = [c for c in CASES if c.proposes is None]


@pytest.mark.parametrize("case", NONE, ids=_ids(NONE))
def test_no_index_serves_it(families_dsn: str, require_hypopg: LocalPostgres, case: Case) -> None:
    advice = advise(families_dsn, case.statement)
    assert advice.indexes == (), _explain(advice)


# -- the flattening itself (pure) -----------------------------------------------------------------
VIEWS = {
    "paid_orders": "SELECT orders.id, orders.customer_id AS buyer, orders.created_at "
    "FROM orders WHERE orders.status <> 'cancelled'::text;",
    "totals": "SELECT o.customer_id, sum(o.total) AS spent FROM orders o GROUP BY o.customer_id;",
}


def keys_of(text: str, columns: dict[str, tuple[str, ...]] | None = None) -> set[str]:
    return {f"{c.table} ({', '.join(c.key_texts)})" for c in candidates(text, columns, views=VIEWS)}


def _fixture_views() -> dict[str, str]:
    """The fixture's views, as pg_get_viewdef would give them (their SELECT)."""
    setup = "\n".join(load(f)[0] for f in FAMILIES)
    return {
        str(raw.stmt.view.relname): RawStream()(raw.stmt.query)
        for raw in parse_sql(setup)
        if isinstance(raw.stmt, ast.ViewStmt) and raw.stmt.view and raw.stmt.query
    }


def test_fixture_statements_name_base_tables_only() -> None:
    """Without a database: each fixture statement gives its expected candidate."""
    views = _fixture_views()
    columns = {"page_views": ("viewed_at", "path", "user_id")}
    for case in PROPOSING:
        assert case.proposes is not None
        found = {(c.table, c.key_texts) for c in candidates(case.statement, columns, views=views)}
        assert case.proposes in found, (case.id, found)


def test_view_pulled_up_with_its_own_predicate_and_renamed_column() -> None:
    assert keys_of("SELECT id FROM paid_orders p WHERE p.buyer = $1") == {"orders (customer_id)"}
    # a join with a table: the view's columns are still told apart from the table's
    assert "orders (customer_id)" in keys_of(
        "SELECT c.email FROM customers c JOIN paid_orders p ON p.buyer = c.id WHERE c.email = $1"
    )


def test_grouped_view_is_not_pulled_up_but_its_inside_still_counts() -> None:
    # sum() over a GROUP BY: the outer predicate filters groups, no index on "spent"
    assert keys_of("SELECT * FROM totals WHERE spent > $1") == set()
    assert keys_of("SELECT * FROM totals t WHERE t.customer_id = $1") == set()


def test_cte_read_twice_is_materialized_and_not_pulled_up() -> None:
    text = (
        "WITH p AS (SELECT * FROM payments WHERE paid_at > $1) "
        "SELECT * FROM p a JOIN p b ON a.account_id = b.account_id WHERE a.reference = $2"
    )
    assert keys_of(text) == {"payments (paid_at)"}
    inlined = "WITH p AS NOT MATERIALIZED (SELECT * FROM payments) SELECT * FROM p WHERE id = $1"
    assert keys_of(inlined) == {"payments (id)"}


def test_union_recursive_lateral_and_subquery_in_from() -> None:
    union = "SELECT id FROM a WHERE x = $1 UNION ALL SELECT id FROM b WHERE y = $2"
    assert keys_of(union) == {"a (x)", "b (y)"}
    recursive = (
        "WITH RECURSIVE t AS (SELECT id, parent_id FROM nodes WHERE id = $1 UNION ALL "
        "SELECT n.id, n.parent_id FROM nodes n JOIN t ON n.parent_id = t.id) SELECT * FROM t"
    )
    assert "nodes (id)" in keys_of(recursive)
    sub = "SELECT * FROM (SELECT * FROM orders WHERE status = $1) o ORDER BY o.created_at LIMIT 5"
    assert keys_of(sub) == {"orders (status)", "orders (status, created_at)"}
    lateral = (
        "SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id "
        "ORDER BY o.created_at DESC LIMIT 3) r WHERE u.email = $1"
    )
    assert "users (email)" in keys_of(lateral)


def test_ordinal_and_alias_resolution() -> None:
    assert keys_of("SELECT b, a FROM t ORDER BY 2 LIMIT 3") == {"t (a)"}
    assert keys_of("SELECT lower(name) AS n FROM t ORDER BY n LIMIT 3") == {"t (lower(name))"}
    # an ordinal past the select list, or * without known columns: nothing guessed
    assert keys_of("SELECT a FROM t ORDER BY 2 LIMIT 3") == set()
    assert keys_of("SELECT * FROM t ORDER BY 1 LIMIT 3") == set()
    assert keys_of("SELECT * FROM t ORDER BY 1 LIMIT 3", {"t": ("c", "d")}) == {"t (c)"}
    # mixed directions keep DESC on the key that has it
    assert keys_of("SELECT a, b FROM t ORDER BY 1 DESC, 2 LIMIT 3") == {"t (a DESC, b)"}


def test_plain_statements_are_left_as_they_are() -> None:
    stmt = parse_sql("SELECT a FROM t JOIN u ON u.id = t.u_id WHERE t.x = $1 ORDER BY t.y")[0].stmt
    assert derived.blocks(stmt, VIEWS, {}) == [stmt]


def test_derived_doctests() -> None:
    import doctest

    assert doctest.testmod(derived).failed == 0
