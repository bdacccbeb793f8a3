"""pgBadger's test corpus (tests/fixtures/logs/pgbadger): every file read, nothing lost.

The files are real server logs of many shapes (see the README beside them). These tests need no
pgBadger: the comparison with it is tests/test_logs_pgbadger.py.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from querywatch.logs.parser import parse
from querywatch.logs.reader import read_chunks
from querywatch.logs.records import Autovacuum, Statement, Unparsed
from querywatch.logs.summary import OTHER, Summary, summarize

CORPUS = Path(__file__).parent / "fixtures" / "logs" / "pgbadger"
FILES = sorted(
    p.name
    for p in CORPUS.iterdir()
    if p.name not in ("LICENSE", "README.md") and p.suffix != ".expected"
)
# Files whose lines are not all PostgreSQL's: pgbouncer's own logs (querywatch reads server logs
# only), and the two lines pg_ctl wrote into pg_rawcsv.log.
NOT_SERVER_LOGS = {"pgbouncer.log.gz", "pgbouncer.1.21.log.gz"}
FOREIGN_LINES = {"pg_rawcsv.log": 2}


def raw(name: str) -> bytes:
    return b"".join(read_chunks(CORPUS / name))


@pytest.mark.parametrize("name", FILES)
def test_every_file_is_read_without_loss_and_summarized_alike(name: str) -> None:
    """Every event of the file read (one parse: the largest files are 10-18 MB), and the fast
    summary path gives the same report as the summary of those events."""
    data = raw(name)
    events = list(parse([data]))
    kinds = Counter(type(e).__name__ for e in events)
    assert summarize([data]).report() == Summary().feed(events).report()
    if name in NOT_SERVER_LOGS:
        assert set(kinds) == {"Unparsed"}  # counted, sampled, never fatal
        return
    assert kinds["Unparsed"] == FOREIGN_LINES.get(name, 0), [
        e for e in events if isinstance(e, Unparsed)
    ][:3]
    assert sum(kinds.values()) > kinds["Unparsed"]
    for event in events:
        if not isinstance(event, Unparsed):
            assert event.at is None or event.at.utcoffset() is not None
            assert event.line_no >= 1


@pytest.mark.parametrize(
    "name", ["light.postgres.log.bz2", "queryid.log.gz", "cnpg.log.gz", "logplex.gz"]
)
def test_any_compression_and_any_piece_size_give_the_same_events(name: str, tmp_path: Path) -> None:
    data = raw(name)
    want = list(parse([data], year=2024))
    packers = {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
        "zst": zstandard.ZstdCompressor().compress,
    }
    for suffix, pack in packers.items():
        path = tmp_path / f"log.{suffix}"
        path.write_bytes(pack(data))
        assert list(parse(read_chunks(path), year=2024)) == want, suffix
    rng = random.Random(14)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert list(parse(pieces, year=2024)) == want


@pytest.mark.parametrize(
    "name", ["light.postgres.log.bz2", "tempfile_only.log.gz", "queryid.log.gz"]
)
def test_garbage_between_lines_is_counted_and_skipped(name: str) -> None:
    """Binary garbage, cut lines and foreign text inserted: the same statements, each bad line counted."""
    lines = raw(name).split(b"\n")
    rng = random.Random(7)
    junk = [
        b"\x00\x01\xff\xfe\x89PNG binary",
        "détritus ünicode".encode(),
        b"2024-13-45 99:99 LOG",
        b"?",
    ]
    out: list[bytes] = []
    inserted = 0
    for i, line in enumerate(lines):
        out.append(line)
        nxt = lines[i + 1] if i + 1 < len(lines) else b""
        if rng.random() < 0.2 and not nxt.startswith((b"\t", b" ")):  # not inside a message
            out.append(rng.choice(junk))
            inserted += 1
    clean = Counter(type(e).__name__ for e in parse([raw(name)]))
    dirty = Counter(type(e).__name__ for e in parse([b"\n".join(out)]))
    assert inserted > 5
    assert dirty["Unparsed"] == clean["Unparsed"] + inserted
    assert dirty["Statement"] == clean["Statement"]


def test_syslog_copies_agree() -> None:
    """pg-syslog.1 and .2 hold the same run (shifted by hours): the same statements."""
    one = summarize(read_chunks(CORPUS / "pg-syslog.1.bz2")).statements()
    two = summarize(read_chunks(CORPUS / "pg-syslog.2.gz")).statements()
    assert [(s.fingerprint, s.calls) for s in one] == [(s.fingerprint, s.calls) for s in two]
    assert sum(s.calls for s in one) > 50_000


def test_stderr_and_jsonlog_of_one_server_agree() -> None:
    """pg_vacuums.log.gz and pg_vacuums.json.gz log the same autovacuum runs in two formats."""

    def runs(name: str) -> Counter[tuple[str, str]]:
        return Counter(
            (e.action, e.table)
            for e in parse(read_chunks(CORPUS / name))
            if isinstance(e, Autovacuum)
        )

    stderr, jsonlog = runs("pg_vacuums.log.gz"), runs("pg_vacuums.json.gz")
    assert stderr == jsonlog and sum(stderr.values()) > 1000


def test_statement_total_matches_pgbadgers_expected_table() -> None:
    """stmt_type.expected (pgBadger's own expected output) counts the file's statements by type."""
    expected = sum(
        int(line.split(":")[1].split()[0])
        for line in (CORPUS / "stmt_type.expected").read_text().splitlines()
        if line.strip()
    )
    statements = [
        e for e in parse(read_chunks(CORPUS / "stmt_type.log")) if isinstance(e, Statement)
    ]
    assert len(statements) == expected == 12
    assert any("forêt" not in s.query and "UPDATE test SET col1" in s.query for s in statements)


def test_summary_state_is_bounded() -> None:
    summary = Summary(keep=5, max_fingerprints=10)
    for i in range(1000):
        summary.add(
            Statement(
                at=None, line_no=i, duration_ms=float(i), fingerprint=f"f{i}", query=f"SELECT {i}"
            )
        )
    stats = summary.statements()
    assert len(stats) == 11 and any(s.fingerprint == OTHER for s in stats)
    assert sum(s.calls for s in stats) == 1000
    assert [e.duration_ms for e in summary.slowest()] == [999.0, 998.0, 997.0, 996.0, 995.0]
