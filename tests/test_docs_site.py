"""The documentation site: ``mkdocs build --strict`` succeeds, no internal link or anchor of
the built pages is broken, every id has its built page, ``querywatch serve`` serves the site at
/docs/ (or says how to build it), and every alert payload of every channel carries a link that
lands on its verdict's page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import docskit
import pytest
import webstore

from querywatch import docs
from querywatch.alerts import alertmanager, pagerduty, slack, webhook
from querywatch.alerts.message import Notification
from querywatch.store import Store
from querywatch.web.app import create_app

BASE = "http://127.0.0.1:8080/docs/"
SITE_ROOT = "http://site.test/"  # pages resolved as URLs under this root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return docskit.built(tmp_path_factory.mktemp("docs") / "site", strict=True)


@pytest.fixture(scope="module")
def client(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webstore.Client]:
    path = tmp_path_factory.mktemp("store") / "qw.db"
    Store(path).close()
    yield webstore.Client(create_app(path, docs_site=site))


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.h1 = ""
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        for name in ("href", "src"):
            if found.get(name) and not (tag == "link" and found.get("rel") == "canonical"):
                self.links.append(str(found[name]))
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag: str) -> None:
        self._in_h1 = self._in_h1 and tag != "h1"

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1 += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _file(site: Path, url: str) -> Path:
    """The built file a URL under :data:`SITE_ROOT` is served from."""
    path = urlsplit(url).path.removeprefix("/")
    return site / (path + "index.html" if path.endswith("/") or not path else path)


def test_every_id_has_a_built_page_with_its_fix(site: Path) -> None:
    for doc_id in docs.ids():
        page = site / "reference" / doc_id / "index.html"
        assert page.is_file(), doc_id
        parsed = _parse(page.read_text(encoding="utf-8"))
        assert "fix" in parsed.ids, f"{doc_id}: no Fix section in the built page"


def test_no_internal_link_or_anchor_is_broken(site: Path) -> None:
    pages = {p: _parse(p.read_text(encoding="utf-8")) for p in site.rglob("*.html")}
    broken, checked = [], 0
    for path, page in pages.items():
        here = SITE_ROOT + str(path.relative_to(site)).removesuffix("index.html")
        for href in page.links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", href) and not href.startswith(SITE_ROOT):
                continue  # http(s), mailto, data: not a page of the site
            url = urljoin(here, href)
            target = _file(site, url)
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {href}")
                continue
            checked += 1
            fragment = urlsplit(url).fragment
            if fragment and target in pages and fragment not in pages[target].ids:
                broken.append(f"{path.relative_to(site)}: {href} (no anchor)")
    assert len(pages) > len(docs.ids()) and checked > 50 * len(pages)
    assert broken == []


def test_the_site_loads_nothing_from_outside(site: Path) -> None:
    outside = set()
    for path in site.rglob("*.html"):
        for src in re.findall(
            r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"',
            path.read_text(encoding="utf-8"),
        ):
            outside.add(src)
    assert outside == set(), "the site must work offline (no CDN, no Google Fonts)"


def test_every_check_links_to_its_section_of_the_install_page(site: Path) -> None:
    from querywatch import check

    names = set(docs.emitted(check, "Finding", 0))
    assert {"preload", "privileges", "cpu cores", "connection"} <= names
    ids = _parse((site / "install" / "index.html").read_text(encoding="utf-8")).ids
    missing = {n: docs.check_link(n) for n in names if docs.anchor(n) not in ids}
    assert missing == {}, "`querywatch check` names without a '### <name>' section in install.md"


def test_serve_serves_the_site_at_docs(client: webstore.Client) -> None:
    redirect = client.get("/docs")
    assert redirect.status_code == 308 and redirect.headers["location"] == "/docs/"
    home = client.get("/docs/")
    assert home.status_code == 200 and "<title>querywatch</title>" in home.text
    policy = home.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy and "default-src 'none'" in policy
    search = client.get("/docs/search/search_index.json")
    assert search.status_code == 200 and "query_regression" in search.text
    missing = client.get("/docs/reference/verdicts/no_such_verdict/")
    assert missing.status_code == 404
    dashboard = client.get("/")
    assert "script-src" not in dashboard.headers["content-security-policy"]


def test_serve_says_how_to_build_a_missing_site(tmp_path: Path) -> None:
    Store(tmp_path / "qw.db").close()
    app = create_app(tmp_path / "qw.db", docs_site=tmp_path / "not-built")
    page = webstore.Client(app).get("/docs/reference/verdicts/healthy/")
    assert page.status_code == 404
    assert "was not built" in page.text and "make install" in page.text


# -- alerts ---------------------------------------------------------------------------------------
def _slack(n: Notification) -> list[str]:
    body: Any = slack.payload(n)
    texts = [e["text"] for b in body["blocks"] if b["type"] == "context" for e in b["elements"]]
    return re.findall(r"<(http[^|>]+)\|what to do", " ".join(texts))


def _pagerduty(n: Notification) -> list[str]:
    event: Any = pagerduty.payload(n, "routing-key-0123")
    return [link["href"] for link in event["links"]] + [
        event["payload"]["custom_details"]["docs_url"]
    ]


CHANNELS: dict[str, Callable[[Notification], list[str]]] = {
    "webhook": lambda n: [str(webhook.payload(n)["docs_url"])],
    "slack": _slack,
    "pagerduty": _pagerduty,
    "alertmanager": lambda n: [alertmanager.payload(n)[0]["annotations"]["runbook_url"]],  # type: ignore[index]
}


def test_every_channel_is_checked() -> None:
    assert set(CHANNELS) == {i.split("/")[1] for i in docs.ids() if i.startswith("alerts/")}


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_every_alert_payload_carries_a_working_link(channel: str, client: webstore.Client) -> None:
    verdicts = [i.split("/")[1] for i in docs.ids() if i.startswith("verdicts/")]
    for verdict in verdicts:
        n = Notification("firing", "7", {"verdict": verdict, "summary": "s"}, 0.0)
        links = CHANNELS[channel](n)
        assert links and set(links) == {f"{BASE}reference/verdicts/{verdict}/"}, (verdict, links)
        page = client.get(urlsplit(links[0]).path)
        assert page.status_code == 200, links[0]
        assert verdict in _parse(page.text).h1, f"{links[0]} lands on {_parse(page.text).h1!r}"


def test_a_configured_base_reaches_the_outbox_through_the_dispatcher(tmp_path: Path) -> None:
    from querywatch.alerts.dispatcher import Dispatcher
    from querywatch.alerts.outbox import from_json
    from querywatch.alerts.webhook import WebhookChannel

    n = Notification("firing", "7", {"verdict": "lock_contention"}, 0.0)
    expected = "https://qw.example.com/docs/reference/verdicts/lock_contention/"
    with (
        Store(tmp_path / "qw.db") as store,
        Dispatcher(
            [WebhookChannel("http://127.0.0.1:9/hook")],
            store=store,
            docs_base="https://qw.example.com/docs/",
        ) as dispatcher,
    ):
        (entry,) = dispatcher.entries(n)
    kept = from_json(entry.notification)  # what is sent, now or after a restart
    assert kept.docs_url == expected
    assert webhook.payload(kept)["docs_url"] == expected
    assert alertmanager.payload(kept)[0]["annotations"]["runbook_url"] == expected  # type: ignore[index]
