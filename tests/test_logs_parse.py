"""The log parser on small logs written here: formats, prefixes, events, text, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from querywatch.errors import InputError
from querywatch.fingerprint import fingerprint, normalize
from querywatch.logs.formats import compile_prefix, detect
from querywatch.logs.parser import detect_format, parse, shape_key
from querywatch.logs.records import (
    Autovacuum,
    Checkpoint,
    Connection,
    Deadlock,
    Disconnection,
    Error,
    LockWait,
    Plan,
    Statement,
    TempFile,
    Unparsed,
)
from querywatch.logs.summary import Summary, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "logs"

DEBIAN = "2024-05-01 10:00:00.123 UTC [42] bob@shop "
PGBADGER = "2024-05-01 10:00:00 CET [42]: [3-1] user=bob,db=shop,app=web,client=10.0.0.7 "
RDS = "2024-05-01 10:00:00 UTC:10.0.0.7(5432):bob@shop:[42]:"


def events(text: str | bytes, **kw: object) -> list[object]:
    data = text.encode() if isinstance(text, str) else text
    return list(parse([data], **kw))  # type: ignore[arg-type]


def only(found: list[object], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in found if isinstance(e, kind)]


@pytest.mark.parametrize(
    ("prefix", "user", "database", "pid", "at"),
    [
        (DEBIAN, "bob", "shop", 42, datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        (
            PGBADGER,
            "bob",
            "shop",
            42,
            datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=1))),
        ),
        (RDS, "bob", "shop", 42, datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01 10:00:00+02 pid=42 ", None, None, 42, datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ],
)
def test_prefixes_detected_fields_and_time_zones(
    prefix: str, user: str | None, database: str | None, pid: int, at: datetime
) -> None:
    line = prefix + "LOG:  duration: 1.500 ms  statement: SELECT * FROM t WHERE id = 7\n"
    (event,) = events(line * 3)[:1]
    assert isinstance(event, Statement)
    assert (event.user, event.database, event.pid) == (user, database, pid)
    assert event.at == at and event.at is not None and event.at.utcoffset() is not None
    assert event.duration_ms == 1.5
    assert event.query == "SELECT * FROM t WHERE id = $1"


def test_statement_fingerprint_is_the_pg_stat_statements_one() -> None:
    text = "select o.id from orders o where o.email = 'a@b.c' and o.id in (1, 2, 3)"
    (event,) = events(DEBIAN + "LOG:  duration: 3.0 ms  statement: " + text + "\n")
    assert event.fingerprint == fingerprint(text)
    # pg_stat_statements' text of the same statement has $n and another IN-list length
    assert event.fingerprint == fingerprint(
        "select o.id from orders o where o.email = $1 and o.id in ($2)"
    )
    assert event.query == normalize(text)


def test_prefix_given_and_compiled() -> None:
    prefix = "%m|%e|%a|%u|%d|%p| "
    line = '2024-05-01 10:00:00.5 UTC|42P01|my app, v2|bob|shop|7| ERROR:  relation "x" does not exist\n'
    (err,) = events(line, prefix=prefix)
    assert isinstance(err, Error)
    assert (err.sqlstate, err.application, err.user, err.database, err.pid) == (
        "42P01",
        "my app, v2",
        "bob",
        "shop",
        7,
    )
    with pytest.raises(InputError):
        detect_format(b"", fmt="csvlog", prefix=prefix)
    with pytest.raises(InputError):
        detect_format(b"", fmt="nope")


def test_compile_prefix_escapes() -> None:
    import re

    rx = re.compile(compile_prefix("%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h "))
    m = rx.match(b"2024-01-02 03:04:05 UTC [9]: [1-1] user=u,db=d,app=a b,client=::1 ")
    assert m is not None
    assert (m["pid"], m["user"], m["db"], m["app"], m["client"]) == (
        b"9",
        b"u",
        b"d",
        b"a b",
        b"::1",
    )


def test_multi_line_statement_tab_and_space_continuations() -> None:
    log = (
        DEBIAN + "LOG:  duration: 2.0 ms  statement: SELECT a,\n"
        "\t       b\n"
        "\tFROM t\n"
        "        WHERE c = 'x'\n"  # an editor made spaces of the tab
         + DEBIAN + "LOG:  duration: 1.0 ms  statement: SELECT 1\n"
    )
    first, second = events(log)
    assert first.query == "SELECT a,\n       b\nFROM t\n        WHERE c = $1"
    assert first.fingerprint == fingerprint("SELECT a, b FROM t WHERE c = 'y'")
    assert second.query == "SELECT $1"


def test_bind_parameters_kept_only_when_asked() -> None:
    log = (
        DEBIAN
        + "LOG:  duration: 0.8 ms  execute <unnamed>: SELECT * FROM t WHERE a = $1 AND b = $2\n"
        + DEBIAN
        + "DETAIL:  parameters: $1 = 'it''s, here', $2 = NULL\n"
    )
    (plain,) = events(log)
    assert plain.params is None and plain.text is None and plain.phase == "execute"
    (kept,) = events(log, keep_params=True)
    assert kept.params == ("'it''s, here'", "NULL")
    assert kept.text == "SELECT * FROM t WHERE a = $1 AND b = $2"


def test_non_ascii_and_invalid_utf8() -> None:
    log = (
        DEBIAN.encode()
        + "LOG:  duration: 1.0 ms  statement: SELECT 'café 日本' AS \"naïve\"\n".encode()
        + DEBIAN.encode()
        + b"LOG:  duration: 1.0 ms  statement: SELECT '\xe9t\xe9'\n"  # latin-1 bytes
    )
    first, second = events(log)
    assert first.query == 'SELECT $1 AS "naïve"'
    assert isinstance(second, Statement) and second.query == "SELECT $1"


def test_log_statement_paired_with_log_duration() -> None:
    log = (
        DEBIAN
        + "LOG:  statement: SELECT * FROM t WHERE id = 1\n"
        + DEBIAN
        + "LOG:  duration: 4.25 ms\n"
        + DEBIAN
        + "LOG:  statement: SELECT 2\n"  # never followed by its duration
    )
    found = events(log)
    assert [(e.query, e.duration_ms) for e in found] == [
        ("SELECT * FROM t WHERE id = $1", 4.25),
        ("SELECT $1", None),
    ]


def test_execute_of_a_prepared_statement_is_fingerprinted_as_its_prepare() -> None:
    log = (
        DEBIAN
        + "LOG:  duration: 0.1 ms  statement: execute foo(1);\n"
        + DEBIAN
        + "DETAIL:  prepare: prepare foo (int) as select $1;\n"
    )
    (event,) = events(log)
    assert event.fingerprint == fingerprint("prepare foo (int) as select $1;")


def test_auto_explain_text_and_json() -> None:
    text_plan = (
        DEBIAN + "LOG:  duration: 12.000 ms  plan:\n"
        "\tQuery Text: SELECT * FROM t\n"
        "\t  WHERE id = 5\n"
        "\tSeq Scan on t  (cost=0.00..1.01 rows=1 width=4) (actual time=0.01..0.02 rows=1 loops=1)\n"
    )
    doc = {"Query Text": "SELECT * FROM t WHERE id = 6", "Plan": {"Node Type": "Seq Scan"}}
    json_plan = (
        DEBIAN
        + "LOG:  duration: 13.000 ms  plan:\n\t"
        + json.dumps(doc, indent=2).replace("\n", "\n\t")
        + "\n"
    )
    first, second = events(text_plan + json_plan)
    assert isinstance(first, Plan) and isinstance(second, Plan)
    assert (first.format, second.format) == ("text", "json")
    assert first.fingerprint == second.fingerprint == fingerprint("SELECT * FROM t WHERE id = 1")
    assert "actual time" in first.plan and json.loads(second.plan) == doc
    assert (first.duration_ms, second.duration_ms) == (12.0, 13.0)


def test_lock_wait_deadlock_temp_file_and_maintenance() -> None:
    log = f"""{DEBIAN}LOG:  process 42 still waiting for ShareLock on transaction 77 after 1000.5 ms
{DEBIAN}DETAIL:  Process holding the lock: 43. Wait queue: 42, 44.
{DEBIAN}CONTEXT:  while updating tuple (0,1) in relation "accounts"
{DEBIAN}STATEMENT:  UPDATE accounts SET v = 1 WHERE id = 9
{DEBIAN}LOG:  process 42 acquired ShareLock on transaction 77 after 2500.0 ms
{DEBIAN}ERROR:  deadlock detected
{DEBIAN}DETAIL:  Process 42 waits for ShareLock on transaction 77; blocked by process 43.
\tProcess 43 waits for ShareLock on transaction 78; blocked by process 42.
{DEBIAN}STATEMENT:  UPDATE accounts SET v = 2 WHERE id = 8
{DEBIAN}LOG:  temporary file: path "base/pgsql_tmp/pgsql_tmp42.0", size 2147483648
{DEBIAN}STATEMENT:  SELECT * FROM big ORDER BY x
{DEBIAN}LOG:  checkpoint complete: wrote 10 buffers (0.1%); write=1.500 s, sync=0.010 s, total=1.600 s
{DEBIAN}LOG:  automatic vacuum of table "shop.public.accounts": index scans: 1
\tsystem usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.25 s
{DEBIAN}LOG:  automatic analyze of table "shop.public.accounts"
{DEBIAN}LOG:  connection received: host=10.0.0.7 port=5555
{DEBIAN}LOG:  connection authorized: user=bob database=shop
{DEBIAN}LOG:  disconnection: session time: 1:02:03.500 user=bob database=shop host=10.0.0.7
"""
    found = events(log)
    waiting, acquired = only(found, LockWait)
    assert (waiting.acquired, acquired.acquired) == (False, True)
    assert waiting.holders == (43,) and waiting.queue == (42, 44) and waiting.relation == "accounts"
    assert waiting.mode == "ShareLock" and waiting.wait_ms == 1000.5
    assert waiting.fingerprint == fingerprint("UPDATE accounts SET v = 1 WHERE id = 1")
    (deadlock,) = only(found, Deadlock)
    assert deadlock.processes == (42, 43)
    (error,) = only(found, Error)
    assert (error.sqlstate, error.severity, error.message) == (
        "40P01",
        "ERROR",
        "deadlock detected",
    )
    (temp,) = only(found, TempFile)
    assert temp.size_bytes == 2 * 1024**3 and temp.query == "SELECT * FROM big ORDER BY x"
    (checkpoint,) = only(found, Checkpoint)
    assert (checkpoint.buffers, checkpoint.write_ms, checkpoint.total_ms) == (10, 1500.0, 1600.0)
    vacuum, analyze = only(found, Autovacuum)
    assert (vacuum.action, vacuum.table, vacuum.elapsed_ms) == (
        "vacuum",
        "shop.public.accounts",
        250.0,
    )
    assert analyze.action == "analyze"
    assert [c.stage for c in only(found, Connection)] == ["received", "authorized"]
    (bye,) = only(found, Disconnection)
    assert bye.session_ms == (3600 + 2 * 60 + 3.5) * 1000
    summary = Summary().feed(found)  # type: ignore[arg-type]
    assert summary.lock_waits == 1  # still waiting, then acquired: one wait
    assert summary.errors_by_sqlstate() == {"40P01": 1}


def test_error_values_masked_unless_kept() -> None:
    log = DEBIAN + 'ERROR:  invalid input syntax for type integer: "abc"\n'
    (masked,) = events(log)
    assert masked.message == "invalid input syntax for type integer: ?"
    (kept,) = events(log, keep_params=True)
    assert kept.message == 'invalid input syntax for type integer: "abc"'


def test_bad_input_is_counted_and_the_rest_read() -> None:
    good = DEBIAN + "LOG:  duration: 1.0 ms  statement: SELECT 1\n"
    log = (
        good.encode()
        + b"\x00\xff\xfe garbage \x89PNG\r\n"
        + b"2024-05-01 10:00:00.1 UTC [42] bob@shop LOG:  durat"  # a line cut short...
        + b"\n"
        + b"someone's note: not a log line\n"
        + good.encode()
        + good.encode()[:25]  # ...and the file's last line too
    )
    found = events(log)
    statements = only(found, Statement)
    bad = only(found, Unparsed)
    assert len(statements) == 2
    assert [u.line_no for u in bad] == [2, 4, 6]
    assert all(u.sample and u.reason for u in bad)
    summary = Summary().feed(found)  # type: ignore[arg-type]
    assert summary.unparsed == 3 and len(summary.unparsed_samples()) == 3


def test_unknown_prefix_lines_are_unparsed_not_fatal() -> None:
    log = "<<weird>> LOG statement SELECT 1\n" * 3
    found = events(log)
    assert len(found) == 3 and all(isinstance(e, Unparsed) for e in found)


def test_pieces_of_any_size_give_the_same_events() -> None:
    log = (
        (DEBIAN + "LOG:  duration: 2.0 ms  statement: SELECT a,\n\tb FROM t WHERE x = 1\n")
        + DEBIAN
        + "ERROR:  boom\n"
        + DEBIAN
        + "STATEMENT:  SELECT 2\n"
    ) * 5
    whole = events(log)
    data = log.encode()
    for size in (1, 7, 64):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(parse(pieces)) == whole
    assert list(parse(log.splitlines(keepends=True))) == whole


def test_an_empty_piece_flushes_what_is_complete() -> None:
    line = (DEBIAN + "LOG:  duration: 2.0 ms  statement: SELECT 1\n").encode()
    got: list[object] = []

    def feed() -> object:
        yield line
        yield b""
        assert len(got) == 1  # given out before more is read (--follow)
        yield line

    for event in parse(feed()):  # type: ignore[arg-type]
        got.append(event)
    assert len(got) == 2


SAMPLES = {
    "csvlog": (
        '2024-05-01 10:00:00.123 UTC,"bob","shop",42,"10.0.0.7:5555",6632c0a0.2a,1,"SELECT",'
        '2024-05-01 09:59:00 UTC,3/4,0,LOG,00000,"duration: 5.000 ms  execute <unnamed>: SELECT *\n'
        'FROM t WHERE id = $1","parameters: $1 = \'7\'",,,,,,,,"psql","client backend",,0\n'
        '2024-05-01 10:00:01.000 UTC,"bob","shop",42,"10.0.0.7:5555",6632c0a0.2a,2,"SELECT",'
        '2024-05-01 09:59:00 UTC,3/5,0,ERROR,42P01,"relation ""x"" does not exist",,,,,,'
        '"select * from x",15,,"psql","client backend",,0\n'
    ),
    "jsonlog": "\n".join(
        json.dumps(d)
        for d in (
            {
                "timestamp": "2024-05-01 10:00:00.123 UTC",
                "user": "bob",
                "dbname": "shop",
                "pid": 42,
                "error_severity": "LOG",
                "message": "duration: 5.000 ms  statement: SELECT * FROM t WHERE id = 7",
                "application_name": "psql",
            },
            {
                "timestamp": "2024-05-01 10:00:01.000 UTC",
                "user": "bob",
                "dbname": "shop",
                "pid": 42,
                "error_severity": "ERROR",
                "state_code": "42P01",
                "message": 'relation "x" does not exist',
                "statement": "select * from x",
            },
        )
    )
    + "\n",
    "syslog": (
        "May  1 10:00:00 db postgres[42]: [5-1] user=bob,db=shop LOG:  "
        "duration: 5.000 ms  statement: SELECT *\n"
        "May  1 10:00:00 db postgres[42]: [5-2] #011FROM t WHERE id = 7\n"
        "May  1 10:00:01 db systemd[1]: Started something.\n"
        'May  1 10:00:01 db postgres[42]: [6-1] user=bob,db=shop ERROR:  relation "x" does not exist\n'
        "May  1 10:00:01 db postgres[42]: [6-2] user=bob,db=shop STATEMENT:  select * from x\n"
    ),
    "logplex": (
        "2024-05-01T10:00:00+00:00 app[postgres.42]: [GREEN] [5-1]  sql_error_code = 00000 LOG:  "
        "duration: 5.000 ms  statement: SELECT * FROM t WHERE id = 7\n"
        "2024-05-01T10:00:01+00:00 app[postgres.42]: [GREEN] [6-1]  sql_error_code = 42P01 ERROR:  "
        'relation "x" does not exist\n'
        "2024-05-01T10:00:01+00:00 app[postgres.42]: [GREEN] [6-2]  sql_error_code = 42P01 STATEMENT:  "
        "select * from x\n"
    ),
    "cloudsql": "\n".join(
        json.dumps({"textPayload": p, "timestamp": "2024-05-01T10:00:00.123Z", "insertId": "x"})
        for p in (
            "[42]: [1-1] db=shop,user=bob LOG:  duration: 5.000 ms  statement: SELECT *",
            "\tFROM t WHERE id = 7",
            '[42]: [2-1] db=shop,user=bob ERROR:  relation "x" does not exist',
            "[42]: [2-2] db=shop,user=bob STATEMENT:  select * from x",
        )
    )
    + "\n",
    "cnpg": "\n".join(
        json.dumps({"level": "info", "logger": "postgres", "msg": "record", "record": r})
        for r in (
            {
                "log_time": "2024-05-01 10:00:00.123 UTC",
                "user_name": "bob",
                "database_name": "shop",
                "process_id": "42",
                "error_severity": "LOG",
                "message": "duration: 5.000 ms  statement: SELECT * FROM t WHERE id = 7",
            },
            {
                "log_time": "2024-05-01 10:00:01.000 UTC",
                "user_name": "bob",
                "database_name": "shop",
                "process_id": "42",
                "error_severity": "ERROR",
                "sql_state_code": "42P01",
                "message": 'relation "x" does not exist',
                "query": "select * from x",
            },
        )
    )
    + "\n",
}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_formats_detected_and_read_alike(fmt: str) -> None:
    data = SAMPLES[fmt].encode()
    assert detect(data).name == fmt
    found = list(parse([data], year=2024))
    statement, error = only(found, Statement), only(found, Error)
    assert len(statement) == 1 and len(error) == 1, found
    assert statement[0].fingerprint == fingerprint("SELECT * FROM t WHERE id = 1")
    assert statement[0].duration_ms == 5.0 and statement[0].pid == 42
    assert statement[0].at is not None and statement[0].at.year == 2024
    assert error[0].query == "select * from x"
    # the SQLSTATE is in the record (csv, json) or in the prefix (%e, Heroku's sql_error_code)
    assert error[0].sqlstate == (None if fmt in ("syslog", "cloudsql") else "42P01")
    assert statement[0].user in ("bob", None)
    assert not only(found, Unparsed)


def test_shape_key_same_key_same_fingerprint() -> None:
    texts = [
        "SELECT * FROM t1 WHERE a = 1",
        "SELECT * FROM t2 WHERE a = 1",
        "SELECT * FROM t1 WHERE a = 'x'",
        'SELECT "t1".a FROM "t1" WHERE a IN (1, 2, 3)',
        'SELECT "t2".a FROM "t1" WHERE a IN ($1)',
        "SELECT * FROM events_2024_01 WHERE a = 1.5e3",
        "SELECT * FROM events_2024_02 WHERE a = 2",
        "SELECT 'it''s' FROM t1",
        "SELECT $$x$$ FROM t1",
        "SELECT e'a\\'b' FROM t1",
        "INSERT INTO t1 VALUES (1, 2)",
        "INSERT INTO t1 VALUES (1)",
        "SELECT a FROM t1 WHERE b in (1,2)",
        "SELECT a FROM t1 WHERE b IN (SELECT 1)",
    ]
    by_key: dict[bytes, set[str]] = {}
    for text in texts:
        by_key.setdefault(shape_key(text.encode()), set()).add(fingerprint(text))
    assert all(len(fps) == 1 for fps in by_key.values()), by_key
    assert len(by_key) >= 9


def test_summarize_fast_path_equals_events() -> None:
    lines = []
    for i in range(300):
        lines.append(
            DEBIAN
            + f"LOG:  duration: {i % 17 + 0.5} ms  statement: SELECT * FROM t WHERE id = {i}\n"
        )
        lines.append(
            DEBIAN + f"LOG:  duration: {i / 3:.3f} ms  execute <unnamed>: SELECT $1 FROM u\n"
        )
        lines.append(DEBIAN + "DETAIL:  parameters: $1 = '1'\n")
        if i % 50 == 0:
            lines.append(DEBIAN + "ERROR:  boom\n" + DEBIAN + "STATEMENT:  SELECT 1\n")
            lines.append(
                DEBIAN.replace("10:00", "11:00") + "LOG:  duration: 99 ms  statement: SELECT 1\n"
            )
    data = "".join(lines).encode()
    fast = summarize([data])
    slow = Summary().feed(parse([data]))
    assert fast.report() == slow.report()
    (t,) = [s for s in fast.statements() if s.query == "SELECT * FROM t WHERE id = $1"]
    assert t.calls == 300 and t.p50_ms is not None and t.max_ms == 16.5 and t.min_ms == 0.5
    assert fast.counts["statements"] == 606


def test_percentiles_within_the_histogram_error() -> None:
    summary = Summary()
    for i in range(1, 1001):
        summary.add(
            Statement(at=None, line_no=i, duration_ms=float(i), fingerprint="f", query="SELECT $1")
        )
    (stats,) = summary.statements()
    for value, want in ((stats.p50_ms, 500), (stats.p95_ms, 950), (stats.p99_ms, 990)):
        assert value is not None and abs(value - want) / want < 0.05
    assert (stats.min_ms, stats.max_ms, stats.calls) == (1.0, 1000.0, 1000)


def test_syslog_parts_of_interleaved_messages_reassembled() -> None:
    """Two processes' messages interleave line by line; each part joins its (pid, n) message."""
    data = (FIXTURES / "syslog-interleaved.log").read_bytes()
    assert detect(data).name == "syslog"
    found = list(parse([data], year=2024))
    by_ms = {s.duration_ms: s for s in only(found, Statement)}
    assert by_ms[5.0].pid == 42
    assert by_ms[5.0].fingerprint == fingerprint("SELECT * FROM t WHERE id = 1")
    assert by_ms[7.0].pid == 43 and by_ms[7.0].fingerprint == fingerprint("SELECT a FROM u")
    errors = {e.pid: e for e in only(found, Error)}
    assert errors[43].query == "select * from x" and errors[43].message.startswith("relation")
    assert errors[42].query == "select $1/$2" and errors[42].message == "division by zero"
    # a part of a message given out already (its process logged message 6 since) is unparsed
    (late,) = only(found, Unparsed)
    assert late.line_no == 11 and "late" in late.sample
    assert len(only(found, Statement)) == 3
