"""``querywatch replication``: roles, replicas and their lag, findings and topology events, from
the store (what the /replication page shows, as text or its JSON)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from .clikit import Format, StoreOpt, load_settings, open_store, out
from .durations import parse_duration

EVENTS_SHOWN = 20


def register(app: typer.Typer) -> None:
    app.command("replication")(replication)


def replication(
    store: StoreOpt = None,
    since: Annotated[str, typer.Option(help="events and lag history over this long")] = "1h",
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
) -> None:
    """Each watched server's role and timeline, each primary's replicas with their replay lag,
    replication findings with their fix, and the failovers, lag and conflicts of --since."""
    from .web.replication import context

    cfg = load_settings(store=store)
    span = parse_duration(since, "--since")
    now = time.time()
    with open_store(cfg, create=False) as st:
        doc = context(st, now, now - span, now)
    if fmt is Format.json:
        out.print_json(json.dumps(doc))
        return
    for line in lines(doc):
        out.print(line, markup=False)


def lines(doc: Mapping[str, Any]) -> list[str]:
    """The text output: a line per server and per replica, then findings, the topology pages
    open or resolved, then events."""
    shown: list[str] = []
    for node in doc["nodes"]:
        shown.append(_node_line(node))
        shown += [_replica_line(r) for r in node["replicas"]]
    findings = [f for node in doc["nodes"] for f in node["findings"]]
    shown += [f"{f['id']} on {f['server']}: {f['message']} (fix: {f['fix']})" for f in findings]
    for page in doc["incidents"]:
        when = f"since {page['opened_at']}"
        if page["resolved_at"]:
            when += f", resolved {page['resolved_at']}"
        shown.append(f"{page['state']} {page['verdict']} {page['id']} ({when}): {page['summary']}")
    for event in doc["events"][:EVENTS_SHOWN]:
        shown.append(f"{event['at']} {event['server']} {event['kind']}: {event['detail']}")
    return shown or ["no replication sample yet (run `querywatch watch`)"]


def _node_line(node: Mapping[str, Any]) -> str:
    parts = [node["server"], node["role"]]
    if node["configured_role"] and node["configured_role"] != node["role"]:
        parts.append(f"(labelled {node['configured_role']})")
    if node["upstream"]:
        parts.append(f"of {node['upstream']}")
    if node["timeline"] is not None:
        parts.append(f"timeline {node['timeline']}")
    if not node["reachable"]:
        parts.append(f"UNREACHABLE (last seen {node['last_reachable_at']})")
    if node["replay_lag_s"] is not None:
        parts.append(f"replay lag {node['replay_lag_s']:.1f} s")
    return " ".join(parts)


def _replica_line(r: Mapping[str, Any]) -> str:
    lag_s = "?" if r["replay_lag_s"] is None else f"{r['replay_lag_s']:.1f}"
    lag_b = "?" if r["replay_lag_bytes"] is None else f"{r['replay_lag_bytes']:,.0f}"
    watched = "" if r["watched"] else " (not watched)"
    return f"  replica {r['name']}{watched} {r['state']} {r['sync_state']}: {lag_s} s, {lag_b} bytes behind"
