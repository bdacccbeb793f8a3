"""The contract webhook: ``{"status", "incident", "diagnosis"}`` POSTed as JSON, and
``docs_url``, the documentation page of the verdict (an addition to the contract).

>>> n = Notification("resolved", "7", {"verdict": "healthy"}, 0.0)
>>> payload(n)
{'status': 'resolved', 'incident': '7', 'diagnosis': {'verdict': 'healthy'}, 'docs_url': 'http://127.0.0.1:8080/docs/reference/verdicts/healthy/'}
"""

from __future__ import annotations

from dataclasses import dataclass

from querywatch.alerts.channel import checked_url, redact
from querywatch.alerts.message import Notification, docs_link


def payload(n: Notification) -> dict[str, object]:
    """The keys of the public contract, the diagnosis copied as given, and the docs link."""
    return {
        "status": n.status,
        "incident": n.incident,
        "diagnosis": dict(n.diagnosis),
        "docs_url": docs_link(n),
    }


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    name: str = "webhook"
    resend_interval: float | None = None

    def __post_init__(self) -> None:
        checked_url(self.url, "alert webhook")

    @property
    def target(self) -> str:
        return redact(self.url)

    def request(self, n: Notification) -> tuple[str, object]:
        return self.url, payload(n)
