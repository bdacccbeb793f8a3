"""The open-model load test: rate kept, queueing visible, a fix proven, parameters found, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from querywatch.errors import InputError
from querywatch.loadtest import compare_text, from_json, run_loadtest, to_json, to_text
from querywatch.loadtest.params import param_sources, read_params, sample_params

USERS = 20_000
LOOKUP = "SELECT id FROM lt_users WHERE lower(email) = $1"


@pytest.fixture(scope="module")
def users(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS lt_users")
        c.execute("CREATE TABLE lt_users (id int PRIMARY KEY, email text NOT NULL, team int)")
        c.execute(
            "INSERT INTO lt_users SELECT g, 'User' || g || '@Example.com', g %% 10 "
            "FROM generate_series(1, %s) g",
            (USERS,),
        )
        c.execute("ANALYZE lt_users")
    return pg_dsn


def test_unindexed_vs_indexed_lookup_at_200_per_s_for_10_s(users: str) -> None:
    before = run_loadtest(users, LOOKUP, rate=200, duration_s=10, concurrency=4, sample=True)
    with psycopg.connect(users, autocommit=True) as c:
        c.execute("CREATE INDEX lt_users_lower_email ON lt_users (lower(email))")
    try:
        after = run_loadtest(users, LOOKUP, rate=200, duration_s=10, concurrency=4, sample=True)
    finally:
        with psycopg.connect(users, autocommit=True) as c:
            c.execute("DROP INDEX lt_users_lower_email")
    for result in (before, after):
        assert result.errors == 0 and result.unfinished == 0
        assert result.due == 2000
        assert abs(result.achieved_rate - 200) / 200 <= 0.02, to_text(result)
        assert result.db_calls is not None and result.db_calls >= 2000
    assert before.db_mean_ms is not None and after.db_mean_ms is not None
    assert before.db_mean_ms > 10 * after.db_mean_ms, (before.db_mean_ms, after.db_mean_ms)
    assert before.latency.p50_ms > 2 * after.latency.p50_ms
    table = compare_text(before, after)
    db_row = next(line for line in table.splitlines() if line.startswith("DB ms per call"))
    assert "x better" in db_row
    factor = float(db_row.split()[-2].rstrip("x"))
    assert factor > 10


def test_latency_includes_queueing_when_the_database_cannot_keep_up(pg_dsn: str) -> None:
    # two connections running 20 ms statements serve 100/s at most; 200/s arrive for 3 s
    result = run_loadtest(
        pg_dsn, "SELECT pg_sleep(0.02)", rate=200, duration_s=3, concurrency=2, drain_s=1.0
    )
    assert result.errors == 0
    assert result.achieved_rate < 0.6 * 200, to_text(result)
    # the backlog grows by ~100 requests/s: the median request waited far longer than 20 ms
    assert result.latency.p50_ms > 300, to_text(result)
    assert result.latency.max_ms > 1500, to_text(result)
    assert result.unfinished > 0 and result.completed + result.unfinished == result.due


def test_result_json_round_trip(pg_dsn: str, tmp_path: Path) -> None:
    result = run_loadtest(pg_dsn, "SELECT 1", rate=50, duration_s=1, concurrency=1)
    again = from_json(json.loads(json.dumps(to_json(result))))
    assert again.latency == result.latency and again.completed == result.completed
    assert again.histogram and again.db_calls == result.db_calls
    assert result.db_calls is not None and result.db_calls >= 50


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "SELECT * FROM shop.orders o WHERE lower(o.email) = $1 LIMIT $2",
            [(1, "shop.orders", "o", "lower(o.email)"), (2, "", "", "10")],
        ),
        (
            "SELECT o.id FROM orders o JOIN items i ON i.order_id = o.id "
            "WHERE i.sku IN ($1, $2) AND $3 = o.customer_id OFFSET $4",
            [
                (1, "items", "i", "i.sku"),
                (2, "items", "i", "i.sku"),
                (3, "orders", "o", "o.customer_id"),
                (4, "", "", "0"),
            ],
        ),
        ("SELECT id FROM users WHERE email = $1", [(1, "users", "users", "email")]),
        (
            "UPDATE users SET team = $1 WHERE id = $2",
            [(1, "users", "users", "users.team"), (2, "users", "users", "id")],
        ),
        (
            "INSERT INTO users (id, email) VALUES ($1, $2)",
            [(1, "users", "users", "users.id"), (2, "users", "users", "users.email")],
        ),
        ("SELECT 1", []),
    ],
)
def test_param_sources(query: str, expected: list[tuple[Any, ...]]) -> None:
    found = [(s.number, s.table, s.alias, s.expression) for s in param_sources(query)]
    assert found == expected


@pytest.mark.parametrize(
    "query",
    ["SELECT $1::int", "SELECT * FROM a, b WHERE x = $1", "SELECT 1; SELECT 2", "SELEC nope"],
)
def test_param_sources_refuses_what_it_cannot_trace(query: str) -> None:
    with pytest.raises(InputError):
        param_sources(query)


def test_sample_params_reads_real_values(users: str) -> None:
    query = "SELECT id FROM lt_users u WHERE lower(u.email) = $1 AND u.team = $2 LIMIT $3"
    with psycopg.connect(users, autocommit=True) as c:
        rows = sample_params(c, query, rows=50)
        assert len(rows) == 50
        for email, team, limit in rows[:10]:
            assert limit == 10
            found = c.execute(
                "SELECT count(*) FROM lt_users WHERE lower(email) = %s AND team = %s",
                (email, team),
            ).fetchone()
            assert found is not None and found[0] == 1  # values of one row stay together


@pytest.mark.parametrize(
    ("name", "content", "rows"),
    [
        ("p.json", '[[1, "a"], [2, "b"]]', [(1, "a"), (2, "b")]),
        ("p.json", "[7, 8]", [(7,), (8,)]),
        ("p.jsonl", "[1]\n\n[2]\n", [(1,), (2,)]),
        ("p.csv", "1,x\n2,y\n", [("1", "x"), ("2", "y")]),
    ],
)
def test_read_params(tmp_path: Path, name: str, content: str, rows: list[tuple[Any, ...]]) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert read_params(path) == rows


def test_read_params_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="is not valid"):
        read_params(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_params(tmp_path / "missing.json")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querywatch", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_saves_and_compares(users: str, tmp_path: Path) -> None:
    sql_file = tmp_path / "lookup.sql"
    sql_file.write_text("SELECT team FROM lt_users WHERE id = $1;\n")
    saved = tmp_path / "before.json"
    common = ("--dsn", users, "--sql", str(sql_file), "--rate", "40", "--duration", "1s")
    first = _cli(*common, "--sample-params", "--output", str(saved))
    assert first.returncode == 0, first.stderr
    assert "achieved" in first.stdout and "p99" in first.stdout
    assert json.loads(saved.read_text())["due"] == 40
    params = tmp_path / "ids.json"
    params.write_text("[[1], [2], [3]]")
    second = _cli(*common, "--params", str(params), "--compare", str(saved), "--format", "json")
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["before"]["due"] == 40 and doc["after"]["completed"] == 40
    third = _cli(*common, "--params", str(params), "--compare", str(saved))
    assert "before" in third.stdout and "p95 ms" in third.stdout


def test_cli_needs_exactly_one_statement_source(users: str) -> None:
    result = _cli("--dsn", users, "--rate", "1", "--duration", "1s")
    assert result.returncode == 2
    assert "exactly one of --fingerprint or --sql" in result.stderr


def test_a_statement_with_placeholders_needs_parameters(users: str, tmp_path: Path) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT 1 FROM lt_users WHERE id = $1")
    result = _cli("--dsn", users, "--sql", str(sql_file), "--rate", "1", "--duration", "1s")
    assert result.returncode == 2
    assert "--sample-params" in result.stderr
