"""Plan findings: every rule against fixture plans that do and do not trigger it (pure)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from querywatch.advise import findings, nodes
from querywatch.advise.records import QueryStats, Severity

FIXTURES = Path(__file__).parent / "fixtures" / "plans"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())["cases"]


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


def stats_of(case: dict[str, Any]) -> QueryStats | None:
    return QueryStats(**case["stats"]) if case["stats"] else None


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_fixture_triggers_exactly_its_rules(case: dict[str, Any]) -> None:
    doc = load(case["file"])
    before = copy.deepcopy(doc)
    found = findings.find(doc, stats_of(case))
    assert sorted({f.rule for f in found}) == sorted(case["rules"])
    assert doc == before, "a rule mutated its input"


@pytest.mark.parametrize("rule", findings.RULES, ids=[r.__name__ for r in findings.RULES])
def test_every_rule_has_a_plan_that_triggers_it_and_one_that_does_not(rule: Any) -> None:
    name = rule.__name__
    by_file = {c["file"]: c for c in CASES}
    yes, no = by_file[f"{name}.yes.json"], by_file[f"{name}.no.json"]
    assert [f.rule for f in rule(load(yes["file"]), stats_of(yes))] != []
    assert rule(load(no["file"]), stats_of(no)) == []


def test_selective_seq_scan_evidence_has_the_numbers() -> None:
    [finding] = findings.seq_scan_selective(
        load("seq_scan_selective.yes.json"), QueryStats(100, 100, 500, 10)
    )
    assert finding.severity is Severity.HIGH
    assert finding.relation == "public.users" or finding.relation == "users"
    assert "200,000 rows" in finding.evidence[0]
    assert "filter: (name = $1)" in finding.evidence
    assert "pg_stat_statements: 1.0 rows per call" in finding.evidence


def test_parallel_scan_counts_rows_of_all_workers() -> None:
    doc = load("function_on_column.yes.json")
    assert nodes.top(doc)["Node Type"] == "Gather"
    [finding] = findings.seq_scan_selective(doc, None)
    assert "keep ~1,000 (0.50%)" in finding.evidence[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(lower(email) = $1)", ["lower(email)"]),
        ("((created_at)::date = $1)", ["(created_at)::date"]),
        ("((email)::text = $1)", []),  # varchar compared as text: an index on email still works
        ("(email = lower($1))", []),  # the function is on the value, not the column
        ("((upper(u.name) ~~ $1) AND (id > 3))", ["upper(u.name)"]),
    ],
)
def test_blocking_expressions(text: str, expected: list[str]) -> None:
    assert findings._blocking_expressions(text) == expected


def test_spill_is_also_seen_in_pg_stat_statements_temp_blocks() -> None:
    doc = load("spill_to_disk.no.json")
    assert findings.spill_to_disk(doc, None) == []
    stats = QueryStats(10, 10, 100, 10, temp_blks_written=4000)
    [finding] = findings.spill_to_disk(doc, stats)
    assert "400 temp blocks written per call" in finding.evidence[-1]


def test_n_plus_one_needs_many_calls_of_one_row() -> None:
    doc = load("n_plus_one.yes.json")
    assert findings.n_plus_one(doc, None) == []
    assert findings.n_plus_one(doc, QueryStats(500, 500, 10, 1)) == []  # too few calls
    assert findings.n_plus_one(doc, QueryStats(5000, 5000, 10, 3600)) == []  # 1.4 calls/s
    [f] = findings.n_plus_one(doc, QueryStats(5000, 5000, 10, 10))
    assert "500 calls/s" in f.message


def test_misestimate_reports_the_factor() -> None:
    [f] = findings.row_misestimate(load("row_misestimate.yes.json"), None)
    assert "estimated 1 rows, got 50,000" in f.message


def test_plan_hash_ignores_costs_and_sees_shape() -> None:
    yes, no = load("seq_scan_selective.yes.json"), load("seq_scan_selective.no.json")
    cheaper = copy.deepcopy(yes)
    cheaper["Plan"]["Total Cost"] = 1.0
    assert nodes.plan_hash(yes) == nodes.plan_hash(cheaper)
    assert nodes.plan_hash(yes) != nodes.plan_hash(no)
    summary = nodes.summary(no)
    assert summary.nodes == ("Index Scan using users_pkey on users",)
    assert summary.total_cost == no["Plan"]["Total Cost"]


def test_hypothetical_index_names_do_not_change_the_hash() -> None:
    a = {"Plan": {"Node Type": "Index Scan", "Index Name": "<13556>btree_users_expr"}}
    b = {"Plan": {"Node Type": "Index Scan", "Index Name": "<20001>btree_users_expr"}}
    assert nodes.plan_hash(a) == nodes.plan_hash(b)


PURE = ("nodes", "findings", "candidates", "savings", "health", "releases", "report", "records")


def test_pure_modules_import_no_database_driver() -> None:
    imports = "; ".join(f"import querywatch.advise.{m}" for m in PURE)
    code = f"import sys; {imports}; print(sorted(m for m in ('psycopg', 'sqlite3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
