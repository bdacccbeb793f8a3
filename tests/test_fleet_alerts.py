"""Alerts of a fleet's incident name the server and carry its [[servers]] labels on every channel:
the webhook's diagnosis (as the monitor writes it), Alertmanager labels to route on, PagerDuty
custom details, Slack's context line. Without labels, each payload is as it always was."""

from __future__ import annotations

from typing import Any

from querywatch.alerts import alertmanager, pagerduty, slack, webhook
from querywatch.alerts.message import Notification, server_labels

DOC = {
    "verdict": "query_regression",
    "summary": "fq is 4x slower",
    "culprits": [{"fingerprint": "fq", "query": "SELECT 1", "kind": "latency"}],
    "server": "billing",
    "labels": {"env": "prod", "team": "billing"},
}


def note(doc: dict[str, Any]) -> Notification:
    return Notification("firing", "inc-1", doc, 1_800_000_000.0, source="billing")


def test_every_channel_names_the_server_and_its_labels() -> None:
    n = note(DOC)
    assert server_labels(n) == {"env": "prod", "team": "billing"}
    body: Any = webhook.payload(n)
    assert body["diagnosis"]["server"] == "billing" and body["diagnosis"]["labels"]["env"] == "prod"
    labels = alertmanager.payload(n)[0]["labels"]
    assert labels == {
        "alertname": "QuerywatchIncident",
        "incident": "inc-1",
        "instance": "billing",
        "env": "prod",
        "team": "billing",
    }
    event: Any = pagerduty.payload(n, "R" * 32)
    details = event["payload"]["custom_details"]
    assert details["server"] == "billing" and details["labels"] == {
        "env": "prod",
        "team": "billing",
    }
    assert event["payload"]["source"] == "billing"
    blocks: Any = slack.payload(n)["blocks"]
    context = next(b for b in blocks if b["type"] == "context")["elements"][0]["text"]
    assert "source: billing" in context and "env=prod, team=billing" in context


def test_a_label_never_replaces_the_incident_identity() -> None:
    doc = {**DOC, "labels": {"instance": "spoofed", "alertname": "x", "env": "prod"}}
    labels: Any = alertmanager.payload(note(doc))[0]["labels"]
    assert labels["instance"] == "billing" and labels["alertname"] == "QuerywatchIncident"


def test_without_labels_the_payloads_are_unchanged() -> None:
    plain = {k: v for k, v in DOC.items() if k not in ("server", "labels")}
    n = note(plain)
    assert server_labels(n) == {}
    labels: Any = alertmanager.payload(n)[0]["labels"]
    assert set(labels) == {"alertname", "incident", "instance"}
    event: Any = pagerduty.payload(n, "R" * 32)
    assert "labels" not in event["payload"]["custom_details"]
