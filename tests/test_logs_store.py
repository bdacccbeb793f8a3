"""Server-log events in the history store (querywatch.logs.load, querywatch.store.logevents):
durations as intervals of source 'logs' that the existing readers sum, no double counting with a
reload or with pg_stat_statements, plans into the plan history, events kept once."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from querywatch.audit.run import plan_changes
from querywatch.fingerprint import fingerprint, normalize
from querywatch.logs.load import Loader, plan_document, text_plan
from querywatch.logs.records import Event, LockWait, Plan, Statement, TempFile
from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Store
from querywatch.store.logevents import log_queryid

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
SLOW = "SELECT * FROM orders WHERE email = 'a@b.c'"
FAST = "SELECT id FROM users WHERE id = 5"
LAST = 590.001  # seconds after T0 of the workload's last statement


def stmt(
    seconds: float, text: str, ms: float, phase: str = "statement", app: str = ""
) -> Statement:
    return Statement(
        at=T0 + timedelta(seconds=seconds),
        line_no=1,
        pid=100,
        application=app or None,
        duration_ms=ms,
        fingerprint=fingerprint(text),
        query=normalize(text),
        phase=phase,
    )


def workload() -> list[Event]:
    """10 minutes: FAST every 10 s (2 ms), SLOW 3 times a minute in minutes 5-9 (150 ms);
    parse/bind lines (not calls) and querywatch's own statement beside them."""
    events: list[Event] = []
    for s in range(0, 600, 10):
        events.append(stmt(s, FAST, 2.0, "parse"))
        events.append(stmt(s + 0.001, FAST, 2.0, "execute"))
    for minute in range(5, 10):
        events += [stmt(minute * 60 + k * 15, SLOW, 150.0) for k in range(3)]
    events.append(stmt(30, "SELECT 1 FROM pg_stat_statements", 1.0, app="querywatch"))
    return sorted(events, key=lambda e: e.at or T0)


def load(store: Store, events: list[Event], server: str = "db1") -> Loader:
    srv = store.server(server)
    loader = Loader(store, srv.id)
    loader.add_all(events)
    return loader


def test_durations_become_intervals_the_readers_sum(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as st:
        result = load(st, workload()).result
        srv = st.server("db1")
        rows, covered = st.totals(srv.id, T0.timestamp() - 1, T0.timestamp() + 600)
    by_fp = {r.fingerprint: r for r in rows}
    assert result.statements == 60 + 15 + 1  # execute and statement phases, not parse
    assert by_fp[fingerprint(FAST)].counters.calls == 60
    assert by_fp[fingerprint(FAST)].counters.exec_ms == pytest.approx(120.0)
    assert by_fp[fingerprint(SLOW)].counters.calls == 15
    assert by_fp[fingerprint(SLOW)].counters.exec_ms == pytest.approx(2250.0)
    assert fingerprint("SELECT 1 FROM pg_stat_statements") not in by_fp  # own: left out
    assert by_fp[fingerprint(SLOW)].queryids == ()  # a log has no queryid: none is invented
    assert by_fp[fingerprint(SLOW)].query == normalize(SLOW)
    # ten 1-minute buckets, empty ones included; the last one ends with the log's last line
    assert covered == pytest.approx(LAST)
    assert result.buckets == 10


def test_loading_the_same_log_again_adds_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as st:
        load(st, workload())
        again = load(st, workload()).result
        srv = st.server("db1")
        rows, _ = st.totals(srv.id, T0.timestamp() - 1, T0.timestamp() + 600)
    assert again.statements == 0 and again.already_loaded == 76
    assert {r.fingerprint: r.counters.calls for r in rows}[fingerprint(FAST)] == 60


def test_a_log_that_goes_on_adds_to_its_last_bucket(tmp_path: Path) -> None:
    events = workload()
    cut = next(i for i, e in enumerate(events) if e.at and e.at >= T0 + timedelta(seconds=335))
    with Store(tmp_path / "s.db") as st:
        load(st, events[:cut])
        load(st, events[cut:])
        srv = st.server("db1")
        rows, covered = st.totals(srv.id, T0.timestamp() - 1, T0.timestamp() + 600)
        intervals = st.summaries(srv.id, T0.timestamp(), T0.timestamp() + 600)
    calls = {r.fingerprint: r.counters.calls for r in rows}
    assert calls[fingerprint(FAST)] == 60 and calls[fingerprint(SLOW)] == 15
    assert len(intervals) == 10 and covered == pytest.approx(LAST)


def test_pg_stat_statements_intervals_win_over_the_log(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as st:
        srv = st.server("db1")
        key = StatementKey(5, 10, 42, True)
        start = T0.timestamp() + 300  # pg_stat_statements collected minutes 5-9
        pgss = Interval(
            start=start,
            end=start + 300,
            statements=(StatementDelta(key, Counters(calls=7, exec_ms=70.0)),),
            database=None,
        )
        st.record_interval(srv.id, pgss, {key: fingerprint(SLOW)}, {fingerprint(SLOW): "q"})
        result = load(st, workload()).result
        rows, covered = st.totals(srv.id, T0.timestamp() - 1, T0.timestamp() + 600)
    calls = {r.fingerprint: r.counters.calls for r in rows}
    assert result.skipped_buckets == 5 and result.buckets == 5
    assert calls[fingerprint(SLOW)] == 7  # from pg_stat_statements only
    assert calls[fingerprint(FAST)] == 30  # the log's minutes 0-4
    assert covered == pytest.approx(600.0)
    assert {r.fingerprint: r.queryids for r in rows}[fingerprint(SLOW)] == (42,)


def test_buckets_behind_the_rollup_marks_are_rolled_up_at_once(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as st:
        st.server("other")
        st.maintain(now=T0.timestamp() + 3 * 86400)  # rollups done up to three days later
        load(st, workload())
        st.maintain(now=T0.timestamp() + 3 * 86400 + 60)  # raw intervals past retention go
        srv = st.server("db1")
        assert st.summaries(srv.id, T0.timestamp(), T0.timestamp() + 600) == []
        rows, covered = st.totals(srv.id, T0.timestamp(), T0.timestamp() + 600)
    calls = {r.fingerprint: r.counters.calls for r in rows}
    assert calls[fingerprint(SLOW)] == 15 and calls[fingerprint(FAST)] == 60
    assert covered == pytest.approx(LAST)


def lock_wait(seconds: float, acquired: bool, wait_ms: float) -> LockWait:
    return LockWait(
        at=T0 + timedelta(seconds=seconds),
        line_no=1,
        pid=7,
        mode="ShareLock",
        lock="transaction 727",
        relation=None,
        wait_ms=wait_ms,
        acquired=acquired,
        holders=(6,),
        queue=(7,),
        fingerprint=fingerprint("UPDATE t SET v = 1 WHERE id = 1"),
        query=normalize("UPDATE t SET v = 1 WHERE id = 1"),
    )


def test_events_are_kept_once(tmp_path: Path) -> None:
    events: list[Event] = [
        lock_wait(1, False, 100.0),
        lock_wait(1.4, True, 499.9),
        TempFile(
            at=T0 + timedelta(seconds=2),
            line_no=9,
            pid=7,
            path="base/pgsql_tmp/pgsql_tmp7.0",
            size_bytes=1_400_000,
            fingerprint=None,
            query=None,
        ),
    ]
    with Store(tmp_path / "s.db") as st:
        first = load(st, events).result
        second = load(st, events).result
        srv = st.server("db1")
        waits = st.log_events(srv.id, "lock_wait", T0.timestamp(), T0.timestamp() + 10)
        counts = st.log_event_counts(srv.id, T0.timestamp(), T0.timestamp() + 10)
    assert (first.events, second.events) == (3, 0)
    assert counts == {"lock_wait": 2, "temp_file": 1}
    assert [w.value for w in waits] == [100.0, 499.9]
    assert json.loads(waits[1].detail)["holders"] == [6]


JSON_PLAN = {
    "Query Text": "SELECT count(*) FROM t WHERE v LIKE 'v1%'",
    "Plan": {
        "Node Type": "Aggregate",
        "Total Cost": 25.9,
        "Plans": [{"Node Type": "Seq Scan", "Relation Name": "t", "Total Cost": 25.88}],
    },
}
TEXT_PLAN = """Query Text: SELECT count(*) FROM t WHERE id > 10
Aggregate  (cost=20.38..20.39 rows=1 width=8) (actual time=0.140..0.141 rows=1 loops=1)
  ->  Index Only Scan using t_pkey on t  (cost=0.28..17.90 rows=990 width=0) (actual rows=990)
        Index Cond: (id > 10)
        Heap Fetches: 0"""


def plan(fmt: str, text: str, query: str) -> Plan:
    return Plan(
        at=T0,
        line_no=1,
        duration_ms=0.1,
        fingerprint=fingerprint(query),
        query=normalize(query),
        format=fmt,  # type: ignore[arg-type]
        plan=text,
    )


def test_plans_feed_the_plan_history(tmp_path: Path) -> None:
    jq = "SELECT count(*) FROM t WHERE v LIKE 'v1%'"
    tq = "SELECT count(*) FROM t WHERE id > 10"
    with Store(tmp_path / "s.db") as st:
        load(st, [plan("json", json.dumps(JSON_PLAN), jq), plan("text", TEXT_PLAN, tq)])
        srv = st.server("db1")
        stored_json = st.plans(fingerprint(jq), srv.id)
        stored_text = st.plans(fingerprint(tq), srv.id)
    assert [p.total_cost for p in stored_json] == [25.9]
    assert stored_json[0].plan["Plan"]["Plans"][0]["Node Type"] == "Seq Scan"
    assert [p.total_cost for p in stored_text] == [20.39]
    child = stored_text[0].plan["Plan"]["Plans"][0]
    assert (child["Node Type"], child["Index Name"], child["Relation Name"]) == (
        "Index Only Scan",
        "t_pkey",
        "t",
    )


def test_a_text_plan_without_nodes_is_not_a_plan() -> None:
    assert text_plan("Query Text: SELECT 1\nnot a plan") is None
    assert plan_document(plan("json", "{broken", "SELECT 1")) is None


def test_log_statement_ids_never_look_like_a_real_database() -> None:
    assert log_queryid(fingerprint(SLOW)) == log_queryid(fingerprint(SLOW))
    assert log_queryid(fingerprint(SLOW)) != log_queryid(fingerprint(FAST))


def test_stored_plans_keep_no_values_unless_asked(tmp_path: Path) -> None:
    jq = "SELECT count(*) FROM t WHERE v LIKE 'v1%'"
    doc = {**JSON_PLAN, "Plan": {**JSON_PLAN["Plan"], "Filter": "(v ~~ 'v1%'::text)"}}
    with Store(tmp_path / "s.db") as st:
        srv = st.server("db1")
        Loader(st, srv.id).add_all([plan("json", json.dumps(doc), jq)])
        masked = st.plans(fingerprint(jq), srv.id)[0].plan
        kept_srv = st.server("db2")
        Loader(st, kept_srv.id, keep_values=True).add_all([plan("json", json.dumps(doc), jq)])
        kept = st.plans(fingerprint(jq), kept_srv.id)[0].plan
    assert "v1%" not in json.dumps(masked)
    assert masked["Query Text"] == normalize(jq) and masked["Plan"]["Filter"] == "(v ~~ '?'::text)"
    assert "v1%" in json.dumps(kept)


def test_a_long_silence_is_left_uncovered(tmp_path: Path) -> None:
    """Two statements two years apart (a log with a bogus date): two buckets, not a million."""
    events: list[Event] = [stmt(0, FAST, 1.0), stmt(2 * 365 * 86400, FAST, 1.0)]
    events += [stmt(600 + s, FAST, 1.0) for s in range(0, 1200, 300)]  # a 5-minute cadence
    with Store(tmp_path / "s.db") as st:
        result = load(st, sorted(events, key=lambda e: e.at or T0)).result
    assert result.statements == 6
    assert result.buckets == 26 + 1  # minutes 0-25 (silences under an hour filled); the last


def test_a_plan_change_across_a_deploy_is_seen_by_audit(tmp_path: Path) -> None:
    """auto_explain plans before and after a deploy: the audit names the plan change."""
    q = "SELECT count(*) FROM t WHERE v LIKE 'v1%'"
    indexed = {
        "Plan": {
            "Node Type": "Aggregate",
            "Total Cost": 8.3,
            "Plans": [{"Node Type": "Index Only Scan", "Relation Name": "t", "Index Name": "t_v"}],
        }
    }
    before, after = plan("json", json.dumps(indexed), q), plan("json", json.dumps(JSON_PLAN), q)
    after = dataclasses.replace(after, at=T0 + timedelta(hours=1))
    with Store(tmp_path / "s.db") as st:
        srv = st.server("db1")
        Loader(st, srv.id).add_all([before, after])
        deploy = st.add_deploy("v2", (T0 + timedelta(minutes=30)).timestamp())
        changes = plan_changes(st, srv.id, deploy, [fingerprint(q)])
    assert changes is not None and fingerprint(q) in changes
    change = changes[fingerprint(q)]
    assert "Index Only Scan" in str(change) and "Seq Scan" in str(change)


def test_store_fast_path_loads_what_the_events_load(tmp_path: Path) -> None:
    """logs --store reads duration lines without an event each (Loader.timed): the same rows as
    loading every Statement event, own statements, bind steps and time zones included."""
    from querywatch.logs.commands import Run
    from querywatch.logs.parser import parse
    from querywatch.logs.reader import read_chunks

    lines = []
    for i in range(900):
        zone = "UTC" if i < 600 else "CET"  # a zone change: the same minutes, offset
        stamp = f"2026-11-30 10:{i // 60 % 60:02d}:{i % 60:02d}" + ("" if i % 3 else ".250")
        app = "querywatch" if i % 50 == 1 else "web"
        head = f"{stamp} {zone} [{100 + i % 7}]: [{i}-1] user=app,db=shop,app={app},client=h "
        phase = "bind <unnamed>" if i % 5 == 0 else "statement"
        lines.append(
            f"{head}LOG:  duration: {i % 13 + 0.5:.3f} ms  {phase}: SELECT * FROM t{i % 4} "
            f"WHERE id = {i}\n"
        )
        if i % 97 == 0:
            lines.append(f'{head}LOG:  temporary file: path "base/t{i}", size 8192\n')
    path = tmp_path / "pg.log"
    path.write_text("".join(lines))
    found = {}
    for way in ("fast", "events"):
        with Store(tmp_path / f"{way}.db") as st:
            loader = Loader(st, st.server("db1").id)
            if way == "fast":
                Run(files=[str(path)], loader=loader).read_all()
                result = loader.close()
            else:
                result = loader.add_all(parse(read_chunks(path)))
            rows, covered = st.totals(st.server("db1").id, 0, 2e9)
            found[way] = (
                result.as_dict(),
                sorted((r.fingerprint, r.counters.calls, r.counters.exec_ms) for r in rows),
                covered,
                st.log_event_counts(st.server("db1").id, 0, 2e9),
            )
    assert found["fast"] == found["events"]
    assert found["fast"][0]["statements"] == 900 - 180  # bind steps left out (own ones kept apart)
