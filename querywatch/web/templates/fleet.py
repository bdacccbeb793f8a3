"""Pure: the fleet page (every server, trouble first) and the server picker every page of a
fleet carries in its header.

The picker is links, not a form (the pages' Content-Security-Policy allows no form action and no
script): on a page that shows one server (overview, statement, incidents, health) each link keeps
the page and its range with ``?server=NAME``; elsewhere it goes to that server's overview. With
one server in the store there is no picker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from .layout import badge, link, num, ranges, table
from .layout import page as frame

Context = Mapping[str, Any]
SERVER_PAGES = frozenset({"overview", "statement", "incidents", "health"})  # take ?server=
SPARK_W, SPARK_H = 120, 24
MAX_PICKED = 200  # servers listed in the picker


def page(ctx: Context) -> str:
    counts = " ".join(
        f'<span class="count count-{escape(h)}">{n} {escape(h)}</span>'
        for h, n in ctx["counts"].items()
        if n
    )
    rows = (_row(r) for r in ctx["rows"])
    body = (
        f'<h1>Fleet</h1><p class="headline" id="fleet-headline">{escape(ctx["headline"])}</p>'
        f'<p class="counts">{counts}</p>'
        + ranges(ctx["range"], ctx["ranges"], "/fleet")
        + table(
            (
                "health",
                "server",
                "labels",
                "open incidents",
                f"DB time, last {ctx['range']}",
                "DB ms/s",
                "collector",
                "why",
            ),
            rows,
            "fleet",
        )
    )
    return frame("Fleet", "fleet", body, f"/fleet.json?range={ctx['range']}")


def _row(r: Mapping[str, Any]) -> tuple[str, ...]:
    labels = " ".join(
        f'<span class="label">{escape(k)}={escape(v)}</span>'
        for k, v in sorted(r["labels"].items())
    )
    opened = r["open_incidents"]
    incidents = f"{opened['firing']} firing, {opened['pending']} pending"
    href = r["incident_href"]
    incidents = link(href, incidents) if href else escape(incidents)
    age = "never" if r["age_s"] is None else f"{num(r['age_s'], 0)} s ago"
    collector = f"{num(r['intervals'])} intervals, last {age}"
    return (
        badge(r["health"]),
        f'<a class="server" data-server="{escape(r["server"])}" href="{escape(r["href"])}">'
        f"{escape(r['server'])}</a>",
        labels,
        incidents,
        sparkline(r["db_time"], r["server"]),
        num(r["db_time_ms_per_s"]),
        link(r["health_href"], collector),
        escape(r["reason"]),
    )


def sparkline(values: Sequence[float | None], name: str) -> str:
    """A small inline SVG line of the values (gaps where None), scaled to their maximum."""
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    n = max(len(values) - 1, 1)
    runs: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        x = round(i / n * SPARK_W, 1)
        y = round(SPARK_H - 1 - v / top * (SPARK_H - 2), 1)
        runs[-1].append(f"{x},{y}")
    lines = "".join(
        f'<polyline class="spark-line" points="{" ".join(run)}"/>' for run in runs if run
    )
    points = sum(1 for v in values if v is not None)
    return (
        f'<svg class="spark" data-spark="{escape(name)}" data-points="{points}" '
        f'viewBox="0 0 {SPARK_W} {SPARK_H}" width="{SPARK_W}" height="{SPARK_H}" '
        f'role="img" aria-label="DB time of {escape(name)}">{lines}</svg>'
    )


def picker(page_name: str, ctx: Context) -> str:
    """The server links of a page, the current one marked; "" with fewer than two servers."""
    names: Sequence[str] = ctx.get("servers") or ()
    if len(names) < 2:
        return ""
    current = ctx.get("server") or ""
    items = []
    for name in list(names)[:MAX_PICKED]:
        css = ' class="active" aria-current="page"' if name == current else ""
        items.append(f'<a href="{escape(_href(page_name, ctx, name))}"{css}>{escape(name)}</a>')
    more = len(names) - MAX_PICKED
    if more > 0:
        items.append(link("/fleet", f"{more} more…"))
    shown = escape(current) if current else "all servers"
    return (
        f'<details class="servers" id="server-picker"><summary>server: {shown}</summary>'
        f'<nav aria-label="servers">{"".join(items)}</nav></details>'
    )


def _href(page_name: str, ctx: Context, name: str) -> str:
    if page_name not in SERVER_PAGES:
        return "/?" + urlencode({"server": name})
    params = {"server": name}
    if ctx.get("range"):
        params["range"] = str(ctx["range"])
    return "?" + urlencode(params, quote_via=quote)


def with_picker(html: str, page_name: str, ctx: Context) -> str:
    """``html`` with the picker after the header's navigation (unchanged without one)."""
    found = picker(page_name, ctx)
    if not found:
        return html
    head = html.find("<header>")
    end = html.find("</nav>", head) if head >= 0 else -1
    if end < 0:
        return html
    cut = end + len("</nav>")
    return html[:cut] + found + html[cut:]
