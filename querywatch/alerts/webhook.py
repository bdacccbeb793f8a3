"""The contract webhook: ``{"status", "incident", "diagnosis"}`` POSTed as JSON.

>>> n = Notification("resolved", "7", {"verdict": "healthy"}, 0.0)
>>> payload(n)
{'status': 'resolved', 'incident': '7', 'diagnosis': {'verdict': 'healthy'}}
"""

from __future__ import annotations

from dataclasses import dataclass

from querywatch.alerts.channel import checked_url, redact
from querywatch.alerts.message import Notification


def payload(n: Notification) -> dict[str, object]:
    """Exactly the keys of the public contract, the diagnosis copied as given."""
    return {"status": n.status, "incident": n.incident, "diagnosis": dict(n.diagnosis)}


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
