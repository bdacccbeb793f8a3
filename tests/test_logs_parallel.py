"""logs -j N: a log read in byte ranges by several processes gives the report one process gives."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from querywatch.logs import report as rep
from querywatch.logs.formats import LogFormat
from querywatch.logs.parallel import cuts, summarize_parallel
from querywatch.logs.reader import read_chunks
from querywatch.logs.summary import summarize

PREFIX = "%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h "


def _log(path: Path, lines: int = 6000) -> None:
    """A stderr log: statements (multi-line, IN lists, execute + DETAIL), lock waits that end
    50 lines after they start, temp files, errors, a deadlock and garbage lines."""
    rng = random.Random(7)
    out: list[str] = []
    waiting: dict[int, tuple[int, int]] = {}  # line at which it ends -> (pid, xid)
    for i in range(lines):
        t = f"2026-11-30 {10 + i // 2400:02d}:{i // 40 % 60:02d}:{i % 60:02d}.{i % 1000:03d} UTC"
        pid = 100 + rng.randint(0, 30)
        head = f"{t} [{pid}]: [{i}-1] user=app,db=shop,app=web,client=10.0.0.1 "
        if i in waiting:
            wpid, xid = waiting.pop(i)
            head = head.replace(f"[{pid}]", f"[{wpid}]")
            out.append(
                f"{head}LOG:  process {wpid} acquired ShareLock on transaction {xid} "
                f"after {1000 + i}.5 ms\n"
            )
            continue
        r = rng.random()
        n = rng.randint(1, 400)
        if r < 0.02:
            xid = 5000 + i
            waiting[i + 50] = (pid, xid)
            out.append(
                f"{head}LOG:  process {pid} still waiting for ShareLock on transaction {xid} "
                f"after 1000.1 ms\n{head}DETAIL:  Process holding the lock: 7. Wait queue: {pid}.\n"
                f"{head}STATEMENT:  UPDATE t SET v = {n} WHERE id = {n}\n"
            )
        elif r < 0.04:
            out.append(
                f'{head}LOG:  temporary file: path "base/pgsql_tmp/pgsql_tmp{pid}.0", '
                f"size {n * 8192}\n{head}STATEMENT:  SELECT * FROM big ORDER BY {n}\n"
            )
        elif r < 0.06:
            out.append(
                f'{head}ERROR:  relation "nope{n % 3}" does not exist\n'
                f"{head}STATEMENT:  SELECT * FROM nope{n % 3} WHERE id = {n}\n"
            )
        elif r < 0.065:
            out.append(f"garbage line {i} \x01\x02\n")
        elif r < 0.215:  # auto_explain plans of 600 fingerprints (one reader keeps 200)
            table = "p_" + chr(97 + i % 600 % 26) + chr(97 + i % 600 // 26)
            out.append(
                f"{head}LOG:  duration: {n:.3f} ms  plan:\n\tQuery Text: SELECT * FROM {table}"
                f"\n\tSeq Scan on {table}  (cost=0.00..1.00 rows=1 width=4) (actual "
                f"time=0.01..{n}.0 rows=1 loops=1)\n"
            )
        elif r < 0.4:
            ids = ", ".join(f"${k + 2}" for k in range(n % 9 + 1))
            out.append(
                f"{head}LOG:  duration: {n / 7:.3f} ms  execute <unnamed>: SELECT a FROM t{n % 5}"
                f" WHERE b = $1 AND id IN ({ids})\n{head}DETAIL:  parameters: $1 = '{n}'\n"
            )
        else:
            out.append(
                f"{head}LOG:  duration: {n / 3:.3f} ms  statement: SELECT x, y\n"
                f"\t  FROM orders{n % 7}\n\t WHERE id = {n} AND s = 'p{n}'\n"
            )
    out.append(
        f"{head}ERROR:  deadlock detected\n{head}DETAIL:  Process 1 waits for ShareLock; "
        f"blocked by process 2.\n\tProcess 2 waits for ShareLock; blocked by process 1.\n"
    )
    path.write_text("".join(out), encoding="utf-8")


def _json(summary: object, path: Path) -> dict[str, object]:
    report = summary.report(files=(str(path),))  # type: ignore[attr-defined]
    return json.loads(rep.RENDERERS["json"](report))  # type: ignore[no-any-return]


@pytest.mark.parametrize("jobs", [2, 3])
def test_parallel_report_is_the_sequential_one(tmp_path: Path, jobs: int) -> None:
    path = tmp_path / "pg.log"
    _log(path)
    sequential = summarize(read_chunks(path), year=2026)
    one = _json(sequential, path)
    found = summarize_parallel(str(path), jobs, year=2026, min_bytes=0)
    assert found is not None and found[1] == path.stat().st_size
    many = _json(found[0], path)
    assert many == one
    plans = [(p.fingerprint, p.duration_ms, p.line_no) for p in sequential.plans()]
    assert [(p.fingerprint, p.duration_ms, p.line_no) for p in found[0].plans()] == plans
    assert len(plans) == 200  # of ~450 fingerprints with plans: the first 200 kept
    counts = one["counts"]
    assert isinstance(counts, dict) and counts["lock_waits"] == path.read_text().count("still")
    # the cuts fall inside lock waits (still waiting before the cut, acquired after) and
    # after a message whose next lines (DETAIL, a tab) would be lost by a careless cut
    data = path.read_bytes()
    offsets = cuts(str(path), LogFormat("stderr", PREFIX), 0, len(data), jobs)
    assert len(offsets) == jobs - 1
    spanned = 0
    for offset in offsets:
        assert data[offset - 1 : offset] == b"\n"
        assert b"LOG:" in data[offset : data.index(b"\n", offset)]
        before = data[:offset].decode()
        spanned += before.count("still waiting") > before.count(" acquired ")
    assert spanned, "no lock wait spans a cut"


def test_parallel_declines_what_one_process_reads(tmp_path: Path) -> None:
    """Compressed, small, csvlog or log_statement logs: None (the caller reads them itself)."""
    small = tmp_path / "small.log"
    _log(small, 50)
    assert summarize_parallel(str(small), 2) is None  # under MIN_BYTES
    assert summarize_parallel(str(small), 1, min_bytes=0) is None
    logged = tmp_path / "logged.log"
    head = "2026-11-30 10:00:00.000 UTC [1]: [1-1] user=a,db=b,app=c,client=d "
    logged.write_text(f"{head}LOG:  statement: SELECT 1\n{head}LOG:  duration: 1.0 ms\n" * 50)
    assert summarize_parallel(str(logged), 2, min_bytes=0) is None
    csv = tmp_path / "pg.csv"
    csv.write_text(
        '2026-11-30 10:00:00.000 UTC,"a","b",1,"h",x,1,"SELECT",t,1/1,0,LOG,00000,'
        '"duration: 1.0 ms  statement: SELECT 1",,,,,,,,,""\n' * 50
    )
    assert summarize_parallel(str(csv), 2, min_bytes=0) is None
