"""`querywatch diagnose` over a window that covers the store's whole history, on a real server.

Nothing precedes the window, so the diagnosis must find the onset inside it (an incident the
watcher recorded, or a change point when only `collect` ran) and compare what follows with what
precedes it. Intervals are 1 s; the change comes in the last third of the history.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from workload import Load, Statement, diagnose_json, mark_deploy

INTERVAL = 1.0
NORMAL_S = 20.0  # steady traffic first
CHANGED_S = 10.0  # then one statement runs 10x as often
HOT = "SELECT count(*) FROM aw_items WHERE category = $1"


@pytest.fixture(scope="module")
def items(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS aw_items")
        c.execute(
            "CREATE TABLE aw_items AS SELECT g AS id, g % 100 AS category, md5(g::text) AS note "
            "FROM generate_series(1, 50000) g"
        )
        c.execute("ALTER TABLE aw_items ADD PRIMARY KEY (id)")
        c.execute("ANALYZE aw_items")
    return pg_dsn


def traffic() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM aw_items WHERE id = %s", 80, lambda r: (r.randint(1, 50000),)
        ),
        "hot": Statement(
            "SELECT count(*) FROM aw_items WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM aw_items WHERE note LIKE %s",
            2,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
    }


@contextmanager
def querywatch(command: str, dsn: str, store: Path) -> Iterator[None]:
    """`querywatch watch` or `collect` in a subprocess at 1 s; SIGTERM must stop it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    argv = [sys.executable, "-m", "querywatch", command, "--dsn", dsn, "--store", str(store)]
    log = store.with_suffix(f".{command}.log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--interval", "1s"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text


def onset_of(culprit: dict[str, object]) -> float:
    return datetime.fromisoformat(str(culprit["onset"]).replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    ("command", "deploy"),
    [("collect", False), ("collect", True), ("watch", True)],
    ids=["change point", "change point and a deploy", "incident and a deploy"],
)
def test_a_window_over_the_whole_history_finds_the_onset_inside_it(
    items: str, tmp_path: Path, command: str, deploy: bool
) -> None:
    store = tmp_path / "qw.db"
    start = time.time() - 1.0
    with Load(items, traffic()) as load, querywatch(command, items, store):
        time.sleep(NORMAL_S)
        if deploy:
            mark_deploy(store, "v2")
        changed = time.time()
        load.set_rate("hot", 40)
        time.sleep(CHANGED_S)
    end = time.time() + 1.0
    assert changed - start >= 2 / 3 * (end - start) - 2  # the change is in the last third
    d = diagnose_json(store, start, end)
    assert d["verdict"] == "query_regression", d["summary"]
    culprit = d["culprits"][0]
    assert (culprit["query"], culprit["kind"]) == (HOT, "frequency")
    # the onset is the start of the first interval that shows the change (ISO: to the second)
    assert changed - INTERVAL - 1.0 <= onset_of(culprit) <= changed + INTERVAL, (culprit, changed)
    assert d["baseline"]["kind"] == "pre_onset"
    assert "Compared with this window before its onset" in d["summary"]
    suspects = [v["version"] for v in d["deploys"] if v["suspect"]]
    assert suspects == (["v2"] if deploy else [])
    assert [v["version"] for v in d["deploys"]] == (["v2"] if deploy else [])
