"""The replication page and its JSON twin, and topology events on the overview chart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import webstore
from typer.testing import CliRunner

from querywatch.cli import app
from querywatch.model import Incident, IncidentEvent, IncidentState
from querywatch.replication import (
    NodeState,
    ReplicaState,
    SlotState,
    TopologyEvent,
    TopologyIncident,
)
from querywatch.store import Store
from querywatch.topology import STATUS
from querywatch.web import create_app, render_incident_report

NOW = time.time()


def _replica(at: float, lag: float) -> ReplicaState:
    return ReplicaState(
        "db-1", "db-2", "db-2", "127.0.0.1", "streaming", "async", lag, 1e6, at, "db-2"
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[webstore.Client]:
    with Store(tmp_path / "s.db") as store:
        one, two = store.server("db-1").id, store.server("db-2").id
        for n, lag in enumerate((0.1, 0.2, 5.0, 9.0)):
            at = NOW - 40 + n * 10
            node = NodeState("db-1", at, True, in_recovery=False, timeline=1, system_identifier=7)
            slot = SlotState("db-1", "stale", "physical", False, 3e7, "reserved", at)
            store.record_replication(one, node, [_replica(at, lag)], [slot])
            replica = NodeState("db-2", at, True, in_recovery=True, timeline=1, upstream="h:1")
            store.record_replication(two, replica)
        lag = TopologyEvent(
            "db-1", NOW - 15, "replication_lag", "replica db-2 replays 5.0 s behind"
        )
        store.add_topology_events(one, [lag])
        finding = {
            "id": "findings/replication_slot_inactive",
            "server": "db-1",
            "subject": "stale",
            "message": "replication slot stale (physical) is inactive and holds 28.6 MiB of WAL",
            "fix": "SELECT pg_drop_replication_slot('stale');",
        }
        store.set_status(f"{STATUS}db-1", {"role": "primary", "findings": [finding]})
        yield webstore.Client(create_app(store, clock=lambda: NOW))


def test_replication_json_shows_roles_lag_findings_and_events(client: webstore.Client) -> None:
    doc = client.get("/replication.json?range=15m").json()
    servers = {s["server"]: s for s in doc["nodes"]}
    assert (servers["db-1"]["role"], servers["db-2"]["role"]) == ("primary", "replica")
    assert servers["db-2"]["upstream"] == "h:1"
    [replica] = servers["db-1"]["replicas"]
    assert (replica["name"], replica["replay_lag_s"]) == ("db-2", 9.0)
    assert replica["lag"]["seconds"] == [0.1, 0.2, 5.0, 9.0]
    assert servers["db-1"]["findings"][0]["fix"] == "SELECT pg_drop_replication_slot('stale');"
    assert [(e["kind"], e["rule"]) for e in doc["events"]] == [
        ("replication_lag", "rules/replication_lag")
    ]


def test_replication_page_and_overview_marker(client: webstore.Client) -> None:
    html = client.get("/replication").text
    assert "pg_drop_replication_slot(&#x27;stale&#x27;)" in html and "<svg" in html
    assert "replica db-2 replays 5.0 s behind" in html
    overview = client.get("/index.json?range=15m&server=db-1").json()
    markers = [m for m in overview["chart"]["markers"] if m["href"] == "/replication"]
    assert [m["label"] for m in markers] == ["replication_lag"]


def test_topology_events_on_an_incident_timeline_and_its_report(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        one, two = store.server("db-1").id, store.server("db-2").id
        opened = NOW - 120
        fired = IncidentEvent(opened, IncidentState.FIRING, "fired")
        incident = Incident("7", "k", IncidentState.FIRING, opened, opened, None, ("r",), (fired,))
        store.save_incident(one, incident, {"verdict": "query_regression", "summary": "s"})
        promoted = TopologyEvent("db-2", NOW - 60, "promoted", "promoted to primary")
        store.add_topology_events(two, [promoted])
        client = webstore.Client(create_app(store, clock=lambda: NOW))
        timeline = client.get("/incidents/7.json").json()["timeline"]
        report = render_incident_report(store, "7", clock=lambda: NOW)
    assert [(e["state"], e["detail"]) for e in timeline] == [
        ("firing", "fired"),
        ("promoted", "db-2: promoted to primary"),
    ]
    assert "db-2: promoted to primary" in report


def test_replication_command_text_and_json(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        one = store.server("db-1").id
        node = NodeState("db-1", NOW - 5, True, in_recovery=False, timeline=2, system_identifier=7)
        event = TopologyEvent("db-1", NOW - 5, "promoted", "promoted to primary (timeline 1 -> 2)")
        store.record_replication(one, node, [_replica(NOW - 5, 0.25)], events=[event])
    runner = CliRunner()
    text = runner.invoke(app, ["replication", "--store", str(path)])
    doc = runner.invoke(app, ["replication", "--store", str(path), "--format", "json"])
    missing = runner.invoke(app, ["replication", "--store", str(tmp_path / "none.db")])
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[:2] == [
        "db-1 primary timeline 2",
        "  replica db-2 streaming async: 0.2 s, 1,000,000 bytes behind",
    ]
    assert "db-1 promoted: promoted to primary (timeline 1 -> 2)" in text.output
    assert json.loads(doc.output)["nodes"][0]["replicas"][0]["replay_lag_s"] == 0.25
    assert "no store at" in str(missing.exception)  # main() prints it as one line


def test_topology_pages_open_and_resolved_on_the_page_json_and_command(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        one, two = store.server("db-1").id, store.server("db-2").id
        store.record_replication(two, NodeState("db-2", NOW - 5, True, in_recovery=False))
        failover = TopologyIncident(
            two, "failover:7", "failover-db-2-1", "failover", "db-2", two, NOW - 50, "promoted"
        )
        down = TopologyIncident(
            one, "down:7:1.0", "down-db-1-1", "server_unreachable", "db-1", one, NOW - 60, "gone"
        )
        old = replace(down, id="down-db-1-0", key="down:7:0.5", opened_at=NOW - 9000)
        for incident in (old, down, failover):
            store.open_topology_incident(incident)
        store.resolve_topology_incident(one, old.id, NOW - 8000)  # before the range: not shown
        store.resolve_topology_incident(two, failover.id, NOW - 20)
        doc = webstore.Client(create_app(store, clock=lambda: NOW)).get("/replication.json").json()
        html = webstore.Client(create_app(store, clock=lambda: NOW)).get("/replication").text
    text = CliRunner().invoke(app, ["replication", "--store", str(path)]).output
    assert [(i["id"], i["state"], i["server"]) for i in doc["incidents"]] == [
        ("failover-db-2-1", "resolved", "db-2"),
        ("down-db-1-1", "firing", "db-1"),
    ]
    assert doc["incidents"][0]["resolved_at"] is not None
    assert 'data-doc="verdicts/failover"' in html and "down-db-1-0" not in html
    assert "firing server_unreachable down-db-1-1 (since " in text
    assert "resolved failover failover-db-2-1 (since " in text
