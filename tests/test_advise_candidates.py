"""Index candidates from parse trees, names and DDL, duplicate detection, savings, health
checks and the report renderers (all pure)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from querywatch.advise import candidates as cands
from querywatch.advise import health, releases, report, savings
from querywatch.advise.records import (
    Advice,
    HealthFinding,
    IndexAdvice,
    IndexCandidate,
    IndexFact,
    KeyPart,
    QueryStats,
    Review,
    Severity,
    TableFact,
    Verification,
)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT id FROM users WHERE lower(email) = $1", [("lower(email)",)]),
        ("SELECT * FROM t WHERE a = $1 AND b BETWEEN $2 AND $3", [("a", "b")]),
        ("SELECT * FROM t WHERE b > $1 AND a = $2", [("a", "b")]),
        ("SELECT * FROM t WHERE a IN ($1, $2, $3)", [("a",)]),
        ("SELECT * FROM t WHERE created_at::date = $1", [("(created_at)::date",)]),
        ("SELECT * FROM t WHERE a = $1 OR b = $2", []),  # OR: no single index key
        ("SELECT * FROM t WHERE a = b", []),  # two columns of one table is no lookup
        (
            "SELECT * FROM orders WHERE status = $1 ORDER BY created_at DESC LIMIT $2",
            [("status",), ("status", "created_at")],
        ),
        ("SELECT * FROM orders ORDER BY a, b DESC LIMIT 3", [("a", "b DESC")]),
        ("UPDATE accounts SET note = $1 WHERE lower(note) = $2", [("lower(note)",)]),
        ("DELETE FROM sessions WHERE expires_at < now()", [("expires_at",)]),
        ("SELECT 1", []),
        ("not sql at all", []),
    ],
)
def test_candidates(sql: str, expected: list[tuple[str, ...]]) -> None:
    assert [c.key_texts for c in cands.candidates(sql)] == expected


def test_join_keys_and_qualified_columns() -> None:
    sql = (
        "SELECT o.id FROM users u JOIN orders o ON o.user_id = u.id "
        "WHERE lower(u.email) = $1 AND o.status = $2"
    )
    found = {(c.table, c.key_texts) for c in cands.candidates(sql)}
    assert ("users", ("lower(email)",)) in found
    assert ("orders", ("status",)) in found
    assert ("orders", ("user_id", "status")) in found  # the inner side of a nested loop


def test_unqualified_columns_are_placed_with_the_catalog() -> None:
    sql = "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE status = $1"
    assert [c.table for c in cands.candidates(sql) if "status" in c.key_texts] == []
    columns = {"orders": frozenset({"id", "user_id", "status"}), "users": frozenset({"id"})}
    placed = [c for c in cands.candidates(sql, columns) if c.key_texts == ("status",)]
    assert [c.table for c in placed] == ["orders"]


def test_most_selective_equality_column_first() -> None:
    sql = "SELECT * FROM t WHERE kind = $1 AND account = $2"
    assert cands.candidates(sql)[0].key_texts == ("kind", "account")
    distinct = {("t", "kind"): 3.0, ("t", "account"): 90_000.0}
    assert cands.candidates(sql, distinct=distinct)[0].key_texts == ("account", "kind")


@pytest.mark.parametrize(
    ("sql", "ddl"),
    [
        (
            "SELECT id FROM users WHERE lower(email) = $1",
            "CREATE INDEX CONCURRENTLY users_lower_email_idx ON users (lower(email));",
        ),
        (
            "SELECT id FROM shop.orders WHERE created_at::date = $1",
            "CREATE INDEX CONCURRENTLY orders_created_at_date_idx ON shop.orders "
            "(((created_at)::date));",
        ),
        (
            'SELECT id FROM "Order Lines" WHERE "Sku" = $1',
            'CREATE INDEX CONCURRENTLY "Order Lines_sku_idx" ON "Order Lines" ("Sku");',
        ),
    ],
)
def test_ddl(sql: str, ddl: str) -> None:
    assert cands.ddl(cands.candidates(sql)[0]) == ddl


@pytest.mark.parametrize(
    ("sql", "ddl"),
    [
        (
            'SELECT id FROM "user" WHERE lower("user".email) = $1',
            'CREATE INDEX CONCURRENTLY user_lower_email_idx ON "user" (lower(email));',
        ),
        (
            'SELECT id FROM "order" o WHERE o.status = $1',
            'CREATE INDEX CONCURRENTLY order_status_idx ON "order" (status);',
        ),
    ],
)
def test_ddl_quotes_keywords(sql: str, ddl: str) -> None:
    assert cands.ddl(cands.candidates(sql)[0]) == ddl


def test_names_are_short_and_unique() -> None:
    wide = IndexCandidate(
        None, "t" * 40, tuple(KeyPart(f"c{i}" * 8, "c", "equality") for i in range(3)), ""
    )
    name = cands.index_name(wide)
    assert len(name) <= 63 and name.endswith("_idx")
    assert cands.index_name(wide, [name]) != name
    assert len(cands.index_name(wide, [name])) <= 63


@pytest.mark.parametrize(
    ("keys", "existing", "covered"),
    [
        (("email",), [("email",)], True),
        (("email",), [("email", "name")], True),  # a longer index serves the prefix
        (("name", "email"), [("email", "name")], True),  # equalities in any order
        (("email", "name"), [("email",)], False),
        (("lower(email)",), [("email",)], False),  # the bare column does not serve lower()
        (("lower(email)",), [("lower(email)",)], True),
        (("(created_at)::date",), [("((created_at)::date)",)], True),  # pg_get_indexdef spelling
        (('"Sku"',), [("Sku",)], True),
    ],
)
def test_covered(keys: tuple[str, ...], existing: list[tuple[str, ...]], covered: bool) -> None:
    assert cands.covered(keys, existing) is covered


# -- savings -----------------------------------------------------------------------------------
LOWER_EMAIL = IndexCandidate(
    None, "users", (KeyPart("lower(email)", "email", "equality", True),), ""
)


def test_expression_index_saving_comes_from_measured_rows_when_planner_understates() -> None:
    planner = Verification(True, True, 4734.71, 1670.37)
    est = savings.estimate(
        LOWER_EMAIL,
        planner,
        QueryStats(20, 19, 600, 10),
        200_000.0,
        {("users", "email"): 200_000.0},
        4734.71,
        True,
    )
    assert est.basis == "rows_per_call"
    assert est.saving > 0.99
    assert est.evidence[0] == "planner with a hypothetical index: cost 4,735 -> 1,670 (-65%)"
    assert est.evidence[1].startswith("pg_stat_statements: 0.95 rows per call of 200,000")
    assert est.evidence[2].startswith(
        "pg_stats: email has ~200,000 distinct values (of column email"
    )


def test_pg_stats_judge_when_rows_do_not_reflect_matches() -> None:
    planner = Verification(True, True, 4734.71, 1670.37)
    est = savings.estimate(
        LOWER_EMAIL,
        planner,
        QueryStats(20, 20, 600, 10),
        200_000.0,
        {("users", "email"): 200_000.0},
        4734.71,
        rows_match=False,
    )
    assert est.basis == "pg_stats"
    assert len(est.evidence) == 2


def test_planner_wins_when_larger_and_evidence_never_overrides_a_rejection() -> None:
    est = savings.estimate(
        LOWER_EMAIL, Verification(True, True, 1000.0, 10.0), None, 0.0, {}, 1000.0, True
    )
    assert (est.basis, round(est.saving, 2)) == ("planner", 0.99)
    unused = Verification(True, False, 1000.0, 1000.0)
    est = savings.estimate(
        LOWER_EMAIL, unused, QueryStats(10, 10, 1, 1), 100_000.0, {}, 1000.0, True
    )
    assert (est.basis, est.saving) == ("none", 0.0)


def test_without_hypopg_the_evidence_alone_estimates() -> None:
    est = savings.estimate(
        LOWER_EMAIL,
        Verification(False),
        None,
        200_000.0,
        {("users", "email"): 200_000.0},
        4734.71,
        True,
    )
    assert est.basis == "pg_stats"
    assert est.saving > 0.99


# -- health ------------------------------------------------------------------------------------
def idx(name: str, *keys: str, **kw: object) -> IndexFact:
    return IndexFact("public", "t", name, keys, **kw)  # type: ignore[arg-type]


def test_duplicate_and_redundant_indexes() -> None:
    found = health.duplicate_indexes(
        [
            idx("t_pkey", "id", primary=True, unique=True, constraint=True, scans=9),
            idx("t_id_idx", "id"),  # twin of the primary key
            idx("t_a_idx", "a"),  # prefix of t_a_b_idx
            idx("t_a_b_idx", "a", "b"),
            idx("t_b_partial", "b", partial=True),
            idx("t_c_hash", "c", method="hash"),
            idx("t_c_idx", "c"),
        ]
    )
    assert sorted(f.subject for f in found) == ["public.t_a_idx", "public.t_id_idx"]


def test_exact_twins_report_only_one() -> None:
    found = health.duplicate_indexes([idx("t_x1", "x"), idx("t_x2", "x")])
    assert [f.subject for f in found] == ["public.t_x2"]


def test_unused_and_invalid_indexes() -> None:
    facts = [
        idx("t_pkey", "id", primary=True, unique=True, constraint=True),
        idx("t_used", "a", scans=3),
        idx("t_unused", "b", bytes=16384),
        idx("t_broken", "c", valid=False),
    ]
    assert [f.subject for f in health.unused_indexes(facts)] == ["public.t_unused"]
    assert "16.0 kB" in health.unused_indexes(facts)[0].message
    [invalid] = health.invalid_indexes(facts)
    assert invalid.severity is Severity.HIGH and "REINDEX INDEX CONCURRENTLY" in invalid.fix


def test_missing_and_stale_statistics() -> None:
    tables = [
        TableFact("public", "never", -1, live_rows=500, analyzed=False),
        TableFact("public", "stale", 10_000, live_rows=10_000, modified_since_analyze=5_000),
        TableFact("public", "fresh", 10_000, live_rows=10_000, modified_since_analyze=500),
        TableFact("public", "empty", 0, live_rows=0, analyzed=False),
    ]
    found = {(f.check, f.subject) for f in health.table_statistics(tables)}
    assert found == {("missing_statistics", "public.never"), ("stale_statistics", "public.stale")}


@pytest.mark.parametrize(
    ("version_num", "checks"),
    [
        (150018, []),
        (150012, ["server_version:warn"]),
        (180006, ["server_version:info"]),  # newer than the table
        (130020, ["server_version:high", "server_version:warn"]),  # end of life and behind
        (110000, ["server_version:high"]),
        (190001, ["server_version:info"]),
    ],
)
def test_server_version(version_num: int, checks: list[str]) -> None:
    found = health.server_version(version_num, dt.date(2026, 6, 1))
    assert [f"{f.check}:{f.severity.value}" for f in found] == checks


def test_release_table_is_dated_and_consistent() -> None:
    assert max(r.released for r in releases.RELEASES.values()) <= releases.AS_OF
    assert releases.split(150018) == (15, 18)


# -- report ------------------------------------------------------------------------------------
def sample_review() -> Review:
    candidate = cands.candidates("SELECT id FROM users WHERE lower(email) = $1")[0]
    fix = IndexAdvice(
        candidate,
        "users_lower_email_idx",
        cands.ddl(candidate),
        Verification(False, detail="no hypopg"),
        verified=False,
        saving=0.99,
        saved_ms_per_s=99.0,
        basis="pg_stats",
        evidence=("pg_stats: ...",),
        warnings=("unverified: no hypopg",),
    )
    advice = Advice(
        "abc",
        "SELECT id FROM users WHERE lower(email) = $1 | x",
        (42,),
        QueryStats(100, 100, 1000, 10),
        100.0,
        indexes=(fix,),
    )
    bad = Advice("def", "SELECT broken", error="explain: nope")
    issue = HealthFinding(
        "invalid_index", Severity.HIGH, "public.t_x", "index t_x is invalid", "REINDEX"
    )
    return Review(
        "srv", "15.18", 0.0, None, 60.0, "pg_stat_statements", "missing", (advice, bad), (issue,)
    )


def test_review_json_is_serializable_and_complete() -> None:
    doc = json.loads(json.dumps(report.review_to_json(sample_review())))
    first = doc["statements"][0]
    assert first["rank"] == 1 and first["queryids"] == ["42"]
    assert first["indexes"][0]["verified"] is False
    assert first["indexes"][0]["ddl"].startswith("CREATE INDEX CONCURRENTLY users_lower_email_idx")
    assert doc["statements"][1]["error"] == "explain: nope"
    assert doc["window"] == {"start": None, "end": "1970-01-01T00:01:00Z"}
    assert doc["health"][0]["check"] == "invalid_index"


def test_review_markdown() -> None:
    text = report.review_to_markdown(sample_review())
    assert text.startswith("# querywatch review of srv\n")
    assert "**unverified**; saves ~99% of its time (~99.0 ms/s), estimate from pg_stats." in text
    assert "\\| x" in text  # pipes escaped
    assert "No plan: explain: nope" in text
    assert "**high** `invalid_index` public.t_x" in text
