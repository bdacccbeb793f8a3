"""Slack incoming webhooks: a ``text`` fallback plus Block Kit ``blocks``.

Slack limits a header to 150 characters of plain text and a section to 3,000 characters of
mrkdwn, and treats ``&``, ``<`` and ``>`` as markup, so text is escaped and clipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from querywatch.alerts.channel import checked_url, redact
from querywatch.alerts.message import (
    Notification,
    clip,
    culprits,
    docs_link,
    evidence,
    server_labels,
    summary,
    title,
    verdict,
)

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
QUERY_LIMIT = 1500
EVIDENCE_LIMIT = 8
CULPRIT_LIMIT = 5  # a section each (Slack allows 50 blocks); more are counted, not shown
ICON = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


def escape(text: str) -> str:
    """Slack's three control characters escaped (``<!channel>`` would ping everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(markdown: str) -> dict[str, object]:
    text = {"type": "mrkdwn", "text": clip(markdown, SECTION_LIMIT)}
    return {"type": "section", "text": text}


def _culprit_blocks(n: Notification) -> list[dict[str, object]]:
    """A section per culprit: every statement of the incident, largest excess first."""
    found = culprits(n)
    blocks = [
        _culprit_block(c, "*Culprit*" if len(found) == 1 else f"*Culprit {i} of {len(found)}*")
        for i, c in enumerate(found[:CULPRIT_LIMIT], start=1)
    ]
    if len(found) > CULPRIT_LIMIT:
        more = f"and {len(found) - CULPRIT_LIMIT} more culprits in querywatch"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return blocks


def _culprit_block(culprit: Mapping[str, object], label: str) -> dict[str, object]:
    kind = escape(str(culprit.get("kind", "culprit")))
    share = culprit.get("excess_share")
    share_text = f" — {share:.0%} of the excess DB time" if isinstance(share, int | float) else ""
    query = clip(" ".join(str(culprit.get("query", "?")).split()), QUERY_LIMIT)
    lines = [f"{label} ({kind}){share_text}", f"```{escape(query).replace('```', 'ʼʼʼ')}```"]
    lines += [f"• {escape(item)}" for item in evidence(culprit)[:EVIDENCE_LIMIT]]
    return _section("\n".join(lines))


def _context(n: Notification) -> dict[str, object]:
    facts = [f"verdict: *{escape(verdict(n))}*", f"source: {escape(n.source)}"]
    if labels := server_labels(n):
        facts.append(escape(", ".join(f"{k}={v}" for k, v in sorted(labels.items()))))
    factor = n.diagnosis.get("traffic_factor")
    if isinstance(factor, int | float):
        facts.append(f"traffic x{factor:.2g}")
    if n.link:
        facts.append(f"<{n.link}|open in querywatch>")
    facts.append(f"<{docs_link(n)}|what to do: {escape(verdict(n))}>")
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(facts)}]}


def payload(n: Notification) -> dict[str, object]:
    header = {"type": "plain_text", "text": clip(f"{ICON[n.status]} {title(n)}", HEADER_LIMIT)}
    blocks: list[dict[str, object]] = [
        {"type": "header", "text": header},
        _section(escape(summary(n))),
    ]
    blocks += _culprit_blocks(n)
    blocks.append(_context(n))
    return {"text": f"{title(n)}: {summary(n)}", "blocks": blocks}


@dataclass(frozen=True)
class SlackChannel:
    url: str
    name: str = "slack"
    resend_interval: float | None = None

    def __post_init__(self) -> None:
        checked_url(self.url, "slack webhook")

    @property
    def target(self) -> str:
        return redact(self.url)

    def request(self, n: Notification) -> tuple[str, object]:
        return self.url, payload(n)
