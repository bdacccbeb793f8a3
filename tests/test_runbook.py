"""docs/runbook.md walked against the demo: each step's command, run on the demo's store, prints
what the page shows.

The page marks its blocks with HTML comments: ``<!-- runbook: run -->`` before a ``sh`` block (a
command the test runs with bash), ``<!-- runbook: output [exit=N] -->`` before the ``text`` block
the previous command must print, and ``<!-- runbook: sql -->`` before SQL to run on a live server.
Shown lines must appear in the output in order; ``…`` stands for what changes from run to run
(numbers, times, ids) and runs of spaces count as one.

One `querywatch demo --fast` run provides the store (the outage, the fix, then a traffic surge).
The commands that need a live server (explain, loadtest, psql) run against a small copy of the
demo's shop on a private server: the demo's own server is gone when it ends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import webstore
from conftest import MakePg, missing
from demokit import DemoRun

from querywatch.demo import shop
from querywatch.store import Store
from querywatch.web import create_app

pytestmark = pytest.mark.xdist_group("cpu_hogs")  # the demo loads the CPUs (see conftest)

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"
BLOCK = re.compile(
    r"<!-- runbook: (?P<role>run|output|sql)(?: exit=(?P<exit>\d+))? -->\s*\n"
    r"```(?P<lang>\w+)\n(?P<body>.*?)\n```",
    re.DOTALL,
)
SMALL_SHOP = shop.ShopSize(customers=20_000, products=500, orders=20_000, orders_with_items=2_000)
CULPRIT = "SELECT id, name FROM customers WHERE lower(email) = lower($1)"


@dataclass(frozen=True)
class Step:
    command: str
    output: str | None = None
    exit_code: int = 0


def runbook() -> tuple[list[Step], list[str]]:
    """The page's commands (each with its shown output) and its SQL blocks."""
    steps: list[Step] = []
    sql: list[str] = []
    for m in BLOCK.finditer(RUNBOOK.read_text(encoding="utf-8")):
        if m["role"] == "run":
            assert m["lang"] == "sh", m["body"]
            steps.append(Step(m["body"]))
        elif m["role"] == "output":
            assert steps and steps[-1].output is None, f"output without a command: {m['body']}"
            steps[-1] = Step(steps[-1].command, m["body"], int(m["exit"] or 0))
        else:
            sql.append(m["body"])
    return steps, sql


def pattern(line: str) -> re.Pattern[str]:
    """A shown line as a regex: ``…`` is anything, spaces are any run of spaces."""
    parts = [re.escape(" ".join(p.split())) for p in line.strip().split("…")]
    return re.compile(r"\s*" + ".*".join(parts).replace(r"\ ", r"\s+") + r"\s*")


def shows(expected: str, actual: str) -> list[str]:
    """The shown lines that are missing from ``actual`` (in order), or []."""
    lines = [" ".join(line.split()) for line in actual.splitlines()]
    at = 0
    missed = []
    for shown in (s for s in expected.splitlines() if s.strip()):
        wanted = pattern(shown)
        found = next((i for i in range(at, len(lines)) if wanted.fullmatch(lines[i])), None)
        if found is None:
            missed.append(shown)
        else:
            at = found + 1
    return missed


def test_the_matching_of_shown_output() -> None:
    """The line matching the walk relies on: in order, ``…`` as a wildcard, spaces collapsed."""
    actual = "verdict: x  window 10:00-10:05 UTC\n1. frequency  97%  calls/s 1.2 -> 14.5\nend"
    assert shows("verdict: x  window …-… UTC\n1. frequency …  calls/s … -> …", actual) == []
    assert shows("1. frequency …\nverdict: x …", actual) == ["verdict: x …"]  # order counts
    assert shows("verdict: y …", actual) == ["verdict: y …"]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def demo(demo_run: DemoRun) -> Path:
    """The session's `querywatch demo --fast` run (shared with test_demo): its output folder."""
    result = demo_run.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return demo_run.out


@pytest.fixture(scope="module")
def staging(make_pg: MakePg) -> str:
    """A small copy of the demo's shop, with hypopg: where the fix is verified and load-tested."""
    server = make_pg()
    if not server.has_extension("hypopg"):
        missing(f"hypopg is not installed for postgresql {server.major_version}")
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
    shop.load(server.dsn, SMALL_SHOP)
    return server.dsn


def _incidents(env: Mapping[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "querywatch", "status", "--format", "json"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    incidents: list[dict[str, Any]] = json.loads(done.stdout)["incidents"]
    return incidents


def environment(demo: Path, staging: str) -> dict[str, str]:
    """What a responder sets: the store, the server, the incident's window and culprit."""
    store = demo / "querywatch.db"
    with Store(store) as st:
        server = st.servers()[0].name
    bindirs = [str(Path(sys.executable).parent), *_psql_dirs()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env |= {
        "QUERYWATCH_STORE": str(store),
        "QUERYWATCH_DSN": staging,
        "QUERYWATCH_SERVER_NAME": server,
        "COLUMNS": "200",
        "PATH": os.pathsep.join([*bindirs, env.get("PATH", "")]),
    }
    incidents = _incidents(env)
    outage = next(i for i in incidents if CULPRIT in i["summary"])
    surge = next(i for i in incidents if i["key"] == "server:traffic")
    diagnosis = json.loads((demo / "diagnosis.json").read_text())
    assert diagnosis["culprits"][0]["query"] == CULPRIT
    surge_start = _when(surge["opened_at"])
    env |= {
        "START": outage["opened_at"],
        "END": outage["resolved_at"],
        "INCIDENT": outage["id"],
        "SURGE_START": _iso(surge_start),
        "SURGE_END": _iso(surge_start + timedelta(seconds=10)),
        "FINGERPRINT": diagnosis["culprits"][0]["fingerprint"],
    }
    return env


def _psql_dirs() -> list[str]:
    from querywatch.localpg import find_bindir

    return [str(find_bindir())]


def test_the_runbook_walked_on_the_demo(demo: Path, staging: str, tmp_path: Path) -> None:
    steps, _ = runbook()
    assert len(steps) >= 8 and sum(s.output is not None for s in steps) >= 8
    env = environment(demo, staging)
    for step in steps:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step.command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        said = done.stdout + done.stderr
        assert "Traceback" not in said, said
        assert done.returncode == step.exit_code, f"$ {step.command}\n{said}"
        if step.output is not None:
            missed = shows(step.output, done.stdout)
            assert missed == [], (
                f"$ {step.command}\nnot shown:\n"
                + "\n".join(missed)
                + (f"\n--- output:\n{done.stdout}")
            )


def test_the_runbook_sql_runs(staging: str) -> None:
    """The SQL the runbook gives for a live server runs (as a pg_monitor role would)."""
    _, blocks = runbook()
    assert len(blocks) >= 3
    with psycopg.connect(staging, autocommit=True) as conn:
        for text in blocks:
            conn.execute(text).fetchall()


def test_the_incident_page_is_the_report(demo: Path, staging: str) -> None:
    """Step 7: the dashboard's page of the incident holds what the post-mortem needs."""
    env = environment(demo, staging)
    with Store(demo / "querywatch.db") as store:
        page = webstore.Client(create_app(store)).get(f"/incidents/{env['INCIDENT']}")
    assert page.status_code == 200
    text = page.text
    for shown in ("query_regression", "Timeline", "Diagnosis", "v2.3", "lower(email) = lower($1)"):
        assert shown in text, shown
