"""Building the documentation site for the tests: ``mkdocs build`` of the repository's
mkdocs.yml into a folder of the test's own (never the package's docs_site)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from conftest import missing

ROOT = Path(__file__).resolve().parents[1]


def build(site: Path, strict: bool = True) -> subprocess.CompletedProcess[str]:
    """``mkdocs build [--strict]`` into ``site``; the finished process (not checked)."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        missing("mkdocs and mkdocs-material are not installed (pip install -e '.[dev]')")
    command = [sys.executable, "-m", "mkdocs", "build", "--site-dir", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*command, *(["--strict"] if strict else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def built(site: Path, strict: bool = True) -> Path:
    """The site built into ``site``; fails the test with mkdocs' own words when it cannot."""
    done = build(site, strict)
    problems = [line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert done.returncode == 0, "mkdocs build failed:\n" + "\n".join(problems or [done.stderr])
    return site
