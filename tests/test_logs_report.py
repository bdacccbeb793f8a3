"""The report of a server log (querywatch.logs.report): one record, three renderings that agree,
literals masked by --anonymize wherever they can appear, HTML escaped, an empty log reported."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from querywatch.fingerprint import fingerprint, normalize
from querywatch.logs import report as rep
from querywatch.logs.records import Error, LockWait, Plan, Statement, TempFile, Unparsed
from querywatch.logs.summary import Summary

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("WHERE email = 'a@b.c'", "WHERE email = '?'"),
        ("Filter: (v ~~ 'secret%'::text)", "Filter: (v ~~ '?'::text)"),
        ("Index Cond: (id = 4242)", "Index Cond: (id = ?)"),
        ("Key (id)=(4242) already exists.", "Key (id)=(?) already exists."),
        ("id IN (1, 2, 3)", "id IN (?, ?, ?)"),
        ("quote 'it''s'", "quote '?'"),
        ("cost=0.00..25.88 rows=6", "cost=0.00..25.88 rows=6"),  # plan figures are no literals
    ],
)
def test_anonymize(text: str, masked: str) -> None:
    assert rep.anonymize(text) == masked


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        ("SELECT * FROM t WHERE id = 42 AND a = 'x'", "SELECT * FROM t WHERE id = ? AND a = '?'"),
        ("SELECT * FROM t2 WHERE c = $1", "SELECT * FROM t2 WHERE c = $1"),
        ("INSERT INTO t VALUES (4242, 'alice')", "INSERT INTO t VALUES (?, '?')"),
    ],
)
def test_anonymize_query(query: str, masked: str) -> None:
    assert rep.anonymize_query(query) == masked


def sample_summary() -> Summary:
    s = Summary()
    lookup = "SELECT * FROM users WHERE id = 7"
    slow = "SELECT \"<b>x</b>\" FROM orders WHERE email = 'a@b.c'"
    for i in range(5):
        s.add(
            Statement(
                at=T0 + timedelta(minutes=i * 20),
                line_no=i + 1,
                pid=10,
                duration_ms=2.0 + i,
                fingerprint=fingerprint(lookup),
                query=normalize(lookup),
                phase="execute",
                params=("'7'",),
                text="SELECT * FROM users WHERE id = $1",
            )
        )
    s.add(
        Plan(
            at=T0,
            line_no=20,
            pid=11,
            duration_ms=900.0,
            fingerprint=fingerprint(slow),
            query=normalize(slow),
            format="text",
            plan="Seq Scan on orders  (cost=0.00..99.00 rows=1 width=4)\n"
            "  Filter: (email = 'a@b.c'::text)",
        )
    )
    s.add(
        Statement(
            at=T0,
            line_no=21,
            pid=11,
            duration_ms=900.0,
            fingerprint=fingerprint(slow),
            query=normalize(slow),
        )
    )
    s.add(
        LockWait(
            at=T0 + timedelta(seconds=5),
            line_no=30,
            pid=12,
            mode="ShareLock",
            lock="transaction 7",
            relation=None,
            wait_ms=1500.0,
            acquired=True,
            holders=(10,),
            queue=(12,),
            fingerprint=None,
            query=None,
        )
    )
    s.add(
        TempFile(
            at=T0,
            line_no=31,
            pid=11,
            path="base/pgsql_tmp/pgsql_tmp11.0",
            size_bytes=3 * 1024 * 1024,
            fingerprint=fingerprint(slow),
            query=normalize(slow),
        )
    )
    s.add(
        Error(
            at=T0,
            line_no=32,
            pid=13,
            severity="ERROR",
            sqlstate="23505",
            message='duplicate key value violates unique constraint "users_pkey"',
            fingerprint=None,
            query="INSERT INTO users VALUES ($1, $2)",
        )
    )
    s.add(Unparsed(at=None, line_no=40, sample="garbage 'secret' line", reason="no prefix"))
    return s


def test_the_three_renderings_agree() -> None:
    report = sample_summary().report(("pg.log",))
    doc = json.loads(rep.RENDERERS["json"](report))
    text = rep.RENDERERS["text"](report)
    page = rep.RENDERERS["html"](report)
    top = doc["top_by_time"][0]
    assert top["total_ms"] == 900.0 and doc["top_by_count"][0]["calls"] == 5
    assert "900.0" in text and "900.0" in page
    assert doc["lock_waits"][0]["wait_ms"] == 1500.0
    assert "1,500 ms" in text and "1,500" in page
    assert doc["temp_files"][0]["total_bytes"] == 3 * 1024 * 1024
    assert "3.0 MiB" in text and "3.0 MiB" in page
    assert doc["errors"][0]["sqlstate"] == "23505" and "23505" in text and "23505" in page
    assert doc["unparsed"]["count"] == 1 and "no prefix" in text and "no prefix" in page
    assert len(doc["hours"]) == 2 and sum(h["statements"] for h in doc["hours"]) == 6
    assert doc["slowest"][0]["plan"].startswith("Seq Scan on orders")
    assert "Seq Scan on orders" in text and "Seq Scan on orders" in page


def test_json_contract_keys() -> None:
    doc = rep.to_json(sample_summary().report(("pg.log",)))
    assert set(doc) == {
        "files",
        "period",
        "counts",
        "top_by_time",
        "top_by_count",
        "slowest",
        "plans",
        "lock_waits",
        "deadlocks",
        "temp_files",
        "errors",
        "hours",
        "unparsed",
        "loaded",
        "notes",
    }
    assert set(doc["top_by_time"][0]) == {
        "fingerprint",
        "query",
        "calls",
        "total_ms",
        "mean_ms",
        "max_ms",
        "share",
    }


def test_html_escapes_identifiers() -> None:
    page = rep.to_html(sample_summary().report(("<pg>.log",)))
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "&lt;pg&gt;.log" in page
    assert "<script" not in page


def test_anonymized_masks_everything_shown() -> None:
    report = sample_summary().report(("pg.log",))
    explained = rep.Execution(
        at=None,
        duration_ms=1.0,
        fingerprint="f",
        query="SELECT $1",
        params=("'alice'",),
        explain={"Plan": {"Node Type": "Seq Scan", "Filter": "(email = 'a@b.c'::text)"}},
    )
    report = rep.Report(**{**report.__dict__, "plans": (explained,)})
    shown = "".join(r(report.anonymized()) for r in rep.RENDERERS.values())
    for secret in ("a@b.c", "alice", "'7'", "secret"):
        assert secret not in shown, secret
    assert "Seq Scan" in shown


def test_an_empty_log_is_a_report() -> None:
    report = Summary().report(("empty.log",))
    text = rep.to_text(report)
    assert "no events" in text or "unparsed lines: 0" in text
    assert "none" in rep.to_html(report)
    assert rep.to_json(report)["unparsed"] == {"count": 0, "samples": []}


def test_plan_lines_and_sizes() -> None:
    doc = {
        "Plan": {
            "Node Type": "Hash Join",
            "Total Cost": 10.0,
            "Plan Rows": 5,
            "Hash Cond": "(a.id = b.id)",
            "Plans": [{"Node Type": "Seq Scan", "Relation Name": "a", "Total Cost": 4.0}],
        }
    }
    lines = rep.plan_lines(doc)
    assert lines[0].startswith("Hash Join") and "Hash Cond: (a.id = b.id)" in lines[1]
    assert lines[2].strip().startswith("-> Seq Scan on a")
    assert rep.human_bytes(0) == "0 B" and rep.human_bytes(1536) == "1.5 KiB"
