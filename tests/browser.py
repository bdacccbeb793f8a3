"""Chromium for the browser tests: Playwright driving Debian's chromium, headless (Playwright's
own browser download cannot happen here, so ``executable_path`` names Debian's).

- the ``browser`` fixture (``browser_fixture``): one chromium per test module (missing chromium
  or Playwright is a skip locally, a failure under CI=true; conftest.missing);
- ``watched_tab(browser, base)``: a tab in its own context that records every request leaving
  ``base`` (``data:`` URLs stay in the browser) and every console error or uncaught page error,
  and asserts on exit that there were none;
- ``shot(page, name)``: a full-page screenshot into test-artifacts/ (web-NAME.png).

A module imports the fixture (``from browser import browser_fixture``), takes ``browser`` as a
parameter, and builds its ``page`` fixture on ``watched_tab``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import missing

CHROMIUM = Path(os.environ.get("QUERYWATCH_CHROMIUM", "/usr/lib/chromium/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """Debian's chromium, launched once for the module."""
    if not CHROMIUM.exists():
        missing(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@contextmanager
def watched_tab(browser: Any, base: str) -> Iterator[Any]:
    """A new tab whose requests must stay under ``base`` and whose console must stay free of
    errors: both are asserted once the tab's context is closed."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    outside: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: None if _local(r.url, base) else outside.append(r.url))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield tab
    finally:
        context.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"
    assert errors == [], f"browser errors: {errors}"


def _local(url: str, base: str) -> bool:
    return url.startswith(base.rstrip("/") + "/") or url.startswith("data:")


def shot(page: Any, name: str, prefix: str = "web-") -> None:
    """A full-page screenshot as test-artifacts/{prefix}{name}.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{prefix}{name}.png"), full_page=True)
