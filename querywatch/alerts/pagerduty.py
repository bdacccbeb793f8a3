"""PagerDuty Events API v2: ``trigger`` when an incident fires, ``resolve`` with the same dedup key.

PagerDuty answers 202 to an accepted event; the summary is at most 1,024 characters and the
dedup key at most 255.
"""

from __future__ import annotations

from dataclasses import dataclass

from querywatch.alerts.channel import checked_url, mask_key, redact
from querywatch.alerts.message import (
    Notification,
    clip,
    culprit_text,
    culprits,
    docs_link,
    iso,
    server_labels,
    severity,
    summary,
    top_culprit,
    verdict,
)
from querywatch.errors import ConfigError

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_LIMIT = 1024
DEDUP_LIMIT = 255


def dedup_key(n: Notification) -> str:
    return clip(f"querywatch/{n.incident}", DEDUP_LIMIT)


def _details(n: Notification) -> dict[str, object]:
    details: dict[str, object] = {"incident": n.incident, "verdict": verdict(n)}
    details["server"] = n.source
    if labels := server_labels(n):
        details["labels"] = labels
    details["docs_url"] = docs_link(n)
    details["culprit"] = culprit_text(n)
    for key in ("traffic_factor", "window", "baseline", "deploys"):
        if key in n.diagnosis:
            details[key] = n.diagnosis[key]
    culprit = top_culprit(n)
    if culprit is not None:
        details["culprit_detail"] = dict(culprit)
    if len(culprits(n)) > 1:  # every statement of the incident, largest excess first
        details["culprits"] = [dict(c) for c in culprits(n)]
    return details


def _component(n: Notification) -> str:
    culprit = top_culprit(n)
    fingerprint = culprit.get("fingerprint") if culprit is not None else None
    return f"query {fingerprint}" if isinstance(fingerprint, str) else "postgresql"


def payload(n: Notification, routing_key: str) -> dict[str, object]:
    event: dict[str, object] = {
        "routing_key": routing_key,
        "event_action": "trigger" if n.status == "firing" else "resolve",
        "dedup_key": dedup_key(n),
    }
    if n.status == "firing":
        event["payload"] = {
            "summary": clip(summary(n), SUMMARY_LIMIT),
            "source": n.source,
            "severity": severity(n),
            "timestamp": iso(n.at),
            "component": _component(n),
            "group": "querywatch",
            "class": verdict(n),
            "custom_details": _details(n),
        }
        event["client"] = "querywatch"
        if n.link:
            event["client_url"] = n.link
        event["links"] = [
            {"href": docs_link(n), "text": f"What to do: {verdict(n)} (querywatch docs)"}
        ]
    return event


@dataclass(frozen=True)
class PagerDutyChannel:
    routing_key: str
    url: str = EVENTS_URL
    name: str = "pagerduty"
    resend_interval: float | None = None

    def __post_init__(self) -> None:
        checked_url(self.url, "pagerduty url")
        if not self.routing_key or any(c.isspace() for c in self.routing_key):
            raise ConfigError(
                "pagerduty routing key: empty or contains spaces "
                "(copy the Events API v2 integration key of the service)"
            )

    @property
    def target(self) -> str:
        return f"{redact(self.url)} key {mask_key(self.routing_key)}"

    def request(self, n: Notification) -> tuple[str, object]:
        return self.url, payload(n, self.routing_key)
