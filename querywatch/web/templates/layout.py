"""Pure: the page frame and small HTML helpers (every value goes through html.escape)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

NAV = (
    ("fleet", "/fleet", "Fleet"),
    ("overview", "/", "Overview"),
    ("incidents", "/incidents", "Incidents"),
    ("deploys", "/deploys", "Deploys"),
    ("health", "/health", "Health"),
    ("replication", "/replication", "Replication"),
    ("api", "/api", "API"),
    ("docs", "/docs/", "Docs"),  # the documentation site (querywatch.web.docsite)
)


def page(title: str, active: str, body: str, json_href: str = "", server: str = "") -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in NAV
    )
    twin = f'<a class="json" href="{escape(json_href)}">JSON</a>' if json_href else ""
    where = f'<span class="server">{escape(server)}</span>' if server else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · querywatch</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/querywatch.css"></head><body>'
        f'<header><a class="brand" href="/">querywatch</a><nav>{nav}</nav>{where}{twin}</header>'
        f"<main>{body}</main></body></html>"
    )


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>' if href else escape(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """Cells are HTML already (escape them when building rows)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">nothing yet</td></tr>'
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def ranges(current: str, names: Sequence[str], base: str) -> str:
    items = "".join(
        f'<a href="{escape(base)}?range={n}"{" class=active" if n == current else ""}>{n}</a>'
        for n in names
    )
    return f'<nav class="ranges">{items}</nav>'


def num(value: object, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return escape(str(value))


def code(text: str) -> str:
    return f"<code>{escape(' '.join(text.split()))}</code>"


def badge(level: str) -> str:
    return f'<span class="badge badge-{escape(level)}">{escape(level)}</span>'
