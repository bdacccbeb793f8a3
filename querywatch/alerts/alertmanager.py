"""Prometheus Alertmanager API v2: a JSON array of alerts POSTed to ``{url}/api/v2/alerts``.

Alertmanager tells alerts apart by their labels, so the labels hold only what stays the same
from firing to resolved (the incident and the monitored server); the verdict, summary and
culprit go in annotations, with ``runbook_url``: the documentation page of the verdict. A
resolved alert carries ``endsAt``. An alert without ``endsAt`` is resolved by Alertmanager after
its ``resolve_timeout`` (5 minutes by default) unless it is sent again, so this channel asks the
dispatcher to re-send firing incidents.
"""

from __future__ import annotations

from dataclasses import dataclass

from querywatch.alerts.channel import checked_url, redact
from querywatch.alerts.message import (
    Notification,
    culprit_text,
    docs_link,
    iso,
    server_labels,
    severity,
    summary,
    verdict,
)

ALERTNAME = "QuerywatchIncident"
RESEND_INTERVAL = 60.0


def alert_labels(n: Notification) -> dict[str, str]:
    """The incident's identity, and the server's labels (env, team...) to route on."""
    fixed = {"alertname": ALERTNAME, "incident": n.incident, "instance": n.source}
    return {**server_labels(n), **fixed}


def alert_annotations(n: Notification) -> dict[str, str]:
    notes = {"summary": summary(n), "description": culprit_text(n) or summary(n)}
    notes["verdict"] = verdict(n)
    notes["severity"] = severity(n)
    notes["runbook_url"] = docs_link(n)  # the annotation Alertmanager templates link to
    return notes


def alert(n: Notification) -> dict[str, object]:
    item: dict[str, object] = {"labels": alert_labels(n), "annotations": alert_annotations(n)}
    if n.status == "firing":
        item["startsAt"] = iso(n.at)
    else:
        if n.started_at is not None:
            item["startsAt"] = iso(n.started_at)
        item["endsAt"] = iso(n.at)
    if n.link:
        item["generatorURL"] = n.link
    return item


def payload(n: Notification) -> list[dict[str, object]]:
    return [alert(n)]


def alerts_url(base: str) -> str:
    return base.rstrip("/") + "/api/v2/alerts"


@dataclass(frozen=True)
class AlertmanagerChannel:
    url: str
    name: str = "alertmanager"
    resend_interval: float | None = RESEND_INTERVAL

    def __post_init__(self) -> None:
        checked_url(self.url, "alertmanager url")

    @property
    def target(self) -> str:
        return redact(self.url)

    def request(self, n: Notification) -> tuple[str, object]:
        return alerts_url(self.url), payload(n)
