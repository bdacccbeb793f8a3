"""What every alert channel offers the dispatcher, and the URL checks they share.

A channel is pure: it turns a :class:`Notification` into the URL and JSON body to POST. The
:class:`~querywatch.alerts.dispatcher.Dispatcher` does the sending.

>>> redact("https://user:pw@hooks.slack.com/services/T0/B0/secret?x=1")
'https://hooks.slack.com/services/…'
>>> redact("http://127.0.0.1:8080/hook")
'http://127.0.0.1:8080/hook'
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from querywatch.alerts.message import Notification, clip
from querywatch.errors import ConfigError


class Channel(Protocol):
    """An alert destination: a name, a target safe to show, and the request for a notification."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str:
        """Where it sends, without secrets (shown in logs and ``querywatch status``)."""
        ...

    @property
    def resend_interval(self) -> float | None:
        """Seconds between re-sends of a firing incident, or None to send it once."""
        ...

    def request(self, n: Notification) -> tuple[str, object]:
        """The URL to POST to and the JSON body."""
        ...


def checked_url(url: str, what: str) -> str:
    """``url`` itself when it is an absolute http(s) URL with a host; else a ConfigError."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(
            f"{what}: {redact(url)!r} is not an http(s) URL "
            "(give a full URL such as https://hooks.example.com/alerts)"
        )
    return url


def redact(url: str) -> str:
    """``url`` without credentials, query or fragment, keeping only the first path segment.

    Webhook URLs often hold their secret in the path (Slack's ``/services/T/B/XXXX``), so
    anything past the first segment is shown as ``…``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return clip(url, 60)
    if not parts.scheme or not parts.netloc:
        return clip(url.partition("?")[0], 60)
    host = parts.netloc.rpartition("@")[2]
    segments = [s for s in parts.path.split("/") if s]
    path = ""
    if segments:
        path = "/" + segments[0] + ("/…" if len(segments) > 1 else "")
    return f"{parts.scheme}://{host}{path}"


def mask_key(key: str) -> str:
    """A secret key shown by its last four characters only."""
    return "…" + key[-4:] if len(key) >= 12 else "…"
