"""Pure: the fleet at a glance. Each server's health from what the store says about it, and the
servers ordered trouble first, for ``querywatch status``, the /fleet page and its JSON twin.

A server's health is the first that holds, in this order (the order of the page too):

======== ===================================================================================
firing   an incident is firing on it
down     its collector's last error is not followed by a successful snapshot
stale    no snapshot for more than ``STALE_INTERVALS`` intervals (the watcher stopped or hangs)
pending  an incident is pending (a marginal signal, not paged yet)
learning the detector still learns its normal workload
unwatched no detector has judged it (``collect`` only) and it is fresh
ok       collected on time, judged, nothing open
======== ===================================================================================

Within one health, the server with the most DB time now comes first, then by name.

>>> now = 1000.0
>>> a = ServerFacts("a", last_success=995.0, interval_s=10.0, learning=False)
>>> b = ServerFacts("b", last_success=900.0, interval_s=10.0, learning=False)
>>> c = ServerFacts("c", last_success=998.0, interval_s=10.0, learning=False, firing=1)
>>> [(r.name, r.health.value) for r in summarize([a, b, c], now)]
[('c', 'firing'), ('b', 'stale'), ('a', 'ok')]
>>> sparkline([0.0, 1.0, None, 4.0, 8.0])
'▁▂ ▅█'
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

STALE_INTERVALS = 3.0  # a snapshot older than this many intervals: the collector is stale
DEFAULT_INTERVAL_S = 10.0  # when the store does not say a server's interval
BARS = "▁▂▃▄▅▆▇█"


class Health(enum.StrEnum):
    FIRING = "firing"
    DOWN = "down"
    STALE = "stale"
    PENDING = "pending"
    LEARNING = "learning"
    UNWATCHED = "unwatched"
    OK = "ok"


TROUBLE: Mapping[Health, int] = {h: n for n, h in enumerate(Health)}  # 0 is the worst


@dataclass(frozen=True)
class ServerFacts:
    """What the store holds about one server (querywatch.status reads it)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    interval_s: float | None = None  # the watcher's interval, when it said
    intervals: int = 0
    last_success: float | None = None  # the last snapshot stored
    last_error: str = ""
    last_error_at: float | None = None
    firing: int = 0  # open incidents by state
    pending: int = 0
    learning: bool | None = None  # None: no detector has judged this server
    db_time: Sequence[float | None] = ()  # DB time, ms per second, per bucket (None: no data)
    incident: str = ""  # the firing (else pending) incident's id
    summary: str = ""  # ... and its one-line summary


@dataclass(frozen=True)
class FleetRow:
    """One server of the fleet with its health and why."""

    facts: ServerFacts
    health: Health
    reason: str
    age_s: float | None  # since the last snapshot

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def db_time_now(self) -> float:
        """The latest DB time (ms/s) with data, 0 when none."""
        return next((v for v in reversed(self.facts.db_time) if v is not None), 0.0)

    @property
    def trouble(self) -> bool:
        return self.health not in (Health.OK, Health.LEARNING, Health.UNWATCHED)


def judge(f: ServerFacts, now: float) -> tuple[Health, str]:
    """A server's health and the reason, in words."""
    age = None if f.last_success is None else max(0.0, now - f.last_success)
    stale_s = STALE_INTERVALS * (f.interval_s or DEFAULT_INTERVAL_S)
    if f.firing:
        return Health.FIRING, _incidents(f.firing, "firing") + (
            f": {f.summary}" if f.summary else ""
        )
    if f.last_error and (f.last_success is None or (f.last_error_at or 0.0) >= f.last_success):
        return Health.DOWN, f"collector: {f.last_error}"
    if age is None:
        return Health.STALE, "no snapshot stored yet"
    if age > stale_s:
        return Health.STALE, f"last snapshot {_ago(age)} ago (interval {_ago(stale_s / 3)})"
    if f.pending:
        return Health.PENDING, _incidents(f.pending, "pending")
    if f.learning:
        return Health.LEARNING, "learning its normal workload"
    if f.learning is None:
        return Health.UNWATCHED, "collected, no detector (collect only)"
    return Health.OK, "collected on time, no open incident"


def summarize(facts: Iterable[ServerFacts], now: float) -> list[FleetRow]:
    """Every server with its health, trouble first; then most DB time now; then by name."""
    rows = []
    for f in facts:
        health, reason = judge(f, now)
        age = None if f.last_success is None else max(0.0, now - f.last_success)
        rows.append(FleetRow(f, health, reason, age))
    return sorted(rows, key=lambda r: (TROUBLE[r.health], -r.db_time_now, r.name))


def counts(rows: Iterable[FleetRow]) -> dict[str, int]:
    """Servers per health, every health listed (0 included), worst first."""
    found = Counter(r.health for r in rows)
    return {h.value: found.get(h, 0) for h in Health}


def headline(rows: Sequence[FleetRow]) -> str:
    """One sentence: how many servers, and which are in trouble.

    >>> f = [ServerFacts("a", firing=1, learning=False), ServerFacts("b", learning=False)]
    >>> headline(summarize(f, 0.0))
    '2 servers: 1 firing (a), 1 stale'
    """
    if not rows:
        return "no server in the store yet"
    parts = []
    for health, n in counts(rows).items():
        if n == 0 or health in (Health.OK.value, Health.LEARNING.value, Health.UNWATCHED.value):
            continue
        names = [r.name for r in rows if r.health.value == health]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        parts.append(f"{n} {health}" + (f" ({shown})" if health == Health.FIRING.value else ""))
    calm = sum(1 for r in rows if not r.trouble)
    if calm:
        parts.append(f"{calm} fine")
    return f"{len(rows)} server{'s' if len(rows) != 1 else ''}: " + ", ".join(parts)


def sparkline(values: Sequence[float | None]) -> str:
    """Values as one line of block characters, scaled to their maximum (a blank for None)."""
    top = max((v for v in values if v is not None and math.isfinite(v)), default=0.0)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif top <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def as_json(row: FleetRow) -> dict[str, object]:
    """One server of ``/fleet.json`` and ``status --format json``'s ``fleet``."""
    f = row.facts
    return {
        "server": f.name,
        "labels": dict(f.labels),
        "health": row.health.value,
        "reason": row.reason,
        "open_incidents": {"firing": f.firing, "pending": f.pending},
        "incident": f.incident or None,
        "summary": f.summary,
        "intervals": f.intervals,
        "interval_s": f.interval_s,
        "age_s": round(row.age_s, 1) if row.age_s is not None else None,
        "last_error": f.last_error,
        "db_time_ms_per_s": round(row.db_time_now, 3),
        "db_time": [round(v, 3) if v is not None else None for v in f.db_time],
    }


def as_doc(rows: Sequence[FleetRow]) -> dict[str, object]:
    """The fleet as JSON: the headline, servers per health and every server, trouble first."""
    return {
        "headline": headline(rows),
        "counts": counts(rows),
        "servers": [as_json(r) for r in rows],
    }


def _incidents(n: int, state: str) -> str:
    return f"{n} incident{'s' if n != 1 else ''} {state}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
