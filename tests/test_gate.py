"""The query gate: rules, baseline file, psycopg capture, generic plans, and a real app's suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from querywatch.errors import InputError
from querywatch.fingerprint import fingerprint
from querywatch.gate.baseline import (
    Budget,
    Capture,
    Plan,
    SeqScan,
    StatementRecord,
    from_json,
    load,
    to_json,
)
from querywatch.gate.capture import Recorder, to_dollar
from querywatch.gate.plans import Explainer
from querywatch.gate.rules import RuleName, check

SAMPLE_APP = Path(__file__).parent / "fixtures" / "sample_app"
TEST = "tests/test_shop.py::test_list"


def record(
    fp: str, calls: dict[str, int], cost: float | None = 10.0, scans: tuple[SeqScan, ...] = ()
) -> StatementRecord:
    plan = None if cost is None else Plan(cost, scans)
    return StatementRecord(fp, f"SELECT /* {fp} */ 1", plan, calls)


def capture(*records: StatementRecord, budget: Budget = Budget()) -> Capture:
    return Capture({r.fingerprint: r for r in records}, budget)


# -- rules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("baseline_calls", "calls", "flagged"),
    [
        (1, 1, False),
        (1, 3, False),  # 1 + slack 2
        (1, 4, True),
        (10, 20, False),  # x2
        (10, 21, True),
        (None, 3, False),  # new in this test: budget 3
        (None, 4, True),
    ],
)
def test_amplification(baseline_calls: int | None, calls: int, flagged: bool) -> None:
    known = {TEST: baseline_calls} if baseline_calls is not None else {"other::test": 1}
    found = check(capture(record("f", known)), capture(record("f", {TEST: calls})))
    assert [v.rule for v in found] == ([RuleName.AMPLIFICATION] if flagged else [])
    if flagged:
        assert found[0].test == TEST and f"ran {calls} times" in found[0].message
        assert found[0].query == "SELECT /* f */ 1"


def test_new_statement_scanning_a_large_table_fails() -> None:
    big = SeqScan("public.customers", 10_000)
    small = SeqScan("public.countries", 200)
    now = capture(
        record("new_big", {TEST: 1}, 300.0, (big,)),
        record("new_small", {TEST: 1}, 5.0, (small,)),
        record("known_big", {TEST: 1}, 300.0, (big,)),
    )
    found = check(capture(record("known_big", {TEST: 1}, 300.0, (big,))), now)
    assert [(v.fingerprint, v.rule) for v in found] == [("new_big", RuleName.SEQ_SCAN)]
    assert "public.customers" in found[0].message and "10,000" in found[0].message


@pytest.mark.parametrize(
    ("before", "after", "flagged"),
    [(8.3, 16.0, False), (8.3, 250.0, True), (100.0, 190.0, False), (100.0, 260.0, True)],
)
def test_plan_cost_regression(before: float, after: float, flagged: bool) -> None:
    found = check(capture(record("f", {TEST: 1}, before)), capture(record("f", {TEST: 1}, after)))
    assert [v.rule for v in found] == ([RuleName.PLAN_COST] if flagged else [])


def test_budget_comes_from_the_baseline() -> None:
    strict = Budget(new_calls=0)
    found = check(capture(budget=strict), capture(record("f", {TEST: 1})))
    assert [v.rule for v in found] == [RuleName.AMPLIFICATION]


def test_baseline_file_round_trip(tmp_path: Path) -> None:
    original = capture(
        record("b", {"t2": 2, "t1": 1}, 12.5, (SeqScan("public.t", 42),)),
        record("a", {"t1": 3}, None),
        budget=Budget(new_calls=5),
    )
    doc = to_json(original)
    assert list(doc["statements"]) == ["a", "b"]
    assert list(doc["statements"]["b"]["calls"]) == ["t1", "t2"]
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(doc))
    again = load(path)
    assert again.budget == original.budget
    assert again.statements["b"].plan == Plan(12.5, (SeqScan("public.t", 42),))
    assert again.statements["a"].plan is None and again.statements["a"].calls == {"t1": 3}


@pytest.mark.parametrize("doc", [[], {"querywatch_gate": 2}, {"querywatch_gate": 1}])
def test_malformed_baseline(doc: object) -> None:
    with pytest.raises(InputError):
        from_json(doc)


def test_missing_baseline_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="gate record"):
        load(tmp_path / "none.json")


# -- capture ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "has_params", "expected"),
    [
        ("SELECT %s, %s", True, "SELECT $1, $2"),
        ("SELECT %(a)s + %(b)s + %(a)s", True, "SELECT $1 + $2 + $1"),
        ("SELECT %b, %t", True, "SELECT $1, $2"),
        ("SELECT 5 %% 2, %s", True, "SELECT 5 % 2, $1"),
        ("SELECT '100%'", False, "SELECT '100%'"),
    ],
)
def test_to_dollar(query: str, has_params: bool, expected: str) -> None:
    assert to_dollar(query, has_params) == expected


def test_recorder_counts_each_execution_of_the_current_test(pg_dsn: str) -> None:
    recorder = Recorder()
    recorder.install()
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT %s::int", (1,))  # no test current: not counted
            recorder.current = "t::a"
            for i in range(3):
                conn.execute("SELECT %s::int", (i,))
            conn.execute(sql.SQL("SELECT {} FROM pg_class").format(sql.Identifier("relname")))
            with conn.cursor() as cur:
                cur.executemany("SELECT %s::int", [(1,), (2,)])
            recorder.current = None
    finally:
        recorder.uninstall()
    counts = recorder.counts["t::a"]
    one = fingerprint("SELECT $1::int")
    assert counts[one] == 4  # three executes and one executemany
    assert counts[fingerprint('SELECT "relname" FROM pg_class')] == 1
    assert recorder.seen[one].query == "SELECT $1::int"
    assert "password" not in recorder.seen[one].query
    assert psycopg.Cursor.execute.__qualname__ == "Cursor.execute"  # restored


def test_explainer_finds_a_sequential_scan_of_a_large_table(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gate_people")
        conn.execute("CREATE TABLE gate_people (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO gate_people SELECT g, 'p' || g FROM generate_series(1, 1500) g")
        conn.execute("ANALYZE gate_people")
    explainer = Explainer(large_rows=1000)
    try:
        scan = explainer.plan(pg_dsn, "SELECT id FROM gate_people WHERE lower(email) = $1")
        by_id = explainer.plan(pg_dsn, "SELECT email FROM gate_people WHERE id = $1")
        update = explainer.plan(pg_dsn, "UPDATE gate_people SET email = $1 WHERE id = $2")
        assert explainer.plan(pg_dsn, "CREATE TABLE gate_nope (x int)") is None
        assert explainer.plan(pg_dsn, "SELECT * FROM gate_missing_table") is None
    finally:
        explainer.close()
    assert scan is not None and scan.seq_scans == (SeqScan("public.gate_people", 1000),)
    assert by_id is not None and by_id.seq_scans == () and by_id.cost < scan.cost
    assert update is not None and update.seq_scans == ()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM gate_people WHERE email LIKE 'p%'").fetchone()
        exists = conn.execute("SELECT to_regclass('gate_nope')").fetchone()
    assert count == (1500,) and exists == (None,)  # nothing was executed, only planned


# -- a real application's suite, through `querywatch gate` and the pytest plugin -------------------
# The app's suite runs without this venv's unrelated heavy plugins (hypothesis, schemathesis: ~2 s
# of CPU per pytest start); the others still load, as in an application's CI.
SUITE_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:schemathesis")
Recorded = tuple[Path, dict[str, str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def recorded(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The sample app with its database, and `gate record` run once on it as shipped: the tests
    that start from that baseline copy the folder (the suite recreates its tables on each run)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS gate_app")
        conn.execute("CREATE DATABASE gate_app")
    folder = tmp_path_factory.mktemp("gate") / "app"
    shutil.copytree(SAMPLE_APP, folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PYTEST_"))}
    env["SAMPLE_APP_DSN"] = make_conninfo(pg_dsn, dbname="gate_app")
    return folder, env, gate(folder, env, "record")


@pytest.fixture
def app(recorded: Recorded, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the recorded app (its querywatch-gate.json included) that a test may change."""
    source, env, result = recorded
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "app"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder, env


def gate(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querywatch", "gate", *args, "--", *SUITE_ARGS],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def swap(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_introduced_n_plus_one_fails_the_gate_until_the_baseline_is_updated(
    recorded: Recorded, app: tuple[Path, dict[str, str]]
) -> None:
    folder, env = app  # `gate record` ran on the app as shipped (recorded)
    assert "3 statements in 3 tests" in recorded[2].stdout
    assert gate(folder, env, "check").returncode == 0

    swap(folder / "shop.py", "return list_orders_joined(", "return list_orders_looped(")
    failed = gate(folder, env, "check")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = next(x for x in failed.stdout.splitlines() if "amplification" in x)
    assert line.startswith("check_shop.py::check_list_orders: amplification: ran 10 times")
    assert "SELECT sku, qty FROM items WHERE order_id = $1 ORDER BY sku" in line

    assert gate(folder, env, "record").returncode == 0
    passed = gate(folder, env, "check")
    assert passed.returncode == 0, passed.stdout
    assert "gate: pass (3 tests" in passed.stdout


def test_seq_scan_and_plan_cost_regressions_fail_the_gate(
    app: tuple[Path, dict[str, str]],
) -> None:
    folder, env = app  # recorded as shipped
    baseline = json.loads((folder / "querywatch-gate.json").read_text())
    by_email = fingerprint("SELECT id, name FROM customers WHERE email = $1")
    assert baseline["statements"][by_email]["seq_scans"] == []

    no_index = gate(folder, {**env, "SAMPLE_APP_EMAIL_INDEX": "0"}, "check")
    assert no_index.returncode == 1
    assert "check_shop.py::check_find_customer: plan_cost: plan cost 8" in no_index.stdout

    swap(folder / "shop.py", "CUSTOMER_BY_EMAIL, {", "CUSTOMER_BY_EMAIL_ANY_CASE, {")
    any_case = gate(folder, env, "check")
    assert any_case.returncode == 1
    assert (
        "check_shop.py::check_find_customer: seq_scan: new statement scans public.customers "
        "sequentially (>= 10,000 rows" in any_case.stdout
    )


def test_the_pytest_plugin_fails_the_offending_test(app: tuple[Path, dict[str, str]]) -> None:
    folder, env = app  # recorded as shipped
    swap(folder / "shop.py", "return list_orders_joined(", "return list_orders_looped(")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "querywatch.gate.plugin",
            "--querywatch-gate-check=querywatch-gate.json",
            *SUITE_ARGS[1:],  # without -q: the summary line "1 failed, 2 passed"
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "1 failed, 2 passed" in result.stdout
    assert "FAILED check_shop.py::check_list_orders" in result.stdout
    assert "querywatch gate" in result.stdout and "ran 10 times" in result.stdout
