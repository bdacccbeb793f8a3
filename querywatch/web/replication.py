"""The replication page's context and the topology events other pages show.

``/replication`` (and ``/replication.json``) lists every watched server with its role, timeline,
upstream and findings, each primary's replicas with their replay lag now and over the range,
the topology pages open now or resolved in the range (failover, a primary gone, lag), and the
topology events of the range (promotions, unreachable servers, lag, conflicts).
:func:`event_markers` and :func:`timeline_entries` put the same events on the overview chart and
on an incident's timeline (and so in its standalone report).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..durations import iso
from ..replication import (
    EVENT_RULES,
    FAILOVER_RULE,
    ReplicaState,
    TopologyEvent,
    TopologyIncident,
)
from ..status import SERVER_INFO
from ..store.protocol import StoreProtocol
from ..topology import STATUS

HREF = "/replication"
MAX_POINTS = 300  # lag points per replica in a chart


def context(store: StoreProtocol, now: float, start: float, end: float) -> dict[str, Any]:
    """Every server the store holds a replication sample for, and the events in [start, end)."""
    status = store.status()
    servers = []
    for srv in store.servers():
        node = store.node_state(srv.id, now)
        if node is None:
            continue
        known = store.node_state(srv.id, now, reachable=True)
        noted = status.get(f"{STATUS}{srv.name}", {})
        replicas = store.replicas(srv.id, now) if known is not None else []
        history = store.replica_lag(srv.id, start, end)
        servers.append(
            {
                "server": srv.name,
                "reachable": node.reachable,
                "role": known.role if known is not None else "unknown",
                "configured_role": str(_labels(status, srv.name).get("role", "")),
                "sampled_at": iso(node.at),
                "last_reachable_at": iso(known.at) if known is not None else None,
                "timeline": known.timeline if known is not None else None,
                "upstream": known.upstream if known is not None else "",
                "replay_paused": known.replay_paused if known is not None else None,
                "replay_lag_s": known.replay_lag_s if known is not None else None,
                "replicas": [_replica(r, history) for r in replicas],
                "findings": list(noted.get("findings", [])),
            }
        )
    names = {srv.id: srv.name for srv in store.servers()}
    pages = store.topology_incidents(None, open_only=False)
    return {
        "page": "replication",
        "window": {"start": iso(start), "end": iso(end)},
        "nodes": servers,
        "incidents": [
            _incident(i, names)
            for i in reversed(pages)
            if i.resolved_at is None or i.resolved_at >= start
        ],
        "events": [_event(e) for e in reversed(store.topology_events(None, start, end))],
    }


def _incident(i: TopologyIncident, names: Mapping[int, str]) -> dict[str, Any]:
    """A topology page: open (firing) or resolved, about which server, since when."""
    return {
        "id": i.id,
        "verdict": i.kind,
        "state": "firing" if i.resolved_at is None else "resolved",
        "server": names.get(i.server_id, ""),
        "subject": i.subject,
        "opened_at": iso(i.opened_at),
        "resolved_at": iso(i.resolved_at) if i.resolved_at is not None else None,
        "summary": i.summary,
    }


def _labels(status: Mapping[str, Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    """The server's labels as the watch announced them (querywatch.status SERVER_INFO)."""
    labels = status.get(f"{SERVER_INFO}{name}", {}).get("labels", {})
    return labels if isinstance(labels, Mapping) else {}


def _replica(r: ReplicaState, history: Sequence[ReplicaState]) -> dict[str, Any]:
    points = [h for h in history if h.name == r.name][-MAX_POINTS:]
    return {
        "name": r.name,
        "watched": r.watched,
        "application_name": r.application_name,
        "client_addr": r.client_addr,
        "state": r.state,
        "sync_state": r.sync_state,
        "replay_lag_s": r.replay_lag_s,
        "replay_lag_bytes": r.replay_lag_bytes,
        "at": iso(r.at),
        "lag": {
            "times": [h.at for h in points],
            "seconds": [h.replay_lag_s for h in points],
            "bytes": [h.replay_lag_bytes for h in points],
        },
    }


def _event(e: TopologyEvent) -> dict[str, Any]:
    return {
        "server": e.server,
        "at": iso(e.at),
        "t": e.at,
        "kind": e.kind,
        "rule": EVENT_RULES.get(e.kind, FAILOVER_RULE),
        "detail": e.detail,
    }


def event_markers(
    store: StoreProtocol, server_id: int | None, start: float, end: float
) -> list[dict[str, Any]]:
    """Topology events as chart markers (same shape as the deploy markers)."""
    return [
        {
            "label": e.kind,
            "t": e.at,
            "at": iso(e.at),
            "note": f"{e.server}: {e.detail}",
            "href": HREF,
        }
        for e in store.topology_events(server_id, start, end)
    ]


def timeline_entries(store: StoreProtocol, start: float, end: float) -> list[dict[str, Any]]:
    """Every server's topology events in [start, end) as incident timeline entries."""
    return [
        {"at": iso(e.at), "t": e.at, "state": e.kind, "detail": f"{e.server}: {e.detail}"}
        for e in store.topology_events(None, start, end)
    ]
