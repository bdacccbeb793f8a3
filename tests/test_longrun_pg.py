"""The long-run baseline on a real server: a watch started during an incident, the one-shot
`diagnose --now`, and statistics too young to trust.

Each test runs on a private server (make_pg) because it resets pg_stat_statements. The first one
lets normal traffic accumulate first: the long run is trusted once older than ``[detect]
long_run_min_age`` (5 min by default), which its querywatch.toml sets to 1 min, so it takes about
2 minutes. The second one keeps the default (no querywatch.toml where its subprocesses run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import storekit
from conftest import MakePg
from workload import (
    Load,
    Receiver,
    Statement,
    diagnose_json,
    learned,
    mark_deploy,
    wait_until,
    watch_process,
)

from querywatch.durations import parse_time
from querywatch.errors import StoreError

INTERVAL = 1.0
SLACK_S = 1.5  # snapshot, detection, diagnosis and the HTTP POST after an interval ends
CULPRIT = "SELECT count(*) FROM lr_items WHERE category = $1"
MIN_AGE_S = 60.0  # [detect] long_run_min_age of the first test (watch: 1 s x 30 is less)
NORMAL_S = MIN_AGE_S + 20  # normal traffic the statistics hold before the rollout
INTO_ROLLOUT_S = NORMAL_S / 8  # the watch starts this long after the rollout (the long run is
# mostly normal traffic, as 40 s after 320 s with the default min age)


def run_here(folder: Path, config: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch and diagnose subprocesses run in ``folder``: its querywatch.toml is theirs."""
    if config is not None:
        (folder / "querywatch.toml").write_text(config)
    monkeypatch.chdir(folder)


def shop(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE lr_items AS SELECT g AS id, g % 100 AS category, "
            "'user' || g || '@example.com' AS email, md5(g::text) AS note "
            "FROM generate_series(1, 50000) g"
        )
        c.execute("ALTER TABLE lr_items ADD PRIMARY KEY (id)")
        c.execute("CREATE INDEX lr_items_email ON lr_items (email)")
        c.execute("ANALYZE lr_items")
        c.execute("SELECT pg_stat_statements_reset()")  # the long run starts now


def steady() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM lr_items WHERE id = %s", 50, lambda r: (r.randint(1, 50000),)
        ),
        "by_email": Statement(
            "SELECT id FROM lr_items WHERE email = %s",
            10,
            lambda r: (f"user{r.randint(1, 50000)}@example.com",),
        ),
        "scan": Statement(
            "SELECT count(*) FROM lr_items WHERE note LIKE %s",
            2,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
        "hot": Statement(
            "SELECT count(*) FROM lr_items WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def firing(receiver: Receiver) -> list[Any]:
    return [r for r in receiver.received if r.path == "/hook" and r.body["status"] == "firing"]


def first_snapshot_at(store: Path) -> float | None:
    """When the watch took its first snapshot: the start of its first stored interval."""
    if not storekit.exists(store):
        return None
    found = storekit.value(store, "SELECT min(start) FROM intervals")
    return float(found) if found is not None else None


def learning_reason(store: Path) -> str:
    """Why the detector learns, as its status in the store says (what `status` prints)."""
    if not storekit.exists(store):
        return ""
    try:
        rows = storekit.rows(store, "SELECT value FROM status WHERE key LIKE 'detector:%'")
    except StoreError:
        return ""
    return " ".join(str(json.loads(r[0]).get("learning_reason", "")) for r in rows)


def diagnose_now(dsn: str) -> tuple[dict[str, Any], float]:
    """`querywatch diagnose --dsn DSN --now --format json` and how long it took to answer."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "diagnose", "--dsn", dsn, "--now", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)), took


def test_watch_started_during_an_n_plus_1_rollout_pages_at_once_and_one_shot_agrees(
    make_pg: MakePg, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_here(tmp_path, f'[detect]\nlong_run_min_age = "{MIN_AGE_S:.0f}s"\n', monkeypatch)
    server = make_pg()
    shop(server.dsn)
    store = tmp_path / "qw.db"
    with Load(server.dsn, steady(), max_s=NORMAL_S + 200) as load:
        time.sleep(NORMAL_S)
        mark_deploy(store, "v2")
        rollout = time.time()
        load.set_rate("hot", 40)  # the new page issues the query once per item: N+1
        time.sleep(INTO_ROLLOUT_S)
        with watch_process(server.dsn, store, "--alert-webhook", f"{receiver.url}/hook"):
            assert wait_until(lambda: firing(receiver), 30), "no firing alert"
            first = first_snapshot_at(store)
            assert first is not None
            delay = firing(receiver)[0].at - first
            print(f"alert {delay:.1f} s after the watch's first snapshot")
            assert delay <= 2 * INTERVAL + SLACK_S, f"alert came {delay:.1f} s after the start"
            one_shot, took = diagnose_now(server.dsn)
            print(f"diagnose --now answered in {took:.1f} s")
            time.sleep(3)
            end = time.time()
        assert not load.errors, load.errors[:3]
    diagnosis = firing(receiver)[0].body["diagnosis"]
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    culprit = diagnosis["culprits"][0]
    assert culprit["query"] == CULPRIT, diagnosis["summary"]
    assert culprit["kind"] == "frequency"
    assert [d["suspect"] for d in diagnosis["deploys"] if d["version"] == "v2"] == [True]
    # compared with the long run since the reset, not with a history the store does not hold
    assert parse_time(diagnosis["baseline"]["start"]) <= rollout - NORMAL_S + 5
    whole = diagnose_json(store, first, end)
    assert whole["verdict"] == "query_regression", whole["summary"]
    assert whole["culprits"][0]["query"] == CULPRIT
    assert [d["suspect"] for d in whole["deploys"] if d["version"] == "v2"] == [True]
    assert one_shot["verdict"] == "query_regression", one_shot["summary"]
    assert one_shot["culprits"][0]["query"] == CULPRIT
    assert took <= 15.0, f"diagnose --now took {took:.1f} s"


def test_statistics_reset_30_s_before_watch_learn_without_paging_and_say_why(
    make_pg: MakePg, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_here(tmp_path, None, monkeypatch)  # the default long_run_min_age (5 min)
    server = make_pg()
    shop(server.dsn)  # resets the statistics
    store = tmp_path / "qw.db"
    with Load(server.dsn, steady(), max_s=200) as load:
        time.sleep(20)
        load.set_rate("hot", 40)  # an incident a trusted long run would page at once
        time.sleep(10)
        with watch_process(server.dsn, store, "--alert-webhook", f"{receiver.url}/hook"):
            why = wait_until(lambda: "was reset" in learning_reason(store), 30)
            assert why, "status never said why it is learning"
            assert learned(store, 60), "the detector never left its learning period"
            learned_at = time.time()
            time.sleep(2)
    early = [r for r in firing(receiver) if r.at < learned_at]
    assert early == [], f"paged while learning: {early[0].body['diagnosis']['summary']}"
    log = store.with_suffix(".log").read_text()
    assert "pg_stat_statements was reset 3" in log, log
    assert "learning for 12 intervals" in log, log
