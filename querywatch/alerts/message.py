"""The notification every channel formats, and the pure helpers that read it.

A :class:`Notification` carries the contract diagnosis object (the JSON dict that
``querywatch diagnose --format json`` prints). Channels only read it through the helpers below, so
Slack, PagerDuty and Alertmanager all carry the same summary and culprits: every statement the
diagnosis names (one incident may hold several, e.g. all statements on a table that lost its index).

>>> n = Notification("firing", "42", {"verdict": "query_regression", "summary": "x is slow"}, 0.0)
>>> title(n)
'[FIRING] querywatch incident 42: query_regression'
>>> iso(0.0)
'1970-01-01T00:00:00.000Z'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from querywatch.doclinks import DEFAULT_BASE, REFERENCE, page_url, reference_url

Status = Literal["firing", "resolved"]

STORE_UNWRITABLE = "store_unwritable"  # the verdict of querywatch's own alert: its store is full

# PagerDuty's severities; Alertmanager and Slack reuse the same words. Every verdict an alert can
# carry is a key (querywatch.docs reads them: each has a page).
SEVERITY_BY_VERDICT: Mapping[str, str] = {
    "query_regression": "critical",
    "lock_contention": "critical",
    "traffic_surge": "warning",
    "healthy": "info",
    STORE_UNWRITABLE: "error",
    "failover": "critical",  # querywatch.topology: a replica promoted, a DSN that moved
    "server_unreachable": "critical",  # a watched primary gone
    "replication_lag": "warning",  # a replica replaying far behind
}


@dataclass(frozen=True)
class Notification:
    """One incident changing state: ``firing`` when it opens, ``resolved`` when it closes.

    ``at`` is when that happened (POSIX seconds). ``source`` names the monitored server (no
    password), ``started_at`` is when a resolved incident first fired (when known) and ``link`` an
    optional URL to the incident in querywatch's web UI. ``revision`` is 0 for the page itself and
    n for its n-th update: a firing incident that more statements joined, sent again under its id.
    ``docs_url`` is the page of the verdict in the documentation (the dispatcher sets it from the
    ``docs_url`` setting; :func:`docs_link` falls back to the default base).
    """

    status: Status
    incident: str
    diagnosis: Mapping[str, object]
    at: float
    source: str = "postgresql"
    started_at: float | None = None
    link: str | None = None
    revision: int = 0
    docs_url: str | None = None


def iso(ts: float) -> str:
    """POSIX seconds as ISO 8601 / RFC 3339 in UTC with a ``Z`` suffix."""
    text = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marking a cut with an ellipsis."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def verdict(n: Notification) -> str:
    return _text(n.diagnosis, "verdict") or "unknown"


def severity(n: Notification) -> str:
    return SEVERITY_BY_VERDICT.get(verdict(n), "error")


def summary(n: Notification) -> str:
    """The diagnosis' one-sentence summary, or a generic one when it has none."""
    return _text(n.diagnosis, "summary") or f"querywatch incident {n.incident}: {verdict(n)}"


def docs_link(n: Notification, base: str = DEFAULT_BASE) -> str:
    """The documentation page of the notification's verdict: what it means and how to fix it
    (every verdict of :data:`SEVERITY_BY_VERDICT` has one; the reference index for another).

    >>> docs_link(Notification("firing", "1", {"verdict": "lock_contention"}, 0.0))
    'http://127.0.0.1:8080/docs/reference/verdicts/lock_contention/'
    """
    if n.docs_url:
        return n.docs_url
    v = verdict(n)
    return (
        reference_url(f"verdicts/{v}", base)
        if v in SEVERITY_BY_VERDICT
        else page_url(REFERENCE, base)
    )


def title(n: Notification) -> str:
    updated = " (updated)" if n.revision and n.status == "firing" else ""
    return f"[{n.status.upper()}] querywatch incident {n.incident}: {verdict(n)}{updated}"


def server_labels(n: Notification) -> dict[str, str]:
    """The labels of the server the incident is about (``[[servers]]`` labels such as env, team,
    role), which the diagnosis of a fleet's incident carries; {} when it has none.

    >>> server_labels(Notification("firing", "7", {"labels": {"env": "prod"}}, 0.0, "db1"))
    {'env': 'prod'}
    """
    found = n.diagnosis.get("labels")
    if not isinstance(found, Mapping):
        return {}
    return {str(k): str(v) for k, v in found.items() if isinstance(v, str | int | float)}


def culprits(n: Notification) -> list[Mapping[str, object]]:
    """Every culprit of the diagnosis, largest excess DB time first (the contract's order)."""
    items = n.diagnosis.get("culprits")
    if isinstance(items, Sequence) and not isinstance(items, str):
        return [c for c in items if isinstance(c, Mapping)]
    return []


def top_culprit(n: Notification) -> Mapping[str, object] | None:
    """The culprit holding the most excess DB time."""
    found = culprits(n)
    return found[0] if found else None


def culprit_line(culprit: Mapping[str, object]) -> str:
    """One line naming the culprit: kind, share of the excess and its query text."""
    kind = _text(culprit, "kind") or "culprit"
    share = culprit.get("excess_share")
    share_text = f", {share:.0%} of the excess DB time" if isinstance(share, int | float) else ""
    query = " ".join((_text(culprit, "query") or "?").split())
    return f"{kind}{share_text}: {query}"


def evidence(culprit: Mapping[str, object]) -> list[str]:
    items = culprit.get("evidence")
    if isinstance(items, Sequence) and not isinstance(items, str):
        return [str(item) for item in items]
    return []


def culprit_text(n: Notification) -> str:
    """One line per culprit, largest first, or an empty string when the diagnosis names none.

    >>> two = [{"kind": "latency", "query": "UPDATE t SET x = $1"}, {"query": "SELECT x FROM t"}]
    >>> print(culprit_text(Notification("firing", "7", {"culprits": two}, 0.0)))
    latency: UPDATE t SET x = $1
    culprit: SELECT x FROM t
    """
    return "\n".join(culprit_line(c) for c in culprits(n))


def _text(m: Mapping[str, object], key: str) -> str:
    value = m.get(key)
    return value if isinstance(value, str) else ""
