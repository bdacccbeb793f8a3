"""querywatch's log reading against pgBadger's, file by file, on pgBadger's own test corpus.

For each file of tests/fixtures/logs/pgbadger, pgBadger (``pgbadger -o out.json FILE``; the
Debian package) and querywatch read the same file; these must agree:

* statements: pgBadger's ``queries_number`` = querywatch's executions (``statement`` and
  ``execute`` phases; pgBadger too keeps ``parse``/``bind`` durations apart);
* durations: pgBadger's total execute time = the sum of querywatch's statement durations;
* temp files: the count;
* lock waits: pgBadger counts the ``acquired ... after N ms`` messages (a wait that ended);
  querywatch gives every message (``LockWait.acquired``) and its summary counts one wait per
  process and lock, finished or not (a deadlock victim never acquires): the test compares the
  acquired ones with pgBadger's;
* errors: messages of severity ERROR, FATAL and PANIC. pgBadger's ``errors_number`` also counts
  some LOG messages it files under its events (``database system was shut down``, ``process N
  still waiting for ...``): their original text starts with ``LOG:``, the test leaves them out;
* the normalized statements: each of pgBadger's normalized texts (the five most frequent first)
  has the same count when querywatch's statements (their logged text, ``keep_params``) are
  normalized the way pgBadger does it (lowercase, values and ``$n`` as ``?``, IN lists as
  ``in (...)``, quoted aliases kept, bind parameters put in, EXECUTE named by its PREPARE), and
  each of the top five is one querywatch fingerprint or a part of one (the fingerprint may join
  more: libpg_query ignores what pgBadger's regexes keep). Two pgBadger habits are reproduced or
  left out, precisely: it cuts a bind parameter value at its first comma (so the executions of one
  statement with range values fall in several groups, see postgresql_param_range.log), and it
  drops the ``$n`` of a PREPARE's body (``prepare foo (int) as select;``, one group of
  queryid.log), which querywatch keeps.

Formats pgBadger cannot detect by itself are given to it (``-f csv`` ...). pgBadger 12 reads no
CloudNativePG log (its -f jsonlog finds no record inside the operator's wrapper): for that file
the counts are compared with the log's own records. The pgbouncer logs of the corpus are not
PostgreSQL server logs: both find no statement in them (pgBadger reads them as pgbouncer's).

pgBadger is run when installed; under CI=true it must be (the test fails instead of skipping).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from querywatch.logs.parser import parse
from querywatch.logs.reader import read_chunks
from querywatch.logs.records import LockWait, Statement
from querywatch.logs.summary import Summary

CORPUS = Path(__file__).parent / "fixtures" / "logs" / "pgbadger"
FILES = sorted(
    p.name
    for p in CORPUS.iterdir()
    if p.name not in ("LICENSE", "README.md") and p.suffix != ".expected"
)
# one worker runs the module: pgBadger reads the whole corpus once (its module-scoped fixture), not
# once per xdist worker (about 70 MB of logs at ~1.3 MB/s)
pytestmark = pytest.mark.xdist_group("pgbadger")
PGBADGER_ARGS: dict[str, tuple[str, ...]] = {
    "anonymize.log": ("-f", "csv"),
    "csv_statement_without_duration.log": ("-f", "csv"),
    "weeknumber.log": ("-f", "csv"),
    "cnpg.log.gz": ("-f", "jsonlog"),
    "pg-timezones.log": ("-f", "rds"),
    "postgresql_param_range.log": ("--prefix", "%t [%p]: [%l-1] [%x] usr=%u,db=%d,appli=%a "),
}


def _pgbadger_or_skip() -> str:
    found = shutil.which("pgbadger")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbadger is not installed (CI installs the Debian package pgbadger)")
        pytest.skip("pgbadger is not installed")
    return found


@pytest.fixture(scope="module")
def pgbadger_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """pgBadger's JSON output for every corpus file (one run each, shared by the tests)."""
    exe = _pgbadger_or_skip()
    out_dir = tmp_path_factory.mktemp("pgbadger")
    found: dict[str, dict[str, Any]] = {}
    for name in FILES:
        out = out_dir / f"{name}.json"
        # its own pid file: pgBadger refuses to start while /tmp/pgbadger.pid (another worker) exists
        argv = [exe, "-q", "--pid-dir", str(out_dir), *PGBADGER_ARGS.get(name, ())]
        argv += ["-o", str(out), str(CORPUS / name)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"pgbadger {name}: {done.stderr.strip()}"
        found[name] = json.loads(out.read_text(encoding="utf-8"))
    return found


def _instances(doc: dict[str, Any]) -> list[dict[str, Any]]:
    overall = doc["overall_stat"]
    return [
        v
        for k, v in overall.items()
        if isinstance(v, dict) and "queries_duration" in v and k != "prepare"
    ]


def pgbadger_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures compared, read from pgBadger's JSON."""
    errors = 0
    for per_instance in doc["error_info"].values():
        for row in per_instance.values():
            original = (row.get("error") or [""])[0] or ""
            if original.startswith(("ERROR:", "FATAL:", "PANIC:")):
                errors += row["count"]
    normalized: Counter[str] = Counter()
    for per_instance in doc["normalyzed_info"].values():
        for text, row in per_instance.items():
            normalized[text] += row["count"]
    return {
        "statements": doc["overall_stat"]["queries_number"],
        "duration_ms": sum(i["queries_duration"].get("execute", 0) for i in _instances(doc)),
        "temp_files": sum(v.get("count", 0) for v in doc["tempfile_info"].values()),
        "lock_waits": sum(m.get("count", 0) for v in doc["lock_info"].values() for m in v.values()),
        "errors": errors,
        "normalized": normalized,
    }


@functools.cache
def querywatch_figures(path: Path) -> dict[str, Any]:
    """The same figures from querywatch: the summary, and the events for the details."""
    summary = Summary()
    normalized: Counter[str] = Counter()
    groups: dict[str, set[str]] = defaultdict(set)
    acquired = 0
    cut: Counter[str] = Counter()
    untimed: set[str] = set()
    timed: set[str] = set()
    for event in parse(read_chunks(path), keep_params=True):
        summary.add(event)
        if isinstance(event, Statement) and event.phase in ("statement", "execute"):
            key = pgbadger_key(event)
            normalized[key] += 1
            cut[pgbadger_key(event, cut=True)] += 1
            groups[key].add(event.fingerprint)
            (timed if event.duration_ms is not None else untimed).add(key)
        elif isinstance(event, LockWait) and event.acquired:
            acquired += 1
    counts = summary.counts
    stats = summary.statements()
    return {
        "statements": sum(s.calls for s in stats),
        "duration_ms": sum(s.total_ms for s in stats),
        "temp_files": counts.get("temp_files", 0),
        "lock_waits": acquired,
        "errors": sum(summary.errors_by_sqlstate().values()),
        "normalized": normalized,
        "cut": cut,
        "groups": groups,
        "untimed": untimed - timed,  # groups logged without any duration (log_statement)
    }


_PGB_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_PGB_ALIAS = re.compile(r'\bAS\s+"([^"]+)"', re.IGNORECASE)
_PGB_STRING = re.compile(r"'[^']*'")
_PGB_NUMBER = re.compile(r"([^a-z0-9_\$\-])-?\d+")
_PGB_PARAM = re.compile(r"\$\d+")
_PGB_IN = re.compile(r"\bin\s*\([\'0-9\,\s\?]*\)")


def pgbadger_normalize(text: str) -> str:
    """pgBadger's ``normalize_query`` (pgbadger 12), the parts its corpus needs."""
    aliases = iter(_PGB_ALIAS.findall(text))
    q = _PGB_COMMENT.sub("", text).lower()
    q = re.sub(r"\s+", " ", q)
    q = _PGB_ALIAS.sub(lambda _: f'AS "{next(aliases, "")}"', q)  # quoted aliases keep their case
    q = q.replace("\\'", "")
    q = _PGB_STRING.sub("?", q)
    q = re.sub(r"\?(\?)+", "?", q)
    q = re.sub(r"=\s*null", "= ?", q)
    q = _PGB_NUMBER.sub(r"\1?", q)
    q = _PGB_PARAM.sub("?", q)
    q = _PGB_IN.sub("in (...)", q)
    return q.strip()


_EXECUTE = re.compile(r"execute\s+(\w+)\s*\(", re.IGNORECASE)
_PREPARED = re.compile(r"^prepare\s+\w+(?:\s*\([^)]*\))?\s+as\s+", re.IGNORECASE)


def pgbadger_key(event: Statement, cut: bool = False) -> str:
    """How pgBadger names a statement: bind parameters put in, EXECUTE named with its PREPARE.

    ``cut``: each parameter value cut at its first comma, as pgBadger 12 reads the DETAIL line.
    """
    text = event.text or ""
    for number, value in reversed(list(enumerate(event.params or (), 1))):
        text = text.replace(f"${number}", value.split(",")[0] if cut else value)
    execute = _EXECUTE.match(text)
    if execute and event.query.lower().startswith("prepare"):
        return f"[ execute {execute[1].lower()} (?) ] - " + pgbadger_normalize(
            _PREPARED.sub("", event.query)
        )
    return pgbadger_normalize(text)


def _key(text: str) -> str:
    return text.strip().rstrip(";").strip()


@pytest.mark.parametrize("name", FILES)
def test_counts_match_pgbadger(name: str, pgbadger_json: dict[str, dict[str, Any]]) -> None:
    theirs = pgbadger_figures(pgbadger_json[name])
    ours = querywatch_figures(CORPUS / name)
    if name == "cnpg.log.gz":
        assert theirs["statements"] == 0  # pgBadger 12 reads nothing of it: see the docstring
        expected = _cnpg_records(CORPUS / name)
        assert ours["statements"] == expected["statements"] > 0
        assert ours["errors"] == expected["errors"] > 0
        assert ours["temp_files"] == expected["temp_files"]
        assert ours["duration_ms"] == pytest.approx(expected["duration_ms"], abs=0.01)
        return
    assert ours["statements"] == theirs["statements"]
    # pgBadger gives a statement logged without a duration (log_statement, csvlog) the duration
    # of the line before it; PostgreSQL logged none: that time is not the statement's.
    spurious = sum(
        row["duration"]
        for per_instance in pgbadger_json[name]["normalyzed_info"].values()
        for text, row in per_instance.items()
        if _key(text) in {_key(k) for k in ours["untimed"]}
    )
    expected = theirs["duration_ms"] - spurious
    assert ours["duration_ms"] == pytest.approx(expected, abs=0.01 + 1e-9 * expected)
    assert ours["temp_files"] == theirs["temp_files"]
    assert ours["lock_waits"] == theirs["lock_waits"]
    assert ours["errors"] == theirs["errors"]


@pytest.mark.parametrize("name", FILES)
def test_top_normalized_statements_match_pgbadger(
    name: str, pgbadger_json: dict[str, dict[str, Any]]
) -> None:
    theirs: Counter[str] = pgbadger_figures(pgbadger_json[name])["normalized"]
    ours = querywatch_figures(CORPUS / name)
    mine = Counter({_key(k): v for k, v in ours["normalized"].items()})
    mine_cut = Counter({_key(k): v for k, v in ours["cut"].items()})
    top = sorted(theirs.items(), key=lambda kv: (-kv[1], kv[0]))[:5]  # ties in a stable order
    for text, count in theirs.items():  # every group, the top five first of all
        if (
            text.startswith("prepare ")
            and "$" not in text
            and count == 1
            and (text, count) not in top
        ):
            continue  # pgBadger drops the $n of a PREPARE's body ("... as select;"), not ours

        if _key(text) in mine:
            assert mine[_key(text)] == count, f"{name}: {text[:120]!r}"
        else:
            # pgBadger 12 cuts a parameter value at its first comma (a range '[a,b]'), so
            # postgresql_param_range.log's executions of one statement are apart in its groups:
            # the counts match once our values are cut the same way.
            assert mine_cut[_key(text)] == count, f"{name}: {text[:120]!r}"
    # Each of pgBadger's groups is inside one fingerprint of querywatch.
    for text, _ in top:
        keys = [k for k in ours["groups"] if _key(k) == _key(text)]
        for key in keys:
            assert len(ours["groups"][key]) == 1, f"{name}: {text[:80]!r}: {ours['groups'][key]}"


def _cnpg_records(path: Path) -> dict[str, Any]:
    """What a CloudNativePG log holds, read from its JSON records directly."""
    found = {"statements": 0, "errors": 0, "temp_files": 0, "duration_ms": 0.0}
    duration = re.compile(r"duration: ([\d.]+) ms  (?:statement|execute)")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        docs = [json.loads(line) for line in lines]
    for doc in docs:
        record = doc.get("record")
        if doc.get("logger") != "postgres" or not isinstance(record, dict):
            continue
        message = record.get("message", "")
        severity = record.get("error_severity")
        m = duration.match(message)
        if m:
            found["statements"] += 1
            found["duration_ms"] += float(m[1])
        elif severity == "LOG" and message.startswith("temporary file:"):
            found["temp_files"] += 1
        elif severity in ("ERROR", "FATAL", "PANIC"):
            found["errors"] += 1
    return found
