"""The dashboard in Debian's chromium (headless, driven by Playwright) over a real uvicorn server
and a store a real collector run filled: every page loads with no request leaving 127.0.0.1 and
no console error, charts are drawn with data and the deploy marker, and a person can click from
the overview to the statement to the incident. Screenshots go to test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import webstore
from browser import browser_fixture, shot, watched_tab  # noqa: F401 (a fixture)

from querywatch.web import WebServer, start_in_thread


@pytest.fixture(scope="module")
def server(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    collected = webstore.collected(pg_dsn, tmp_path_factory.mktemp("web"))
    handle = start_in_thread(collected.path, "127.0.0.1", 0, "")
    yield handle
    handle.stop()


@pytest.fixture
def page(browser: Any, server: WebServer) -> Iterator[Any]:
    with watched_tab(browser, server.url) as tab:
        yield tab


def chart_points(page: Any, name: str) -> int:
    return int(page.get_attribute(f'svg[data-chart="{name}"]', "data-points"))


def test_overview_statement_incident_click_through(page: Any, server: WebServer) -> None:
    page.goto(server.url + "/")
    assert page.title() == "Overview · querywatch"
    assert chart_points(page, "db-time") > 0
    assert page.locator('svg[data-chart="db-time"] path.area').count() >= 2
    assert page.locator(f'svg g.deploy[data-version="{webstore.DEPLOY}"]').count() == 1
    assert page.locator("svg rect.band").count() >= 1
    box = page.locator('svg[data-chart="db-time"]').bounding_box()
    assert box["width"] > 600 and box["height"] > 100  # drawn, not collapsed
    shot(page, "overview")

    page.locator("table.statements a.statement", has_text="category = $1").first.click()
    page.wait_for_url("**/statements/*")
    assert page.locator("pre.sql").inner_text() == webstore.HOT_SQL
    for chart in ("calls-per-s", "mean-ms", "rows-per-s", "share"):
        assert chart_points(page, chart) > 0, chart
    assert page.locator(f'g.deploy[data-version="{webstore.DEPLOY}"]').count() == 4
    shot(page, "statement")

    page.locator("table.incidents a.incident").first.click()
    page.wait_for_url("**/incidents/*")
    assert page.locator("h1").inner_text().startswith("Incident ")
    assert chart_points(page, "incident-db-time") > 0
    assert page.locator("article.culprit").first.inner_text().count("category = $1") == 1
    assert "query regression" in page.locator("section.verdict").inner_text()
    shot(page, "incident")


@pytest.mark.parametrize(
    ("path", "title", "selector"),
    [
        ("/incidents", "Incidents", "table.incidents a.incident"),
        ("/deploys", "Deploys", "table.deploys td"),
        ("/health", "Health", "table.findings .badge"),
        ("/api", "API", "table.api code"),
        ("/?range=15m", "Overview", 'svg[data-chart="db-time"]'),
        ("/?range=7d", "Overview", 'svg[data-chart="db-time"]'),
    ],
)
def test_every_page_loads(
    page: Any, server: WebServer, path: str, title: str, selector: str
) -> None:
    response = page.goto(server.url + path)
    assert response.status == 200
    assert page.title() == f"{title} · querywatch"
    assert page.locator(selector).count() >= 1
    shot(page, path.strip("/").replace("?range=", "range-") or "root")
