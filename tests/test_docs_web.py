"""An alert's documentation link, opened from the dashboard in Debian's chromium (headless,
Playwright), lands on the right page of the site that ``querywatch serve`` serves at /docs/,
offline: no request leaves 127.0.0.1, no console error (the site's scripts run under its
Content-Security-Policy), and the site's search works.

The incident is the one a real collector run fired (tests/webstore.py); its alert is sent by the
real dispatcher to a real webhook receiver, with the server's /docs/ as the ``docs_url`` base."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import docskit
import httpx
import pytest
import webstore
from browser import browser_fixture, shot, watched_tab  # noqa: F401 (a fixture)

from querywatch.alerts import Dispatcher, Notification, WebhookChannel
from querywatch.demo.receiver import AlertReceiver
from querywatch.store import Store
from querywatch.web import WebServer, start_in_thread


@pytest.fixture(scope="module")
def collected(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> webstore.Collected:
    return webstore.collected(pg_dsn, tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def server(
    collected: webstore.Collected, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    site = docskit.built(tmp_path_factory.mktemp("docs") / "site", strict=False)
    handle = start_in_thread(collected.path, "127.0.0.1", 0, "", docs_site=site)
    yield handle
    handle.stop()


def _alert(collected: webstore.Collected, docs_base: str) -> dict[str, Any]:
    """The incident's firing alert as the webhook receives it."""
    with Store(collected.path, create=False) as store:
        stored = next(s for s in store.incidents() if s.incident.id == collected.incident_id)
    n = Notification("firing", stored.incident.id, stored.diagnosis or {}, time.time())
    receiver = AlertReceiver().start()
    try:
        channel = WebhookChannel(receiver.url)
        with Dispatcher([channel], docs_base=docs_base) as dispatcher:
            dispatcher.notify(n)
            assert dispatcher.flush(10.0), "the alert was not delivered"
        alert = receiver.first("firing")
    finally:
        receiver.stop()
    assert alert is not None
    return alert.body


def test_alert_link_from_the_dashboard_lands_on_its_page(
    browser: Any,
    server: WebServer,
    collected: webstore.Collected,
) -> None:
    alert = _alert(collected, server.url + "/docs/")
    verdict = alert["diagnosis"]["verdict"]
    assert alert["docs_url"] == f"{server.url}/docs/reference/verdicts/{verdict}/"

    with watched_tab(browser, server.url) as tab:
        tab.goto(f"{server.url}/incidents/{collected.incident_id}")
        link = tab.locator(f'section.verdict a.docs[data-doc="verdicts/{verdict}"]')
        assert link.count() == 1, tab.content()[:2000]
        assert link.evaluate("a => a.href") == alert["docs_url"]  # the alert's link, on the card
        link.click()
        tab.wait_for_url(alert["docs_url"])
        tab.wait_for_load_state("networkidle")
        assert verdict in tab.locator("article h1").inner_text()
        assert tab.locator("h2#fix").count() == 1
        shot(tab, "verdict-page", prefix="docs-")

        search = tab.locator("input.md-search__input")
        search.click()
        search.press_sequentially("lock_waits", delay=30)
        first = tab.locator(".md-search-result__item a").first
        first.wait_for(timeout=10_000)  # the search worker ran, offline, under the CSP
        assert str(first.get_attribute("href")).startswith(
            f"{server.url}/docs/reference/rules/lock_waits/"
        )


def test_rule_links_on_the_incident_page(
    browser: Any,
    server: WebServer,
    collected: webstore.Collected,
) -> None:
    tab = browser.new_page()
    try:
        tab.goto(f"{server.url}/incidents/{collected.incident_id}")
        rules = tab.locator('p.note a.docs[data-doc^="rules/"]')
        assert rules.count() >= 1
        name = rules.first.inner_text()
        rules.first.click()
        tab.wait_for_url(f"{server.url}/docs/reference/rules/{name}/")
        assert name in tab.locator("article h1").inner_text()
    finally:
        tab.close()


def test_json_twins_carry_the_same_links(server: WebServer, collected: webstore.Collected) -> None:
    twin = httpx.get(f"{server.url}/incidents/{collected.incident_id}.json", timeout=10).json()
    assert twin["docs_url"] == f"/docs/reference/verdicts/{twin['verdict']}/"
    assert twin["rules_docs"] and all(
        url == f"/docs/reference/rules/{rule}/" for rule, url in twin["rules_docs"].items()
    )
    overview = httpx.get(f"{server.url}/index.json", timeout=10).json()
    card = overview["verdict"]
    assert card["docs_url"] in (None, f"/docs/reference/verdicts/{card['verdict']}/")
