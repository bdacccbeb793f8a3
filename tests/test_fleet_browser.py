"""The fleet page in Debian's chromium (headless, Playwright) over a real uvicorn server: five
servers and one firing incident, trouble first, sparklines drawn; a click on the troubled server
opens its overview (its verdict, its chart), and the server picker switches to another server.
No request leaves 127.0.0.1 and the browser logs no error. Screenshots go to test-artifacts/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import browser_fixture, shot, watched_tab  # noqa: F401 (a fixture)
from fleetstore import SERVERS, fill

from querywatch.web import WebServer, start_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    path: Path = tmp_path_factory.mktemp("fleet-web") / "fleet.db"
    fill(path, now=time.time()).close()
    handle = start_in_thread(path, "127.0.0.1", 0, "")
    yield handle
    handle.stop()


@pytest.fixture
def page(browser: Any, server: WebServer) -> Iterator[Any]:
    with watched_tab(browser, server.url) as tab:
        yield tab


def test_fleet_page_trouble_first_then_click_through_to_the_server(
    page: Any, server: WebServer
) -> None:
    page.goto(server.url + "/fleet")
    assert page.title() == "Fleet · querywatch"
    rows = page.locator("table.fleet tbody tr")
    assert rows.count() == len(SERVERS) == 5
    names = [rows.nth(i).locator("a.server").inner_text() for i in range(rows.count())]
    assert names[:2] == ["hot", "down"], names  # firing, then down
    first = rows.nth(0).inner_text()
    assert "firing" in first and "1 firing, 0 pending" in first and "team=billing" in first
    assert "1 firing (hot)" in page.locator("#fleet-headline").inner_text()
    for name in SERVERS:  # every sparkline drawn from data
        spark = page.locator(f'svg[data-spark="{name}"]')
        assert int(spark.get_attribute("data-points")) > 0, name
        assert spark.locator("polyline").count() >= 1
        assert spark.bounding_box()["width"] > 50
    shot(page, "fleet")

    page.locator('table.fleet a.server[data-server="hot"]').click()
    page.wait_for_url("**/?server=hot")
    assert page.title() == "Overview · querywatch"
    assert "query regression" in page.locator("section.verdict").inner_text()
    assert int(page.get_attribute('svg[data-chart="db-time"]', "data-points")) > 0
    assert page.locator("#server-picker summary").inner_text() == "server: hot"
    shot(page, "fleet-hot-overview")

    page.locator("#server-picker summary").click()  # the picker: another server, same page
    page.locator("#server-picker nav a", has_text="calm").click()
    page.wait_for_url("**/?server=calm*")
    assert page.locator("#server-picker summary").inner_text() == "server: calm"
    assert "healthy" in page.locator("section.verdict").inner_text()
