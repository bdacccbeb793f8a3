"""The route table: every page is its twin's context rendered, and the statement rankings the web
accepts are ``top.SORT_KEYS`` (io included, ranked by the blocks read the store sums)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import webstore

from querywatch import top
from querywatch.model import Counters, Interval, StatementDelta, StatementKey
from querywatch.store import Store
from querywatch.web import create_app
from querywatch.web.routes import PAGES, Page
from querywatch.web.templates import render

NOW = 1_800_000_000.0  # on an hour boundary
READER = StatementKey(1, 10, 7)  # few calls, many blocks read
CHATTY = StatementKey(1, 10, 8)  # many calls, few blocks read


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = webstore.synthetic(tmp_path_factory.mktemp("routes") / "s.db", NOW, hours=1.0)
    yield store
    store.close()


def _client(store: Store) -> webstore.Client:
    return webstore.Client(create_app(store, clock=lambda: NOW))


def _urls(path: str) -> str:
    return path.replace("{fingerprint}", "fa").replace("{incident_id}", "inc-1")


@pytest.mark.parametrize("page", [p for p in PAGES if p.twin], ids=lambda p: p.template)
def test_each_page_renders_its_twin(synthetic: Store, page: Page) -> None:
    c = _client(synthetic)
    twin = c.get(_urls(page.twin_path))
    html = c.get(_urls(page.path))
    assert twin.status_code == html.status_code == 200, (twin.text, html.text)
    assert twin.headers["content-type"] == "application/json"
    assert html.headers["content-type"].startswith("text/html")
    assert html.text == render(page.template, twin.json())


def test_sort_keys_are_the_one_declaration(synthetic: Store) -> None:
    spec = _client(synthetic).get("/openapi.json").json()
    assert spec["components"]["schemas"]["SortName"]["enum"] == list(top.SORT_KEYS)
    assert "io" in top.SORT_KEYS


def _io_store(path: Path) -> Store:
    """An hour of 10 s intervals (rolled up as the watcher does, so a 24h range reads hourly
    rollups and a 15m range raw intervals): READER reads 40 + 5 + 3 blocks per interval in 1
    call, CHATTY reads 1 block in 50 calls."""
    store = Store(path)
    srv = store.server(webstore.SERVER)
    keys = {READER: "reader", CHATTY: "chatty"}
    texts = {"reader": "SELECT * FROM big", "chatty": "SELECT 1"}
    t, first = NOW - 3600, True
    while t + 10 <= NOW:
        deltas = (
            StatementDelta(
                READER,
                Counters(
                    calls=1, exec_ms=1.0, shared_blks_read=40, local_blks_read=5, temp_blks_read=3
                ),
            ),
            StatementDelta(CHATTY, Counters(calls=50, exec_ms=5.0, shared_blks_read=1)),
        )
        store.record_interval(
            srv.id, Interval(t, t + 10, deltas, None), keys if first else {}, texts if first else {}
        )
        first, t = False, t + 10
        if int(t) % 600 == 0:
            store.maintain(t)
    store.maintain(NOW)
    return store


@pytest.mark.parametrize(("range_name", "intervals"), [("15m", 90), ("24h", 360)])
def test_statements_by_io_ranks_by_blocks_read(
    tmp_path: Path, range_name: str, intervals: int
) -> None:
    with _io_store(tmp_path / "io.db") as store:
        c = _client(store)
        by_io = c.get(f"/api/statements?by=io&range={range_name}").json()
        by_calls = c.get(f"/api/statements?by=calls&range={range_name}").json()
    assert by_io["by"] == "io"
    assert [s["fingerprint"] for s in by_io["statements"]] == ["reader", "chatty"]
    assert [s["io_blocks"] for s in by_io["statements"]] == [48 * intervals, intervals]
    assert [s["fingerprint"] for s in by_calls["statements"]] == ["chatty", "reader"]
    assert all("io_blocks" not in s for s in by_calls["statements"])
