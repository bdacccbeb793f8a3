"""The deploy audit: its U test, its verdict on known recordings, the CLI and the watch scheduler."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scipy.stats import mannwhitneyu

from querywatch.alerts import Dispatcher, WebhookChannel
from querywatch.audit.core import (
    AuditVerdict,
    ChangeStatus,
    ReasonKind,
    audit,
    due_audits,
    mann_whitney,
    split,
)
from querywatch.audit.report import audit_to_alert, audit_to_json, audit_to_markdown, audit_to_text
from querywatch.audit.run import AuditScheduler, run_audit
from querywatch.diagnose import traffic_factor, workload
from querywatch.errors import StoreError
from querywatch.model import (
    Counters,
    DatabaseCounters,
    Deploy,
    Interval,
    IntervalSummary,
    Statement,
    StatementDelta,
    StatementKey,
)
from querywatch.store import Store
from tests import storekit
from tests.workload import Load, Receiver, watch_process
from tests.workload import Statement as LoadStatement

STEP = 10.0
DEPLOY_AT = 100_000.0
# fingerprint -> (calls/s, mean ms) before and after
Plan = dict[str, tuple[float, float, float, float]]
REGRESSION: Plan = {
    "amplified": (2.0, 1.0, 20.0, 1.0),  # x10 calls
    "slowed": (5.0, 2.0, 5.0, 10.0),  # x5 mean
    "steady": (30.0, 0.5, 30.0, 0.5),
}
INNOCENT: Plan = {
    "a": (2.0, 1.0, 2.0, 1.0),
    "b": (5.0, 2.0, 5.0, 2.0),
    "c": (30.0, 0.5, 30.0, 0.5),
}


def recording(
    plan: Plan,
    jitter: float,
    seed: int,
    n_before: int = 30,
    n_after: int = 15,
    autocommit: bool = False,
) -> tuple[list[IntervalSummary], list[IntervalSummary]]:
    """Intervals around DEPLOY_AT: every rate and mean jitters by up to +-``jitter`` per interval.
    Transactions are 40/s, or with ``autocommit`` one per call (each statement its own)."""
    rng = random.Random(seed)

    def one(start: float, after: bool) -> IntervalSummary:
        by_fp = {}
        for fp, (c0, m0, c1, m1) in plan.items():
            calls = round((c1 if after else c0) * STEP * (1 + rng.uniform(-jitter, jitter)))
            mean = (m1 if after else m0) * (1 + rng.uniform(-jitter, jitter))
            if calls > 0:
                by_fp[fp] = Counters(calls=calls, exec_ms=calls * mean)
        xacts = 40.0 * STEP * (1 + rng.uniform(-jitter, jitter))
        if autocommit:
            xacts = sum(c.calls for c in by_fp.values())
        return IntervalSummary(
            start, start + STEP, True, by_fp, DatabaseCounters(xact_commit=xacts)
        )

    before = [one(DEPLOY_AT - (n_before - i) * STEP, False) for i in range(n_before)]
    after = [one(DEPLOY_AT + i * STEP, True) for i in range(n_after)]
    return before, after


def texts(plan: Plan) -> dict[str, Statement]:
    return {fp: Statement(fp, f"SELECT /* {fp} */ $1") for fp in plan}


# -- the U test ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]),
        ([1.0, 2.0, 2.0, 3.0, 5.0, 5.0], [2.0, 4.0, 5.0, 7.0, 7.0]),
        ([0.1, 0.4, 0.3, 0.9, 0.5, 0.2, 0.8], [0.35, 0.6, 0.55, 0.95, 0.7]),
        ([3, 3, 3, 4], [3, 4, 4, 4, 5]),
    ],
)
def test_mann_whitney_matches_scipy_asymptotic(x: list[float], y: list[float]) -> None:
    expected = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue
    assert mann_whitney(x, y) == pytest.approx(expected, rel=1e-9)


def test_mann_whitney_of_identical_samples_is_one() -> None:
    assert mann_whitney([2.0] * 5, [2.0] * 4) == 1.0
    assert mann_whitney([], [1.0]) == 1.0


# -- verdicts --------------------------------------------------------------------------------------
def test_known_regression_flags_both_statements_with_numbers() -> None:
    before, after = recording(REGRESSION, jitter=0.3, seed=7)
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(REGRESSION))
    assert report.verdict is AuditVerdict.REGRESSED and report.exit_code == 1
    by_fp = {r.fingerprint: r for r in report.reasons}
    assert set(by_fp) == {"amplified", "slowed"}
    assert by_fp["amplified"].kind is ReasonKind.FREQUENCY
    assert 7.0 < by_fp["amplified"].factor < 13.0
    assert by_fp["amplified"].p_value is not None and by_fp["amplified"].p_value < 1e-4
    assert by_fp["slowed"].kind is ReasonKind.LATENCY
    assert 4.0 < by_fp["slowed"].factor < 6.5
    assert "calls/s x" in by_fp["amplified"].text
    assert "beyond the other statements' traffic (x1.0" in by_fp["amplified"].text
    assert "mean latency x" in by_fp["slowed"].text and " ms)" in by_fp["slowed"].text
    assert report.plan_note.startswith("plan history not available")


@pytest.mark.parametrize("seed", range(12))
def test_innocent_deploy_with_30_percent_jitter_passes(seed: int) -> None:
    before, after = recording(INNOCENT, jitter=0.3, seed=seed)
    report = audit(Deploy("v1", DEPLOY_AT), before, after, texts(INNOCENT))
    assert report.reasons == ()
    assert report.verdict is AuditVerdict.PASS and report.exit_code == 0
    assert {c.status for c in report.changes} == {ChangeStatus.KEPT}


# The rollout: one statement 12 -> 92 calls/s (DB time 11 -> 101 ms/s) in autocommit code,
# where every statement is a transaction; the others stay steady.
N_PLUS_ONE: Plan = {
    "item": (12.0, 0.9, 92.0, 1.1),
    "order": (5.0, 2.0, 5.0, 2.0),
    "user": (3.0, 1.0, 3.0, 1.0),
    "cart": (2.0, 0.5, 2.0, 0.5),
}


def workload_factor(before: list[IntervalSummary], after: list[IntervalSummary]) -> float:
    return traffic_factor(workload(before), workload(after))


def _xact_factor(before: list[IntervalSummary], after: list[IntervalSummary]) -> float:
    """What the audit used to normalize by: transactions/s after over before."""

    def rate(xs: list[IntervalSummary]) -> float:
        total = sum(s.database.xact_commit for s in xs if s.database is not None)
        return total / sum(s.seconds for s in xs)

    return rate(after) / rate(before)


@pytest.mark.parametrize("seed", range(6))
def test_n_plus_one_in_autocommit_fails_naming_the_statement(seed: int) -> None:
    before, after = recording(
        N_PLUS_ONE, jitter=0.2, seed=seed, n_before=12, n_after=8, autocommit=True
    )
    # transactions/s grew x4.6 with it, so calls per transaction rose only x1.7 (< 2: it passed)
    assert 4.0 < _xact_factor(before, after) < 5.2
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(N_PLUS_ONE))
    assert report.exit_code == 1
    assert [(r.fingerprint, r.kind) for r in report.reasons] == [("item", ReasonKind.FREQUENCY)]
    assert 6.0 < report.reasons[0].factor < 9.5
    assert report.traffic_factor == pytest.approx(1.0, abs=0.1)  # the others' traffic
    assert "SELECT /* item */ $1" in audit_to_text(report)


@pytest.mark.parametrize("seed", range(6))
def test_uniform_x3_in_autocommit_passes(seed: int) -> None:
    plan = {fp: (c0, m0, 3 * c0, m0) for fp, (c0, m0, _, _) in N_PLUS_ONE.items()}
    before, after = recording(plan, jitter=0.2, seed=seed, n_before=12, n_after=8, autocommit=True)
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(plan))
    assert report.reasons == () and report.exit_code == 0
    assert 2.5 < report.traffic_factor < 3.5
    assert all(2.5 < c.traffic < 3.5 for c in report.changes)


def test_a_statement_cannot_raise_the_traffic_it_is_judged_by() -> None:
    """The amplified statement holds most calls: the median over all statements is its own ratio,
    but it is judged against the others' traffic; the steady ones are not flagged."""
    plan: Plan = {
        "item": (30.0, 0.5, 240.0, 0.5),
        "order": (5.0, 2.0, 5.0, 2.0),
        "user": (3.0, 1.0, 3.0, 1.0),
    }
    before, after = recording(plan, jitter=0.1, seed=2, n_before=12, n_after=8, autocommit=True)
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(plan))
    # over every statement, the diagnosis' call-weighted median is "item"'s own x8
    assert workload_factor(before, after) > 6
    assert [r.fingerprint for r in report.reasons] == ["item"]
    assert report.traffic_factor == pytest.approx(1.0, abs=0.1)
    assert 6.0 < report.reasons[0].factor < 10.0


def test_new_and_gone_statements() -> None:
    plan: Plan = {"kept": (10.0, 1.0, 10.0, 1.0), "old": (1.0, 1.0, 0.0, 0.0)}
    plan["big_new"] = (0.0, 0.0, 10.0, 5.0)
    plan["tiny_new"] = (0.0, 0.0, 0.1, 0.1)
    before, after = recording(plan, jitter=0.0, seed=1)
    report = audit(Deploy("v3", DEPLOY_AT), before, after, texts(plan))
    status = {c.fingerprint: c.status for c in report.changes}
    assert status == {
        "kept": ChangeStatus.KEPT,
        "old": ChangeStatus.GONE,
        "big_new": ChangeStatus.NEW,
        "tiny_new": ChangeStatus.NEW,
    }
    assert [(r.fingerprint, r.kind) for r in report.reasons] == [("big_new", ReasonKind.NEW_QUERY)]
    assert report.reasons[0].factor == pytest.approx(50 / 60, rel=0.01)  # share of DB time


def test_a_large_change_on_too_few_intervals_is_not_claimed() -> None:
    before, after = recording(REGRESSION, jitter=0.0, seed=1, n_before=2, n_after=2)
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(REGRESSION))
    assert report.verdict is AuditVerdict.PASS
    assert all(c.latency_test is None for c in report.changes)


def test_split_drops_the_interval_spanning_the_deploy() -> None:
    mk = [IntervalSummary(s, s + 10, True, {}) for s in (80.0, 90.0, 95.0, 100.0, 110.0)]
    before, after = split(mk, at=100.0, before_s=30.0, after_s=20.0)
    assert [s.start for s in before] == [80.0, 90.0]
    assert [s.start for s in after] == [100.0, 110.0]


def test_reports_render_every_format() -> None:
    before, after = recording(REGRESSION, jitter=0.3, seed=3)
    report = audit(Deploy("v2", DEPLOY_AT), before, after, texts(REGRESSION))
    doc = json.loads(json.dumps(audit_to_json(report)))
    assert doc["verdict"] == "regressed"
    assert {r["fingerprint"] for r in doc["reasons"]} == {"amplified", "slowed"}
    assert doc["statements"][0]["fingerprint"] in {"amplified", "slowed"}
    text = audit_to_text(report)
    assert text.startswith("audit of deploy v2: REGRESSED (2 reasons)")
    assert "SELECT /* amplified */ $1" in text
    markdown = audit_to_markdown(report)
    assert markdown.startswith("### ❌ audit of deploy v2") and "| status |" in markdown
    alert = audit_to_alert(report)
    assert alert["verdict"] == "query_regression"
    culprits = alert["culprits"]
    assert isinstance(culprits, list)
    assert sorted(c["kind"] for c in culprits) == ["frequency", "latency"]


def test_pure_modules_import_no_io() -> None:
    code = (
        "import sys, querywatch.audit.core, querywatch.audit.report; "
        "print(sorted(m for m in ('psycopg', 'sqlite3', 'fastapi') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


# -- scheduling in watch ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "done", "due"),
    [
        (1000.0, [], ["v1"]),  # v1's after-window (100 + 600) has passed, v2's (500 + 600) not
        (1100.0, [], ["v1", "v2"]),
        (1100.0, [("v1", 100.0)], ["v2"]),
        (100.0 + 600 + 3601, [], ["v2"]),  # v1 is past the horizon
    ],
)
def test_due_audits(now: float, done: list[tuple[str, float]], due: list[str]) -> None:
    deploys = [Deploy("v2", 500.0), Deploy("v1", 100.0)]
    assert [d.version for d in due_audits(deploys, now, 600.0, done)] == due


def _store_recording(store: Store, plan: Plan) -> int:
    server = store.server("shop")
    before, after = recording(plan, jitter=0.2, seed=5, n_before=12, n_after=6)
    keys = {fp: StatementKey(1, 1, n) for n, fp in enumerate(plan, start=1)}
    for s in [*before, *after]:
        deltas = tuple(StatementDelta(keys[fp], c) for fp, c in s.by_fingerprint.items())
        interval = Interval(s.start, s.end, deltas, s.database)
        store.record_interval(
            server.id,
            interval,
            {k: fp for fp, k in keys.items()},
            {fp: f"SELECT {fp}" for fp in plan},
        )
    return server.id


def test_scheduler_audits_once_after_the_window_and_alerts_a_regression(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        with Store(tmp_path / "qw.db") as store:
            server_id = _store_recording(store, REGRESSION)
            store.add_deploy("v2", DEPLOY_AT)
            with Dispatcher([WebhookChannel(receiver.url + "/hook")]) as dispatcher:
                scheduler = AuditScheduler(
                    store, server_id, "shop", dispatcher, before_s=120.0, after_s=60.0
                )
                assert scheduler.on_interval(DEPLOY_AT + 50.0) == []  # window not over yet
                ran = scheduler.on_interval(DEPLOY_AT + 61.0)
                assert scheduler.on_interval(DEPLOY_AT + 71.0) == []  # audited once
                dispatcher.flush(10.0)
            status = store.status()
    finally:
        receiver.close()
    assert [r.verdict for r in ran] == [AuditVerdict.REGRESSED]
    assert {r.fingerprint for r in ran[0].reasons} == {"amplified", "slowed"}
    bodies = receiver.bodies("/hook")
    assert len(bodies) == 1 and bodies[0]["incident"] == "audit-v2"
    assert bodies[0]["status"] == "firing"
    assert bodies[0]["diagnosis"]["verdict"] == "query_regression"
    assert "deploy v2 regressed" in bodies[0]["diagnosis"]["summary"]
    assert status["audit:shop:v2"]["verdict"] == "regressed"


def test_run_audit_reads_the_store_and_its_plan_history(tmp_path: Path) -> None:
    index_scan = {"Plan": {"Node Type": "Index Scan", "Index Name": "t_pkey", "Relation Name": "t"}}
    seq_scan = {"Plan": {"Node Type": "Seq Scan", "Relation Name": "t"}}
    with Store(tmp_path / "qw.db") as store:
        server_id = _store_recording(store, INNOCENT)
        store.record_plan(server_id, "a", "h1", index_scan, 8.3, at=DEPLOY_AT - 50)
        store.record_plan(server_id, "a", "h2", seq_scan, 480.0, at=DEPLOY_AT + 20)
        store.record_plan(server_id, "b", "h3", seq_scan, 20.0, at=DEPLOY_AT - 50)
        report = run_audit(store, server_id, Deploy("v1", DEPLOY_AT), 120.0, 60.0)
    assert report.verdict is AuditVerdict.PASS
    assert report.before.intervals == 12 and report.after.intervals == 6
    assert report.changes[0].query.startswith("SELECT ")
    assert report.plan_note == ""
    plans = {c.fingerprint: c.plan for c in report.changes}
    assert plans["b"] is None and plans["c"] is None
    assert plans["a"] is not None
    assert plans["a"].before == "Index Scan using t_pkey on t (cost 8)"
    assert plans["a"].after == "Seq Scan on t (cost 480)"
    assert "plan changed: SELECT a: Index Scan using t_pkey on t (cost 8) ->" in audit_to_text(
        report
    )


# -- a real recording, end to end through `watch` and `querywatch audit` ---------------------------
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querywatch", *args], capture_output=True, text=True, timeout=60
    )


def test_audit_of_a_real_recording(pg_dsn: str, tmp_path: Path) -> None:
    """Phase A, innocent deploy, phase B (same load, +-30% jitter), bad deploy, phase C with one
    statement x10 calls and one x5 mean latency. Each phase lasts 8 one-second intervals."""
    _keyed_table(pg_dsn, "audit_t")
    store = tmp_path / "qw.db"
    statements = {
        "lookup": LoadStatement(
            "SELECT v FROM audit_t WHERE k = %s", 3.0, lambda r: (r.randint(1, 1000),)
        ),
        "sleepy": LoadStatement("SELECT pg_sleep(%s)", 4.0, lambda r: (0.002,)),
        "steady": LoadStatement("SELECT count(*) FROM audit_t WHERE v < %s", 10.0, lambda r: (50,)),
    }
    phase = 8.0
    with watch_process(pg_dsn, store), Load(pg_dsn, statements, jitter=0.3, max_s=60) as load:
        time.sleep(phase + 1.5)
        innocent = time.time()
        time.sleep(phase)
        load.set_rate("lookup", 30.0)
        statements["sleepy"].params = lambda r: (0.010,)
        bad = time.time()
        time.sleep(phase + 1.5)
    assert not load.errors
    for version, at in (("v-innocent", innocent), ("v-bad", bad)):
        mark = _cli("mark", "deploy", version, "--at", _iso(at), "--store", str(store))
        assert mark.returncode == 0, mark.stderr
    window = ("--before", f"{phase:g}s", "--after", f"{phase:g}s", "--store", str(store))
    passed = _cli("audit", "--deploy", "v-innocent", *window, "--format", "json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert json.loads(passed.stdout)["verdict"] == "pass"

    failed = _cli("audit", "--deploy", "v-bad", *window, "--format", "json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    doc = json.loads(failed.stdout)
    kinds = {r["query"].split()[1]: (r["kind"], r["factor"]) for r in doc["reasons"]}
    assert set(kinds) == {"v", "pg_sleep($1)"}, doc["reasons"]
    assert kinds["v"][0] == "frequency" and kinds["v"][1] > 3.0
    assert kinds["pg_sleep($1)"][0] == "latency" and 3.0 < kinds["pg_sleep($1)"][1] < 7.0

    text = _cli("audit", "--deploy", "v-bad", *window)
    assert text.returncode == 1
    assert "REGRESSED" in text.stdout and "mean latency x" in text.stdout


def test_watch_audits_a_live_deploy_and_alerts_the_regression(pg_dsn: str, tmp_path: Path) -> None:
    """`watch` runs the audit by itself once the after-window has passed, and pages a regression."""
    _keyed_table(pg_dsn, "audit_live")
    store = tmp_path / "qw.db"
    statements = {
        "lookup": LoadStatement(
            "SELECT v FROM audit_live WHERE k = %s", 3.0, lambda r: (r.randint(1, 1000),)
        ),
        "steady": LoadStatement(
            "SELECT count(*) FROM audit_live WHERE v < %s", 10.0, lambda r: (50,)
        ),
    }
    receiver = Receiver()
    hook = f"{receiver.url}/hook"
    flags = ("--alert-webhook", hook, "--audit-before", "8s", "--audit-after", "8s")
    try:
        with (
            watch_process(pg_dsn, store, *flags),
            Load(pg_dsn, statements, jitter=0.3, max_s=60) as load,
        ):
            # a full before-window of intervals first, however slowly `watch` started
            deadline = time.monotonic() + 40
            while _intervals(store) < 10 and time.monotonic() < deadline:
                time.sleep(0.5)
            mark = _cli("mark", "deploy", "v-live", "--store", str(store))
            assert mark.returncode == 0, mark.stderr
            load.set_rate("lookup", 30.0)
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and not _audit_pages(receiver):
                time.sleep(0.5)
        pages = _audit_pages(receiver)
    finally:
        receiver.close()
    assert pages, "no audit alert arrived"
    assert pages[0]["status"] == "firing"
    assert "v-live" in json.dumps(pages[0]["diagnosis"])


def _audit_pages(receiver: Receiver) -> list[dict[str, object]]:
    return [b for b in receiver.bodies("/hook") if str(b.get("incident", "")).startswith("audit-")]


def _keyed_table(dsn: str, name: str) -> None:
    """A fresh 1,000-row table (k primary key, v = k) for a recorded workload."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        c.execute(
            sql.SQL("CREATE TABLE {} (k int PRIMARY KEY, v int)").format(sql.Identifier(name))
        )
        c.execute(
            sql.SQL("INSERT INTO {} SELECT g, g FROM generate_series(1, 1000) g").format(
                sql.Identifier(name)
            )
        )


def _intervals(store: Path) -> int:
    if not storekit.exists(store):
        return 0
    try:
        return int(storekit.value(store, "SELECT count(*) FROM intervals WHERE complete = 1"))
    except StoreError:
        return 0


def test_audit_of_an_n_plus_one_in_autocommit_and_of_a_uniform_x3(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Autocommit code (every statement its own transaction): one statement 12 -> 92 calls/s
    after deploy v-n1 fails the audit, named; after a return to normal, a uniform x3 of every
    statement (deploy v-x3) passes. Each phase lasts 8 one-second intervals."""
    _keyed_table(pg_dsn, "audit_n1")
    store = tmp_path / "qw.db"
    rates = {"item": 12.0, "order": 5.0, "user": 3.0, "cart": 2.0}
    statements = {
        "item": LoadStatement(
            "SELECT v FROM audit_n1 WHERE k = %s", rates["item"], lambda r: (r.randint(1, 1000),)
        ),
        "order": LoadStatement(
            "SELECT count(*) FROM audit_n1 WHERE v < %s", rates["order"], lambda r: (50,)
        ),
        "user": LoadStatement(
            "SELECT max(v) FROM audit_n1 WHERE k > %s", rates["user"], lambda r: (990,)
        ),
        "cart": LoadStatement(
            "SELECT k FROM audit_n1 WHERE v = %s + 1", rates["cart"], lambda r: (r.randint(1, 999),)
        ),
    }
    phase = 8.0
    with watch_process(pg_dsn, store), Load(pg_dsn, statements, jitter=0.2, max_s=80) as load:
        time.sleep(phase + 1.5)
        n_plus_one = time.time()
        load.set_rate("item", 92.0)
        time.sleep(phase + 1.0)
        for name, rate in rates.items():
            load.set_rate(name, rate)
        time.sleep(phase + 1.0)
        uniform = time.time()
        for name, rate in rates.items():
            load.set_rate(name, 3 * rate)
        time.sleep(phase + 1.5)
    assert not load.errors
    for version, at in (("v-n1", n_plus_one), ("v-x3", uniform)):
        mark = _cli("mark", "deploy", version, "--at", _iso(at), "--store", str(store))
        assert mark.returncode == 0, mark.stderr
    window = ("--before", f"{phase:g}s", "--after", f"{phase:g}s", "--store", str(store))

    failed = _cli("audit", "--deploy", "v-n1", *window, "--format", "json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    doc = json.loads(failed.stdout)
    assert [r["query"] for r in doc["reasons"]] == ["SELECT v FROM audit_n1 WHERE k = $1"]
    assert doc["reasons"][0]["kind"] == "frequency" and doc["reasons"][0]["factor"] > 4.0
    xacts = doc["after"]["xact_per_s"] / doc["before"]["xact_per_s"]
    item = next(s for s in doc["statements"] if s["query"] == doc["reasons"][0]["query"])
    per_xact = item["after"]["calls_per_xact"] / item["before"]["calls_per_xact"]
    print(
        f"n+1: transactions x{xacts:.2f} (calls per transaction x{per_xact:.2f}), traffic "
        f"factor x{doc['traffic_factor']:.2f}, statement x{doc['reasons'][0]['factor']:.2f}"
    )
    assert doc["traffic_factor"] < 1.5
    assert xacts > 2.0  # what the audit used to divide by rose with the N+1 itself
    text = _cli("audit", "--deploy", "v-n1", *window)
    assert text.returncode == 1 and "SELECT v FROM audit_n1 WHERE k = $1" in text.stdout

    passed = _cli("audit", "--deploy", "v-x3", *window, "--format", "json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    doc = json.loads(passed.stdout)
    print(f"x3: traffic factor x{doc['traffic_factor']:.2f}")
    assert doc["verdict"] == "pass" and 2.0 < doc["traffic_factor"] < 4.0
