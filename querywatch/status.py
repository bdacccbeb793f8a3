"""What `querywatch status` and the web's health page say, derived from the store every time.

Each figure comes from what is stored, never from a counter a process kept in memory (a restarted
watcher starts those again at 0):

- intervals and gaps are counted from the ``intervals`` and ``gaps`` tables, every reason included
  (a dealloc gap is a gap: statements were evicted and their figures are incomplete);
- open incidents are the stored incidents still pending or firing;
- the collector's last error is shown with its time, and as *recovered* once a snapshot succeeded
  after it (``last_success`` later than ``last_error_at``);
- the detector's mode (learning, long run) comes from its status row, and the monitoring role's
  visibility from the row the monitor writes at start (querywatch.monitor, ``visibility:``).

The watcher's own downtime is not a gap when the restarted watcher continued from the stored
snapshot (a *catch-up* interval covers it, querywatch.watcher); when it could not (the server
restarted, its statistics were reset, another server), the watcher stored a gap, counted here.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .durations import human, iso
from .fleet import FleetRow, ServerFacts, headline, sparkline
from .model import IncidentState
from .store.fleet import FleetServer, OpenIncident
from .store.protocol import StoreProtocol

OPEN_STATES = (IncidentState.PENDING.value, IncidentState.FIRING.value)
ALL_TIME = (0.0, 1e18)
SERVER_INFO = "server:"  # status key prefix: a server's labels, target and interval (watch)
SPARK_BUCKETS = 30  # buckets of a fleet row's DB time sparkline


@dataclass(frozen=True)
class ServerStatus:
    """One server's collection, detection and open incidents, as the store holds them."""

    name: str
    intervals: int
    last_interval_end: float | None
    last_success: float | None
    gaps: Mapping[str, int]  # reason -> gaps stored
    last_error: str
    last_error_at: float | None
    reconnects: int
    detector: Mapping[str, Any]
    open_incidents: tuple[OpenIncident, ...]
    visibility_note: str = ""
    visibility_fix: str = ""
    stored_by: tuple[str, ...] = field(default=())  # status rows found for it
    server_id: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)  # from [[servers]] (watch)
    interval_s: float | None = None  # the watcher's interval, when it said

    @property
    def gap_count(self) -> int:
        return sum(self.gaps.values())

    @property
    def recovered(self) -> bool:
        """The last error was followed by a successful snapshot."""
        if not self.last_error or self.last_error_at is None:
            return False
        return self.last_success is not None and self.last_success > self.last_error_at


def build(store: StoreProtocol, only: str | None = None) -> list[ServerStatus]:
    """Every server's status (only the one named ``only`` when given), from the store."""
    rows = store.status()
    return [_server(store, s.id, s.name, rows) for s in store.servers() if only in (None, s.name)]


def _server(
    store: StoreProtocol, server_id: int, name: str, rows: Mapping[str, Mapping[str, Any]]
) -> ServerStatus:
    collector = rows.get(f"collector:{name}", {})
    visibility = rows.get(f"visibility:{name}", {})
    info = rows.get(f"{SERVER_INFO}{name}", {})
    gaps = Counter(g.reason.value for g in store.gaps(server_id, *ALL_TIME))
    incidents = tuple(
        OpenIncident(
            server_id,
            s.incident.id,
            s.incident.state.value,
            s.incident.key,
            s.incident.opened_at,
            s.incident.fired_at,
            str((s.diagnosis or {}).get("summary", "")),
        )
        for s in store.incidents(server_id)
        if s.incident.state.value in OPEN_STATES
    )
    last_end = store.last_interval_end(server_id)
    last_success = _number(collector.get("last_success"))
    error_at = _number(collector.get("last_error_at"))
    return ServerStatus(
        name=name,
        intervals=store.interval_count(server_id),
        last_interval_end=last_end,
        last_success=last_success if last_success is not None else last_end,
        gaps=dict(sorted(gaps.items())),
        last_error=str(collector.get("last_error") or ""),
        last_error_at=error_at,
        reconnects=int(collector.get("reconnects") or 0),
        detector=_detector(rows, name),
        open_incidents=incidents,
        visibility_note=str(visibility.get("note") or ""),
        visibility_fix=str(visibility.get("fix") or ""),
        stored_by=tuple(k for k in (f"collector:{name}", f"detector:{name}") if k in rows),
        server_id=server_id,
        labels=_labels(info),
        interval_s=_number(info.get("interval_s")),
    )


def facts(
    store: StoreProtocol, now: float, span_s: float = 3600.0, buckets: int = SPARK_BUCKETS
) -> list[ServerFacts]:
    """Each server's facts for the fleet view (querywatch.fleet): its status and its DB time
    per second over the last ``span_s`` in ``buckets`` buckets (a sparkline). A few set-based
    reads for the whole fleet (querywatch.store.fleet), none per server."""
    step = max(1.0, float(math.ceil(span_s / buckets)))
    start = math.floor(now / step) * step - (buckets - 1) * step
    rows = store.status()
    opened: dict[int, list[OpenIncident]] = defaultdict(list)
    for incident in store.open_incidents():
        opened[incident.server_id].append(incident)
    spent = store.fleet_db_time(start, start + buckets * step, step)
    return [
        _facts(s, rows, opened[s.id], _spark(spent.get(s.id, {}), start, step, buckets))
        for s in store.fleet_servers()
    ]


def _facts(
    s: FleetServer,
    rows: Mapping[str, Mapping[str, Any]],
    incidents: list[OpenIncident],
    spark: list[float | None],
) -> ServerFacts:
    collector = rows.get(f"collector:{s.name}", {})
    info = rows.get(f"{SERVER_INFO}{s.name}", {})
    detector = _detector(rows, s.name)
    last_success = _number(collector.get("last_success"))
    firing = [i for i in incidents if i.state == IncidentState.FIRING.value]
    pending = [i for i in incidents if i.state != IncidentState.FIRING.value]
    shown = next(iter(firing or pending), None)
    return ServerFacts(
        name=s.name,
        labels=_labels(info),
        interval_s=_number(info.get("interval_s")),
        intervals=s.intervals,
        last_success=last_success if last_success is not None else s.last_end,
        last_error=str(collector.get("last_error") or ""),
        last_error_at=_number(collector.get("last_error_at")),
        firing=len(firing),
        pending=len(pending),
        learning=bool(detector.get("learning", True)) if detector else None,
        db_time=tuple(spark),
        incident=shown.id if shown else "",
        summary=shown.summary if shown else "",
    )


def _spark(
    spent: Mapping[float, list[float]], start: float, step: float, buckets: int
) -> list[float | None]:
    """DB time (ms per second of collected time) per bucket from ``start``; None: no data."""
    out: list[float | None] = []
    for n in range(buckets):
        ms, covered = spent.get(start + n * step, (0.0, 0.0))
        out.append(round(ms / covered, 3) if covered > 0 else None)
    return out


def _detector(rows: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    return {k: v for k, v in rows.get(f"detector:{name}", {}).items() if k in DETECTOR}


def _labels(info: Mapping[str, Any]) -> dict[str, str]:
    labels = info.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


DETECTOR = ("learning", "baseline", "learning_reason", "baseline_intervals", "updated_at")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def as_json(servers: list[ServerStatus], now: float) -> list[dict[str, Any]]:
    """The ``servers`` list of ``status --format json``."""
    return [_json(s, now) for s in servers]


def _json(s: ServerStatus, now: float) -> dict[str, Any]:
    return {
        "server": s.name,
        "intervals": s.intervals,
        "last_interval_end": iso(s.last_interval_end),
        "last_success": iso(s.last_success),
        "age_s": round(now - s.last_success, 1) if s.last_success is not None else None,
        "gaps": s.gap_count,
        "gaps_by_reason": dict(s.gaps),
        "last_error": s.last_error,
        "last_error_at": iso(s.last_error_at),
        "recovered": s.recovered,
        "reconnects": s.reconnects,
        "detector": {
            "learning": bool(s.detector.get("learning", True)),
            "baseline": s.detector.get("baseline", ""),
            "learning_reason": s.detector.get("learning_reason", ""),
        },
        "open_incidents": [
            {
                "id": i.id,
                "state": i.state,
                "key": i.key,
                "opened_at": iso(i.opened_at),
                "fired_at": iso(i.fired_at),
                "summary": i.summary,
            }
            for i in s.open_incidents
        ],
        **({"note": s.visibility_note, "fix": s.visibility_fix} if s.visibility_note else {}),
    }


def consistent(
    rows: Mapping[str, Mapping[str, Any]], servers: list[ServerStatus], only: str | None = None
) -> dict[str, dict[str, Any]]:
    """The raw status rows with the figures a process counted in memory (intervals, gaps and
    open incidents since it started) replaced by the store's: JSON readers of ``status`` get
    one answer. With ``only``, that server's rows and the shared ones (no ``:`` in the key)."""
    out = {
        k: dict(v)
        for k, v in rows.items()
        if only is None or ":" not in k or k.endswith(f":{only}")
    }
    for s in servers:
        if f"collector:{s.name}" in out:
            out[f"collector:{s.name}"].update(intervals=s.intervals, gaps=s.gap_count)
        if f"detector:{s.name}" in out:
            opened = [{"id": i.id, "key": i.key, "state": i.state} for i in s.open_incidents]
            out[f"detector:{s.name}"]["open_incidents"] = opened
    return out


def fleet_lines(rows: list[FleetRow]) -> list[str]:
    """The text of ``status`` for a fleet: a headline, then one line per server, trouble first
    (health, name, labels, DB time sparkline and now, why)."""
    width = max((len(r.name) for r in rows), default=0)
    out = [headline(rows)]
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r.facts.labels.items()))
        spark = sparkline(r.facts.db_time)
        out.append(
            f"{r.health.value:<9} {r.name:<{width}} {spark} {r.db_time_now:8.1f} ms/s  "
            f"{r.reason}" + (f"  [{labels}]" if labels else "")
        )
    return out


def lines(servers: list[ServerStatus], now: float) -> list[str]:
    """The text of ``status``: per server, collection, detection and what the role sees."""
    out: list[str] = []
    for s in servers:
        out.append(_collector_line(s, now))
        if s.last_error:
            out.append(_error_line(s))
        out.append(_detector_line(s))
        if s.visibility_note:
            out.append(f"warning {s.name}: {s.visibility_note} (fix: {s.visibility_fix})")
    return out


def _collector_line(s: ServerStatus, now: float) -> str:
    ago = f"{human(now - s.last_success)} ago" if s.last_success is not None else "never"
    by_reason = ", ".join(f"{n} {reason}" for reason, n in s.gaps.items())
    gaps = f"{s.gap_count} gaps" + (f" ({by_reason})" if by_reason else "")
    return f"collector {s.name}: last snapshot {ago}, {s.intervals} intervals, {gaps}"


def _error_line(s: ServerStatus) -> str:
    when = iso(s.last_error_at) if s.last_error_at is not None else "at an unknown time"
    if s.recovered and s.last_success is not None:
        return (
            f"collector {s.name}: recovered (snapshot at {iso(s.last_success)}) from the last "
            f"error, at {when}: {s.last_error}"
        )
    return f"collector {s.name}: last error at {when}, not recovered: {s.last_error}"


def _detector_line(s: ServerStatus) -> str:
    mode = "learning" if s.detector.get("learning") else "detecting"
    if not s.detector:
        mode = "no detector has run (collect only)"
    if s.detector.get("learning_reason"):  # e.g. the statistics were reset minutes ago
        mode += f" ({s.detector['learning_reason']})"
    elif s.detector.get("baseline") == "long_run":
        mode += " (judging against pg_stat_statements' long-run averages meanwhile)"
    firing = sum(1 for i in s.open_incidents if i.state == IncidentState.FIRING.value)
    pending = len(s.open_incidents) - firing
    opened = f"{len(s.open_incidents)} open incidents"
    if s.open_incidents:
        opened += f" ({firing} firing, {pending} pending)"
    return f"detector {s.name}: {mode}, {opened}"
