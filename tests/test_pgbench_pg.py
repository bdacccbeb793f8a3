"""pgbench's TPC-B under `querywatch watch`: pgbench_accounts loses its primary key mid-run.

Both statements on pgbench_accounts (the UPDATE and the SELECT abalance) turn into sequential
scans at the same moment, for one reason, after one deploy: that is one incident and one page
naming both, with the deploy as suspect and throughput said to have fallen (every transaction
queues behind the scans). When the SELECT's first slow calls end an interval after the UPDATE's,
it joins the incident and the page is updated (same incident, at most one update). Intervals are
1 s; the test takes about 30 s.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit
from conftest import MakePg, missing
from workload import Receiver, learned, mark_deploy, wait_until, watch_process

from querywatch.localpg import LocalPostgres

DEBIAN_PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
SCALE = 10  # 1,000,000 accounts: a sequential scan takes the server's CPU for a while
CLIENTS = 8
# transactions/s asked for: 8 clients keep it easily (little waiting on the 10 branch rows, so
# a CPU hiccup is not a regression), the scans cannot (throughput falls)
RATE = 50
RUN_S = 60  # pgbench -T: the upper bound of the run; it is stopped as soon as the page came
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


def pgbench_binary(server: LocalPostgres) -> Path:
    for candidate in (server.bindir / "pgbench", DEBIAN_PGBENCH):
        if candidate.exists():
            return candidate
    found = shutil.which("pgbench")
    if found is None:
        missing("pgbench is not installed (apt-get install postgresql-15)")
    return Path(found)


def pgbench_args(server: LocalPostgres, *args: str) -> list[str]:
    conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    return [str(pgbench_binary(server)), *conn, *args, "postgres"]


@pytest.fixture
def bench(make_pg: MakePg) -> LocalPostgres:
    """A private server initialised by `pgbench -i`: the drop changes its schema for good."""
    server = make_pg()
    subprocess.run(
        pgbench_args(server, "-i", "-s", str(SCALE), "-q"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def firing(receiver: Receiver) -> list[dict[str, Any]]:
    return [b for b in receiver.bodies("/hook") if b["status"] == "firing"]


def test_primary_key_dropped_under_tpcb_pages_once_naming_both_statements(
    bench: LocalPostgres, tmp_path: Path, receiver: Receiver
) -> None:
    store = tmp_path / "qw.db"
    run = pgbench_args(bench, "-c", str(CLIENTS), "-j", "2", "-R", str(RATE), "-T", str(RUN_S))
    with (
        subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pgb,
        watch_process(bench.dsn, store, "--alert-webhook", f"{receiver.url}/hook"),
    ):
        try:
            assert learned(store, 40), "the detector never left its learning period"
            time.sleep(3)
            mark_deploy(store, "v7")
            with psycopg.connect(bench.dsn, autocommit=True) as c:
                c.execute("ALTER TABLE pgbench_accounts DROP CONSTRAINT pgbench_accounts_pkey")
            dropped = time.time()
            assert wait_until(lambda: firing(receiver), 15), "no firing alert"
            delay = min(r.at for r in receiver.received if r.body["status"] == "firing") - dropped
            time.sleep(4)  # a second incident for the other statement would open by now
        finally:
            pgb.terminate()
            out, _ = pgb.communicate(timeout=30)
    pages = firing(receiver)
    summaries = "\n".join(p["diagnosis"]["summary"] for p in pages)
    print(f"\npage {delay:.1f} s after the drop; {len(pages)} firing notification(s)")
    print(f"{summaries}\npgbench: {out.strip()[-400:]}")
    # one incident paged; a statement that regressed an interval later updates that page
    assert len({p["incident"] for p in pages}) == 1, [p["diagnosis"]["summary"] for p in pages]
    assert len(pages) <= 2, "at most the page and one update"
    diagnosis = pages[-1]["diagnosis"]
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    queries = {c["query"] for c in diagnosis["culprits"]}
    assert {UPDATE, SELECT} <= queries, queries
    assert [d["suspect"] for d in diagnosis["deploys"] if d["version"] == "v7"] == [True], (
        diagnosis["deploys"]
    )
    stored = [row[0] for row in storekit.rows(store, "SELECT id FROM incidents")]
    assert stored == [pages[0]["incident"]], "one cause, one incident"
    assert "throughput fell" in diagnosis["summary"], diagnosis["summary"]
