"""One `querywatch demo --fast` run shared by the tests that read its output (test_demo checks
the run itself, test_runbook walks docs/runbook.md on its store): a demo run costs minutes of
CPU, so the suite makes it once per worker (both modules are in the ``cpu_hogs`` group)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoRun:
    """What one demo run printed, and its output folder (store, diagnosis, report)."""

    result: subprocess.CompletedProcess[str]
    out: Path


def run_demo(out: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env.update(env_extra)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "querywatch", "demo", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
