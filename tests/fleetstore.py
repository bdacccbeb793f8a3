"""A store holding a fleet of five servers, for the fleet's web tests (in-process and Chromium):
ten minutes of 10 s intervals each, one firing incident on "hot", one server down, one learning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from querywatch.model import (
    Counters,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.store import Store

NOW = 1_800_000_000.0
KEY = StatementKey(1, 10, 42)
# name -> (DB ms per 10 s interval, labels); "hot" fires, "down" lost its server, "young" learns
SERVERS = {
    "calm": (20.0, {"env": "prod", "team": "shop"}),
    "hot": (400.0, {"env": "prod", "team": "billing"}),
    "down": (10.0, {"env": "staging"}),
    "young": (5.0, {}),
    "busy": (80.0, {"env": "prod"}),
}


def fill(path: Path, now: float = NOW) -> Store:
    """Ten minutes of 10 s intervals per server before ``now``; one firing incident on "hot"."""
    store = Store(path)
    for name, (ms, labels) in SERVERS.items():
        srv = store.server(name)
        t, first = now - 600, True
        while t + 10 <= now:
            ramp = 4.0 if name == "hot" and t > now - 120 else 1.0  # the incident's onset
            delta = StatementDelta(KEY, Counters(calls=10, exec_ms=ms * ramp, rows=10))
            fps, texts = (
                ({KEY: "fq"}, {"fq": "SELECT 1 FROM t WHERE id = $1"}) if first else ({}, {})
            )
            store.record_interval(srv.id, Interval(t, t + 10, (delta,), None), fps, texts)
            t, first = t + 10, False
        last = now - (400 if name == "down" else 3)
        collector: dict[str, Any] = {"last_success": last, "intervals": 60}
        if name == "down":
            collector |= {"last_error": "cannot connect: refused", "last_error_at": now - 20}
        store.set_status(f"collector:{name}", collector)
        store.set_status(f"detector:{name}", {"learning": name == "young", "updated_at": now})
        store.set_status(f"server:{name}", {"labels": labels, "interval_s": 10.0})
    hot = next(s for s in store.servers() if s.name == "hot")
    opened = now - 100
    incident = Incident(
        "inc-hot",
        "fq",
        IncidentState.FIRING,
        opened,
        opened + 10,
        None,
        ("latency_regression",),
        (IncidentEvent(opened + 10, IncidentState.FIRING, "mean x4"),),
    )
    doc = {"verdict": "query_regression", "summary": "fq is 4x slower", "server": "hot"}
    store.save_incident(hot.id, incident, doc)
    return store
