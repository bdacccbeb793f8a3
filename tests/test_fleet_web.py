"""The fleet in the web app, over a store holding several servers: /fleet and its JSON twin
(trouble first, sparklines, links), the server picker on every page, links that stay on the
picked server, and /metrics with a bounded ``server`` label and each server's labels."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import webstore
from conftest import missing
from fleetstore import NOW, SERVERS, fill
from prometheus_client.parser import text_string_to_metric_families

from querywatch import fleet
from querywatch.store import Store
from querywatch.web import create_app, render_incident_report
from querywatch.web.metrics import StoreCollector, render


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = fill(tmp_path_factory.mktemp("fleet") / "fleet.db")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(store: Store) -> webstore.Client:
    return webstore.Client(create_app(store, clock=lambda: NOW))


def test_fleet_twin_lists_every_server_trouble_first(client: webstore.Client) -> None:
    ctx = client.get("/fleet.json?range=15m").json()
    order = [(r["server"], r["health"]) for r in ctx["rows"]]
    assert order == [
        ("hot", "firing"),
        ("down", "down"),
        ("young", "learning"),
        ("busy", "ok"),  # ok servers by DB time now, most first
        ("calm", "ok"),
    ]
    assert ctx["counts"]["firing"] == 1 and ctx["counts"]["ok"] == 2
    assert ctx["headline"].startswith("5 servers: 1 firing (hot), 1 down")
    hot = ctx["rows"][0]
    assert hot["incident"] == "inc-hot" and hot["incident_href"] == "/incidents/inc-hot"
    assert hot["open_incidents"] == {"firing": 1, "pending": 0}
    assert hot["labels"] == {"env": "prod", "team": "billing"} and hot["href"] == "/?server=hot"
    # 400 ms per 10 s is 40 ms/s, x4 in the last two minutes
    values = [v for v in hot["db_time"] if v is not None]
    assert len(hot["db_time"]) == 30 and values[0] == pytest.approx(40.0)
    assert hot["db_time_ms_per_s"] == pytest.approx(160.0)
    down = ctx["rows"][1]
    assert down["reason"] == "collector: cannot connect: refused" and down["age_s"] == 400


def test_fleet_page_shows_the_rows_and_sparklines(client: webstore.Client) -> None:
    html = client.get("/fleet").text
    assert html.index('data-server="hot"') < html.index('data-server="down"')
    assert 'data-spark="hot"' in html and "<polyline" in html
    assert 'href="/incidents/inc-hot"' in html and 'href="/?server=calm"' in html
    assert '<span class="label">team=billing</span>' in html


def test_every_page_has_the_server_picker(client: webstore.Client) -> None:
    pages = ("/", "/incidents", "/health", "/deploys", "/fleet", "/incidents/inc-hot", "/api")
    for path in (*pages, "/replication", "/statements/fq"):
        html = client.get(path).text
        assert 'id="server-picker"' in html, path
        assert html.count('href="') > 5
    overview = client.get("/?server=busy&range=15m").text
    assert 'href="?server=hot&amp;range=15m"' in overview  # same page, other server
    assert 'class="active" aria-current="page">busy</a>' in overview
    assert 'href="/?server=hot"' in client.get("/deploys").text  # not per server: its overview


def test_links_stay_on_the_picked_server(client: webstore.Client) -> None:
    ctx = client.get("/index.json?server=busy&range=15m").json()
    assert ctx["server"] == "busy" and ctx["statements"][0]["href"] == "/statements/fq?server=busy"
    statement = client.get(ctx["statements"][0]["href"].replace("fq", "fq.json")).json()
    assert statement["server"] == "busy"
    assert client.get("/health.json?server=down").json()["server"] == "down"
    assert client.get("/fleet.json?range=2d").status_code in (400, 422)  # not a range


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_label_every_server_with_its_labels(store: Store) -> None:
    got = samples(render(StoreCollector(store, lambda: NOW, window_s=60.0)).decode())
    servers = {dict(k)["server"] for k in got["querywatch_statement_calls_per_second"]}
    assert servers == set(SERVERS)
    info = {dict(k)["server"]: dict(k) for k in got["querywatch_server_info"]}
    assert info["hot"]["team"] == "billing" and info["young"]["env"] == ""
    assert got["querywatch_servers"] == {(("labelled", "true"),): 5, (("labelled", "false"),): 0}


def test_metrics_beyond_the_cap_are_summed_as_other(store: Store, tmp_path: Path) -> None:
    text = render(StoreCollector(store, lambda: NOW, window_s=60.0, max_servers=2))
    got = samples(text.decode())
    calls = {dict(k)["server"]: v for k, v in got["querywatch_statement_calls_per_second"].items()}
    assert set(calls) == {"hot", "busy", "other"}  # the firing one first, then by name
    assert calls["other"] == pytest.approx(3.0)  # calm, down, young: 1 call/s each
    db = {
        dict(k)["server"]: v
        for k, v in got["querywatch_statement_db_time_seconds_per_second"].items()
    }
    assert db["other"] == pytest.approx((20.0 + 10.0 + 5.0) / 10 / 1000)
    assert got["querywatch_servers"][(("labelled", "false"),)] == 3
    every = {dict(k).get("server") for family in got.values() for k in family}
    assert every <= {"hot", "busy", "other", None}  # no other server name leaks
    assert set(info["server"] for info in map(dict, got["querywatch_server_info"])) == {
        "hot",
        "busy",
    }
    last = {
        dict(k)["server"]: v
        for k, v in got["querywatch_collector_last_success_timestamp_seconds"].items()
    }
    assert last["other"] == NOW - 400  # the oldest of the folded servers
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool is not installed (apt-get install prometheus)")
    (tmp_path / "m.txt").write_bytes(text)
    with (tmp_path / "m.txt").open("rb") as f:
        result = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


def test_fleet_summary_is_pure_and_ordered() -> None:
    facts = [
        fleet.ServerFacts("p", last_success=99.0, interval_s=1.0, learning=False, pending=1),
        fleet.ServerFacts("s", last_success=50.0, interval_s=1.0, learning=False),
        fleet.ServerFacts("n", learning=False),
        fleet.ServerFacts("u", last_success=99.0, interval_s=1.0),
        fleet.ServerFacts(
            "r",
            last_success=99.5,
            interval_s=1.0,
            learning=False,
            last_error="timeout",
            last_error_at=90.0,
        ),
    ]
    rows = fleet.summarize(facts, 100.0)
    assert [(r.name, r.health.value) for r in rows] == [
        ("n", "stale"),
        ("s", "stale"),
        ("p", "pending"),
        ("u", "unwatched"),
        ("r", "ok"),  # the error was followed by a snapshot: recovered
    ]
    assert rows[1].reason == "last snapshot 50s ago (interval 1s)"
    assert fleet.sparkline([]) == "" and fleet.sparkline([None, 0.0]) == " ▁"


def test_the_incident_report_of_a_fleet_names_its_server(store: Store) -> None:
    html = render_incident_report(store, "inc-hot", clock=lambda: NOW)
    assert '<span class="server">hot</span>' in html
    assert 'id="server-picker"' not in html  # a file: its links would lead nowhere
