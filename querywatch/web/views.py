"""Page contexts: what each dashboard page shows, as plain JSON-ready dicts.

Each HTML page and its ``.json`` twin are built from the one context function here (datasette's
habit), so the JSON is exactly what the page shows. Times are ISO 8601 for people and POSIX seconds
(``t``, ``times``) for charts. Statement texts are the store's normalized texts: placeholders,
never parameter values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .. import fleet as fleet_health
from .. import headroom, top
from .. import status as server_status
from ..advise import findings as plan_findings
from ..capacity import StatementCapacity, read_only
from ..detect import Detector
from ..docs import DOCS_PATH, known, link
from ..durations import human, iso, parse_duration, parse_time
from ..errors import InputError
from ..model import Counters, IncidentState
from ..monitor import Monitor
from ..report import diagnosis_to_json
from ..store.protocol import StoreProtocol
from ..store.series import Series
from ..store.sqlite import Server, StoredIncident
from . import health as health_rules
from .replication import event_markers, timeline_entries

AdviceProvider = Callable[[str], Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class Range:
    seconds: float
    step: float  # bucket width; also picks the source (raw, 1-minute or 1-hour rollups)


RANGES: dict[str, Range] = {
    "15m": Range(900, 10),
    "1h": Range(3600, 60),
    "3h": Range(3 * 3600, 180),
    "24h": Range(86400, 3600),
    "7d": Range(7 * 86400, 3600),
}
DEFAULT_RANGE = "1h"
STACKED = 8  # statements stacked in a chart; the rest is drawn as "other"
TABLE = 20  # rows of the top statements table
MAX_SPAN_S = 400 * 86400.0  # longest window the API accepts
INCIDENT_BEFORE_S = 900.0  # an incident's chart starts this long before it opened
INCIDENT_AFTER_S = 300.0  # ... and ends this long after it resolved
NO_SERVER = Server(0, "", "", "")


@dataclass(frozen=True)
class Site:
    """What the views read: the store, the clock, and optional providers of later features."""

    store: StoreProtocol
    clock: Callable[[], float]
    advice: AdviceProvider | None = None


def docs_url(doc_id: str) -> str | None:
    """The id's page on this server's /docs/ (querywatch.docs), None for what has no page."""
    return link(doc_id, DOCS_PATH) if known(doc_id) else None


def _with_docs(card: dict[str, Any]) -> dict[str, Any]:
    return {**card, "docs_url": docs_url(f"verdicts/{card['verdict']}")}


# -- shared pieces ----------------------------------------------------------------------------------
def pick_range(name: str | None) -> str:
    name = name or DEFAULT_RANGE
    if name not in RANGES:
        raise InputError(f"range: {name!r} is not one of {', '.join(RANGES)}")
    return name


def server(site: Site, name: str | None = None) -> Server:
    servers = site.store.servers()
    if name:
        for s in servers:
            if s.name == name:
                return s
        raise InputError(f"server: {name!r} is not in the store")
    return servers[0] if servers else NO_SERVER


def server_query(servers: Sequence[Server], srv: Server) -> str:
    """``?server=NAME`` for the links of a page about one server of a fleet, so that they stay
    on it; "" when the store holds one server (links as they always were)."""
    return f"?server={quote(srv.name, safe='')}" if srv.name and len(servers) > 1 else ""


def window(range_name: str, now: float) -> tuple[float, float, float]:
    r = RANGES[range_name]
    start = math.floor((now - r.seconds) / r.step) * r.step
    return start, now, r.step


def _times(start: float, end: float, step: float) -> list[float]:
    return [start + i * step for i in range(max(0, math.ceil((end - start) / step)))]


def _label(query: str, fingerprint: str, width: int = 70) -> str:
    flat = " ".join(query.split()) or fingerprint
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _rate(value: float, seconds: float) -> float | None:
    return round(value / seconds, 4) if seconds > 0 else None


def stacked_chart(
    site: Site,
    srv: Server,
    start: float,
    end: float,
    step: float,
    limit: int = STACKED,
    query: str = "",
) -> tuple[dict[str, Any], dict[str, Counters], float]:
    """DB time per second stacked by the top ``limit`` fingerprints (and the rest as "other")."""
    totals = site.store.fingerprint_totals(srv.id, start, end, step)
    ranked = sorted(totals, key=lambda fp: (-totals[fp].exec_ms, fp))[:limit]
    series = site.store.series(srv.id, start, end, step, ranked)
    texts = site.store.statements(ranked)
    times = _times(start, end, step)
    lines = [
        {
            "key": fp,
            "label": _label(texts[fp].query if fp in texts else "", fp),
            "href": f"/statements/{fp}{query}",
            "values": _values(series, times, fp, lambda c: c.exec_ms),
        }
        for fp in ranked
    ]
    if any(pt.get("") for pt in series.points.values()):
        other = _values(series, times, "", lambda c: c.exec_ms)
        lines.append({"key": "other", "label": "all other statements", "href": "", "values": other})
    chart = {"times": times, "step_s": step, "unit": "ms/s", "series": lines}
    return chart, totals, sum(series.seconds.values())


def _values(
    series: Series, times: list[float], fp: str, pick: Callable[[Counters], float]
) -> list[float | None]:
    out: list[float | None] = []
    for t in times:
        seconds = series.seconds.get(t, 0.0)
        counters = series.points.get(t, {}).get(fp)
        out.append(_rate(pick(counters), seconds) if counters else (0.0 if seconds else None))
    return out


def _markers(site: Site, start: float, end: float) -> list[dict[str, Any]]:
    return [
        {"label": d.version, "t": d.at, "at": iso(d.at), "note": d.note, "href": "/deploys"}
        for d in site.store.deploys(start, end)
    ]


def _bands(incidents: Sequence[StoredIncident], start: float, end: float) -> list[dict[str, Any]]:
    bands = []
    for s in incidents:
        i = s.incident
        stop = i.resolved_at if i.resolved_at is not None else end
        if stop >= start and i.opened_at <= end:
            bands.append(
                {
                    "label": i.id,
                    "state": i.state.value,
                    "start": max(i.opened_at, start),
                    "end": min(stop, end),
                    "href": f"/incidents/{i.id}",
                }
            )
    return bands


def _incident_row(s: StoredIncident) -> dict[str, Any]:
    i, d = s.incident, s.diagnosis or {}
    return {
        "id": i.id,
        "state": i.state.value,
        "key": i.key,
        "rules": list(i.rules),
        "rules_docs": {r: docs_url(f"rules/{r}") for r in i.rules if known(f"rules/{r}")},
        "opened_at": iso(i.opened_at),
        "fired_at": iso(i.fired_at),
        "resolved_at": iso(i.resolved_at),
        "verdict": d.get("verdict", ""),
        "docs_url": docs_url(f"verdicts/{d.get('verdict', '')}"),
        "summary": d.get("summary", ""),
        "href": f"/incidents/{i.id}",
    }


# -- overview -----------------------------------------------------------------------------------
def overview(
    site: Site, range_name: str | None = None, server_name: str | None = None
) -> dict[str, Any]:
    name = pick_range(range_name)
    servers = site.store.servers()
    srv = server(site, server_name)
    query = server_query(servers, srv)
    now = site.clock()
    start, end, step = window(name, now)
    chart, totals, covered = stacked_chart(site, srv, start, end, step, query=query)
    incidents = site.store.incidents(srv.id, limit=200) if srv.id else []
    chart["markers"] = _markers(site, start, end) + event_markers(
        site.store, srv.id or None, start, end
    )
    chart["bands"] = _bands(incidents, start, end)
    return {
        "page": "overview",
        "server": srv.name,
        "servers": [s.name for s in servers],
        "range": name,
        "ranges": list(RANGES),
        "window": {"start": iso(start), "end": iso(end)},
        "seconds_covered": round(covered, 1),
        "verdict": _with_docs(verdict(site, srv, incidents, now)),
        "chart": chart,
        "statements": _top_rows(site, totals, covered, "time", TABLE, query),
    }


def _top_rows(
    site: Site,
    totals: Mapping[str, Counters],
    seconds: float,
    by: str,
    limit: int,
    query: str = "",
) -> list[dict[str, Any]]:
    key = top.SORT_KEYS[by]
    chosen = sorted(totals, key=lambda fp: (-key(totals[fp]), fp))[:limit]
    texts = site.store.statements(chosen)
    total_ms = sum(c.exec_ms for c in totals.values())
    rows = []
    for n, fp in enumerate(chosen, start=1):
        st = texts.get(fp)
        entry = top.Entry(fp, st.queryids if st else (), st.query if st else "", totals[fp])
        ranked = top.rank([entry], seconds, by, 1)[0]
        row = ranked.as_dict()
        row.update(rank=n, share=round(totals[fp].exec_ms / total_ms, 4) if total_ms else 0.0)
        row["db_time_ms_per_s"] = _rate(totals[fp].exec_ms, seconds)
        row["href"] = f"/statements/{fp}{query}"
        row.pop("temp_blks_written", None)  # not summed for the dashboard
        if by != "io":  # shown when ranking by io; other rankings keep their rows as they were
            row.pop("io_blocks", None)
        rows.append(row)
    return rows


def verdict(
    site: Site, srv: Server, incidents: Sequence[StoredIncident], now: float
) -> dict[str, Any]:
    """The detector's current word: the firing incident's diagnosis, learning, or healthy."""
    firing = [s for s in incidents if s.incident.state is IncidentState.FIRING]
    if firing:
        s = firing[0]
        d = s.diagnosis or {}
        return {
            "verdict": d.get("verdict", "incident"),
            "summary": d.get("summary", f"incident {s.incident.id} is firing"),
            "incident": s.incident.id,
            "since": iso(s.incident.fired_at or s.incident.opened_at),
        }
    detector = site.store.status().get(f"detector:{srv.name}")
    if detector is None:
        summary = "no detector has written to this store (run `querywatch watch`)"
        return {"verdict": "unknown", "summary": summary, "incident": None, "since": None}
    age = human(max(0.0, now - float(detector.get("updated_at", now))))
    if detector.get("learning"):
        summary = (
            f"the detector is still learning this server's normal workload (checked {age} ago)"
        )
        return {"verdict": "learning", "summary": summary, "incident": None, "since": None}
    summary = f"no incident is firing (the detector checked {age} ago)"
    return {"verdict": "healthy", "summary": summary, "incident": None, "since": None}


# -- statement --------------------------------------------------------------------------------------
def statement(
    site: Site, fingerprint: str, range_name: str | None = None, server_name: str | None = None
) -> dict[str, Any] | None:
    known = site.store.statements([fingerprint]).get(fingerprint)
    if known is None:
        return None
    name = pick_range(range_name)
    srv = server(site, server_name)
    start, end, step = window(name, site.clock())
    series = site.store.series(srv.id, start, end, step, [fingerprint])
    times = _times(start, end, step)
    incidents = [
        s
        for s in (site.store.incidents(srv.id, limit=200) if srv.id else [])
        if _involves(s, fingerprint)
    ]
    charts = {
        "calls_per_s": _per_second(series, times, fingerprint, lambda c: c.calls),
        "mean_ms": _mean(series, times, fingerprint),
        "rows_per_s": _per_second(series, times, fingerprint, lambda c: c.rows),
        "share": _share(series, times, fingerprint),
    }
    mine = [pt[fingerprint] for pt in series.points.values() if fingerprint in pt]
    total = Counters(
        calls=sum(c.calls for c in mine),
        exec_ms=sum(c.exec_ms for c in mine),
        rows=sum(c.rows for c in mine),
    )
    covered = sum(series.seconds.values())
    return {
        "page": "statement",
        "server": srv.name,
        "servers": [s.name for s in site.store.servers()],
        "fingerprint": fingerprint,
        "query": known.query,
        "queryids": [str(q) for q in known.queryids],
        "range": name,
        "ranges": list(RANGES),
        "window": {"start": iso(start), "end": iso(end)},
        "totals": {
            "calls": int(total.calls),
            "calls_per_s": _rate(total.calls, covered),
            "mean_ms": round(total.mean_ms, 3),
            "rows": int(total.rows),
            "db_time_ms_per_s": _rate(total.exec_ms, covered),
        },
        "chart": {"times": times, "step_s": step, "series": charts},
        "markers": _markers(site, start, end),
        "bands": _bands(incidents, start, end),
        "incidents": [_incident_row(s) for s in incidents],
        "plans": plans(site, srv, fingerprint),
        "advice": list(site.advice(fingerprint)) if site.advice else [],
        "capacity": _capacity(site, srv, known.query, total, covered),
    }


def _capacity(
    site: Site, srv: Server, query: str, total: Counters, covered: float
) -> dict[str, Any] | None:
    """The calls/s at which the statement alone would saturate the server's cores at its cost
    per call over the range (querywatch.capacity), and whether a replica could run it; None
    when the server's cores are unknown or it did not run."""
    cores = headroom.stored_cores(site.store, srv.name) if srv.name else None
    if not cores or total.calls <= 0 or covered <= 0:
        return None
    cap = StatementCapacity(cores, total.mean_ms, total.calls / covered)
    ro = read_only(query) if query else None
    return {
        **cap.as_json(),
        "sentence": cap.sentence(),
        "read_only": ro.ok if ro else False,
        "read_only_reason": ro.reason if ro else "its text is unknown",
    }


def plans(site: Site, srv: Server, fingerprint: str) -> list[dict[str, Any]]:
    """Stored plan shapes of a statement, newest first, with the advisor's plan findings."""
    out = []
    for p in reversed(site.store.plans(fingerprint, srv.id or None)):
        out.append(
            {
                "plan_hash": p.plan_hash,
                "first_seen": iso(p.first_seen),
                "last_seen": iso(p.last_seen),
                "total_cost": p.total_cost,
                "shape": plan_shape(p.plan),
                "findings": [
                    {
                        "rule": f.rule,
                        "severity": f.severity.value,
                        "message": f.message,
                        "evidence": list(f.evidence),
                        "fix": f.fix,
                        "docs_url": docs_url(f"findings/{f.rule}"),
                    }
                    for f in plan_findings.find(p.plan)
                ],
            }
        )
    return out


def plan_shape(doc: Any) -> list[str]:
    """An EXPLAIN (FORMAT JSON) plan as indented lines: node type, relation, estimated rows."""
    root = doc[0] if isinstance(doc, list) and doc else doc
    node = root.get("Plan", root) if isinstance(root, dict) else {}
    lines: list[str] = []
    _shape(node, 0, lines)
    return lines


def _shape(node: Any, depth: int, lines: list[str]) -> None:
    if not isinstance(node, dict) or len(lines) >= 200:
        return
    on = f" on {node['Relation Name']}" if node.get("Relation Name") else ""
    index = f" using {node['Index Name']}" if node.get("Index Name") else ""
    rows = node.get("Plan Rows")
    lines.append(f"{'  ' * depth}{node.get('Node Type', '?')}{on}{index} (rows={rows})")
    for child in node.get("Plans", []) or []:
        _shape(child, depth + 1, lines)


def _involves(s: StoredIncident, fingerprint: str) -> bool:
    culprits = (s.diagnosis or {}).get("culprits", [])
    return s.incident.key == fingerprint or any(
        isinstance(c, dict) and c.get("fingerprint") == fingerprint for c in culprits
    )


def _per_second(
    series: Series, times: list[float], fp: str, pick: Callable[[Counters], float]
) -> list[float | None]:
    return _values(series, times, fp, pick)


def _mean(series: Series, times: list[float], fp: str) -> list[float | None]:
    out: list[float | None] = []
    for t in times:
        c = series.points.get(t, {}).get(fp)
        out.append(round(c.mean_ms, 4) if c and c.calls else None)
    return out


def _share(series: Series, times: list[float], fp: str) -> list[float | None]:
    out: list[float | None] = []
    for t in times:
        pt = series.points.get(t, {})
        total = sum(c.exec_ms for c in pt.values())
        mine = pt[fp].exec_ms if fp in pt else 0.0
        out.append(round(mine / total, 4) if total > 0 else None)
    return out


# -- incidents --------------------------------------------------------------------------------------
def incidents(site: Site, server_name: str | None = None) -> dict[str, Any]:
    srv = server(site, server_name)
    rows = [_incident_row(s) for s in site.store.incidents(srv.id or None, limit=500)]
    servers = [s.name for s in site.store.servers()]
    return {"page": "incidents", "server": srv.name, "servers": servers, "incidents": rows}


def incident(site: Site, incident_id: str) -> dict[str, Any] | None:
    found = next(
        (s for s in site.store.incidents(limit=10_000) if s.incident.id == incident_id), None
    )
    if found is None:
        return None
    i = found.incident
    now = site.clock()
    stop = i.resolved_at if i.resolved_at is not None else now
    start, end = i.opened_at - INCIDENT_BEFORE_S, min(now, stop + INCIDENT_AFTER_S)
    step = _incident_step(start, end, now)
    start = math.floor(start / step) * step
    servers = site.store.servers()
    srv = next((s for s in servers if s.id == found.server_id), NO_SERVER)
    query = server_query(servers, srv)
    chart, _, _ = stacked_chart(site, srv, start, end, step, limit=5, query=query)
    _trim_leading(chart)
    chart["markers"] = _markers(site, start, end) + event_markers(site.store, None, start, end)
    chart["bands"] = _bands([found], start, end)
    diagnosis = found.diagnosis or {}
    return {
        "page": "incident",
        "server": srv.name,
        "servers": [s.name for s in servers],
        **_incident_row(found),
        "timeline": sorted(  # the incident's states and the servers' topology events
            [
                {"at": iso(e.at), "t": e.at, "state": e.state.value, "detail": e.detail}
                for e in i.timeline
            ]
            + timeline_entries(site.store, start, end),
            key=lambda e: float(e["t"]),
        ),
        "diagnosis": diagnosis,
        "culprits": [
            {**c, "href": f"/statements/{c.get('fingerprint', '')}{query}"}
            for c in diagnosis.get("culprits", [])
            if isinstance(c, dict)
        ],
        "chart": chart,
    }


def _trim_leading(chart: dict[str, Any], margin: int = 2) -> None:
    """Drop the buckets before the first one with data (a young store, an early incident)."""
    n = len(chart["times"])
    first = next(
        (i for i in range(n) if any(s["values"][i] is not None for s in chart["series"])), n
    )
    first = max(0, min(first, n - 1) - margin)
    chart["times"] = chart["times"][first:]
    for s in chart["series"]:
        s["values"] = s["values"][first:]


def _incident_step(start: float, end: float, now: float) -> float:
    span = end - start
    if span <= 1800 and start > now - 47 * 3600:  # raw intervals are kept 48 h
        return 10.0
    if span <= 6 * 3600:
        return 60.0
    return 300.0 if span <= 48 * 3600 else 3600.0


# -- deploys and health ---------------------------------------------------------------------------
def deploys(site: Site) -> dict[str, Any]:
    rows = [
        {"version": d.version, "at": iso(d.at), "t": d.at, "note": d.note, "audit": None}
        for d in reversed(site.store.deploys())
    ]
    servers = [s.name for s in site.store.servers()]
    return {"page": "deploys", "servers": servers, "deploys": rows}


def health(site: Site, server_name: str | None = None) -> dict[str, Any]:
    now = site.clock()
    # intervals, gaps and open incidents as the store holds them (querywatch.status)
    status = server_status.consistent(site.store.status(), server_status.build(site.store))
    srv = server(site, server_name)
    gaps = site.store.gaps(srv.id, now - 86400, now) if srv.id else []
    findings = health_rules.findings(status, gaps, now)
    return {
        "page": "health",
        "server": srv.name,
        "servers": [s.name for s in site.store.servers()],
        "findings": [f.as_dict() for f in findings],
        "collectors": health_rules.collectors(status, now),
        "gaps": [
            {"start": iso(g.start), "end": iso(g.end), "reason": g.reason.value, "detail": g.detail}
            for g in gaps
        ],
        "store": {"path": str(site.store.path), "bytes": site.store.size_bytes()},
    }


# -- JSON API -----------------------------------------------------------------------------------
def diagnosis(
    site: Site,
    since: str | None,
    start: str | None,
    end: str | None,
    baseline: str,
    server_name: str | None = None,
) -> dict[str, Any]:
    """Exactly ``querywatch diagnose --format json`` for a window of the store."""
    if since is not None and start is not None:
        raise InputError("diagnosis: give either since or start/end, not both")
    window_end = parse_time(end, "end") if end else site.clock()
    length = parse_duration(since or "10m", "since")
    window_start = parse_time(start, "start") if start else window_end - length
    base = parse_duration(baseline, "baseline")
    if not 0 < window_end - window_start <= MAX_SPAN_S or base > MAX_SPAN_S:
        raise InputError(
            "diagnosis: the window must start before it ends and span at most 400 days"
        )
    _check_time(window_start, "start")
    _check_time(window_end, "end")
    srv = server(site, server_name)
    monitor = Monitor(site.store, srv.id, srv.name, Detector(), baseline_s=base)
    found = diagnosis_to_json(monitor.diagnose_window(window_start, window_end))
    return {**found, "docs_url": docs_url(f"verdicts/{found['verdict']}")}  # on this server


def _check_time(ts: float, what: str) -> None:
    if not 0 <= ts <= 32503680000:  # year 3000
        raise InputError(f"{what}: {iso(min(max(ts, 0), 32503680000))!r} is out of range")


def statements(
    site: Site, range_name: str | None, by: str, limit: int, server_name: str | None = None
) -> dict[str, Any]:
    if by not in top.SORT_KEYS:
        raise InputError(f"by: {by!r} is not one of {', '.join(top.SORT_KEYS)}")
    name = pick_range(range_name)
    srv = server(site, server_name)
    query = server_query(site.store.servers(), srv)
    start, end, step = window(name, site.clock())
    totals = site.store.fingerprint_totals(srv.id, start, end, step)
    covered = sum(site.store.seconds_covered(srv.id, start, end, step).values())
    return {
        "server": srv.name,
        "range": name,
        "window": {"start": iso(start), "end": iso(end)},
        "seconds_covered": round(covered, 1),
        "by": by,
        "statements": _top_rows(site, totals, covered, by, limit, query),
    }


# -- fleet ------------------------------------------------------------------------------------------
def fleet(site: Site, range_name: str | None = None) -> dict[str, Any]:
    """Every server with its health, open incidents, DB time sparkline and collector, trouble
    first (querywatch.fleet); each links to its overview."""
    name = pick_range(range_name)
    now = site.clock()
    span = RANGES[name].seconds
    buckets = server_status.SPARK_BUCKETS
    rows = fleet_health.summarize(server_status.facts(site.store, now, span, buckets), now)
    step = max(1.0, float(math.ceil(span / buckets)))
    first = math.floor(now / step) * step - (buckets - 1) * step
    return {
        "page": "fleet",
        "server": "",
        "servers": [r.name for r in rows],
        "range": name,
        "ranges": list(RANGES),
        "headline": fleet_health.headline(rows),
        "counts": fleet_health.counts(rows),
        "times": [first + n * step for n in range(buckets)],
        "step_s": step,
        "rows": [_fleet_row(r) for r in rows],
    }


def _fleet_row(row: fleet_health.FleetRow) -> dict[str, Any]:
    doc = fleet_health.as_json(row)
    incident = row.facts.incident
    doc["href"] = f"/?server={quote(row.name, safe='')}"
    doc["incident_href"] = f"/incidents/{incident}" if incident else ""
    doc["health_href"] = f"/health?server={quote(row.name, safe='')}"
    return doc
