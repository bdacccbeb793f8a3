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

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .durations import human, iso
from .model import IncidentState
from .store import Store

OPEN_STATES = (IncidentState.PENDING.value, IncidentState.FIRING.value)
ALL_TIME = (0.0, 1e18)


@dataclass(frozen=True)
class OpenIncident:
    id: str
    state: str
    key: str
    opened_at: float
    fired_at: float | None
    summary: str


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

    @property
    def gap_count(self) -> int:
        return sum(self.gaps.values())

    @property
    def recovered(self) -> bool:
        """The last error was followed by a successful snapshot."""
        if not self.last_error or self.last_error_at is None:
            return False
        return self.last_success is not None and self.last_success > self.last_error_at


def build(store: Store) -> list[ServerStatus]:
    """Every server's status, from the store."""
    rows = store.status()
    return [_server(store, s.id, s.name, rows) for s in store.servers()]


def _server(
    store: Store, server_id: int, name: str, rows: Mapping[str, Mapping[str, Any]]
) -> ServerStatus:
    collector = rows.get(f"collector:{name}", {})
    visibility = rows.get(f"visibility:{name}", {})
    gaps = Counter(g.reason.value for g in store.gaps(server_id, *ALL_TIME))
    incidents = tuple(
        OpenIncident(
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
        detector={k: v for k, v in rows.get(f"detector:{name}", {}).items() if k in DETECTOR},
        open_incidents=incidents,
        visibility_note=str(visibility.get("note") or ""),
        visibility_fix=str(visibility.get("fix") or ""),
        stored_by=tuple(k for k in (f"collector:{name}", f"detector:{name}") if k in rows),
    )


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
    rows: Mapping[str, Mapping[str, Any]], servers: list[ServerStatus]
) -> dict[str, dict[str, Any]]:
    """The raw status rows with the figures a process counted in memory (intervals, gaps and
    open incidents since it started) replaced by the store's: JSON readers of ``status`` get
    one answer."""
    out = {k: dict(v) for k, v in rows.items()}
    for s in servers:
        if f"collector:{s.name}" in out:
            out[f"collector:{s.name}"].update(intervals=s.intervals, gaps=s.gap_count)
        if f"detector:{s.name}" in out:
            opened = [{"id": i.id, "key": i.key, "state": i.state} for i in s.open_incidents]
            out[f"detector:{s.name}"]["open_incidents"] = opened
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
