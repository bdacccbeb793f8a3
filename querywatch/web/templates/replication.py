"""Pure: the replication page (servers and roles, replicas and their lag, findings, events)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ...docs import DOCS_PATH, known
from ...docs import link as doc_url
from .layout import badge, code, num, page, table

Context = Mapping[str, Any]
SPARK_W, SPARK_H = 160, 28


def render(ctx: Context) -> str:
    body = "<h1>Replication</h1>"
    if not ctx["nodes"]:
        body += "<p class=note>No replication sample yet: the watch samples every interval.</p>"
    body += table(
        ("server", "role", "timeline", "upstream", "state", "replay lag"),
        (_server_row(s) for s in ctx["nodes"]),
        "replication-servers",
    )
    body += "<h2>Replicas</h2>" + table(
        ("primary", "replica", "state", "sync", "lag s", "lag bytes", "lag over the range"),
        (_replica_row(s["server"], r) for s in ctx["nodes"] for r in s["replicas"]),
        "replicas",
    )
    body += "<h2>Pages</h2>" + (
        table(
            ("state", "page", "about", "since", "resolved", "summary"),
            (_incident_row(i) for i in ctx["incidents"]),
            "topology-incidents",
        )
        if ctx["incidents"]
        else "<p class=note>None open or resolved in the range.</p>"
    )
    findings = [f for s in ctx["nodes"] for f in s["findings"]]
    body += "<h2>Findings</h2>" + (
        table(("finding", "server", "what", "fix"), (_finding_row(f) for f in findings), "findings")
        if findings
        else "<p class=note>None.</p>"
    )
    body += "<h2>Events</h2>" + table(
        ("at", "server", "event", "detail"), (_event_row(e) for e in ctx["events"]), "events"
    )
    return page("Replication", "replication", body, "/replication.json")


def _docs(doc_id: str, text: str) -> str:
    if not known(doc_id):
        return escape(text)
    href = escape(doc_url(doc_id, DOCS_PATH))
    return f'<a class="docs" data-doc="{escape(doc_id)}" href="{href}">{escape(text)}</a>'


def _server_row(s: Mapping[str, Any]) -> tuple[str, ...]:
    state = "reachable" if s["reachable"] else f"unreachable (last seen {s['last_reachable_at']})"
    paused = " (replay paused)" if s["replay_paused"] else ""
    lag = "" if s["replay_lag_s"] is None else f"{num(s['replay_lag_s'])} s{paused}"
    level = "ok" if s["reachable"] else "critical"
    return (
        escape(s["server"]),
        escape(s["role"]) + _configured(s["role"], s["configured_role"]),
        escape(str(s["timeline"] if s["timeline"] is not None else "")),
        escape(s["upstream"]),
        f"{badge(level)} {escape(state)}",
        escape(lag),
    )


def _configured(role: str, configured: str) -> str:
    """The role label of the server's entry, when it says otherwise (after a failover)."""
    if not configured or configured == role or role == "unknown":
        return ""
    return f' <span class="note">(labelled {escape(configured)})</span>'


def _replica_row(primary: str, r: Mapping[str, Any]) -> tuple[str, ...]:
    lag_s = "" if r["replay_lag_s"] is None else num(r["replay_lag_s"])
    lag_b = "" if r["replay_lag_bytes"] is None else f"{r['replay_lag_bytes']:,.0f}"
    return (
        escape(primary),
        escape(r["name"]) + ("" if r["watched"] else " (not watched)"),
        escape(r["state"]),
        escape(r["sync_state"]),
        lag_s,
        lag_b,
        _spark(r["lag"]["seconds"]),
    )


def _spark(values: Sequence[float | None]) -> str:
    points = [v or 0.0 for v in values]
    if len(points) < 2:
        return ""
    top = max(max(points), 1e-9)
    step = SPARK_W / (len(points) - 1)
    line = " ".join(
        f"{i * step:.1f},{SPARK_H - v / top * (SPARK_H - 2) - 1:.1f}" for i, v in enumerate(points)
    )
    return (
        f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" role="img" '
        f'aria-label="lag, max {top:.1f} s"><polyline fill="none" stroke="currentColor" '
        f'points="{line}"/></svg>'
    )


def _finding_row(f: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        _docs(str(f["id"]), str(f["id"])),
        escape(str(f["server"])),
        escape(str(f["message"])),
        code(str(f["fix"])),
    )


def _incident_row(i: Mapping[str, Any]) -> tuple[str, ...]:
    firing = i["state"] == "firing"
    return (
        f"{badge('critical' if firing else 'ok')} {escape(i['state'])}",
        _docs(f"verdicts/{i['verdict']}", str(i["verdict"])),
        escape(str(i["server"])),
        escape(str(i["opened_at"])),
        escape(str(i["resolved_at"] or "")),
        escape(str(i["summary"])),
    )


def _event_row(e: Mapping[str, Any]) -> tuple[str, ...]:
    return (escape(e["at"]), escape(e["server"]), _docs(e["rule"], e["kind"]), escape(e["detail"]))
