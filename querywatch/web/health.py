"""Pure: health findings from what the store says about its collectors, detectors and channels.

The findings use `querywatch check`'s Finding record (name, level, message, fix), so the Health
page shows both the same way. Stored `check` results (status key ``check``, a list of findings)
are shown as they were recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..check import Finding, Level
from ..durations import human, iso
from ..model import Gap

STALE_S = 60.0  # a collector silent this long is late
DEAD_S = 600.0  # ... and this long is down


def collectors(status: Mapping[str, Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
    rows = []
    for key, value in sorted(status.items()):
        if not key.startswith("collector:"):
            continue
        last = value.get("last_success")
        rows.append(
            {
                "server": key.split(":", 1)[1],
                "last_success": iso(last),
                "age_s": round(now - last, 1) if last else None,
                "intervals": int(value.get("intervals", 0)),
                "gaps": int(value.get("gaps", 0)),
                "dealloc": int(value.get("dealloc", 0)),
                "reconnects": int(value.get("reconnects", 0)),
                "last_error": str(value.get("last_error", "")),
                "last_error_at": iso(value.get("last_error_at")),
            }
        )
    return rows


def findings(
    status: Mapping[str, Mapping[str, Any]], gaps: Sequence[Gap], now: float
) -> list[Finding]:
    out = [_stored_check(f) for f in status.get("check", {}).get("findings", [])]
    rows = collectors(status, now)
    if not rows:
        out.append(
            Finding(
                "collector",
                Level.FAIL,
                "no collector has written to this store",
                "run `querywatch watch` (or `querywatch collect`) with this --store",
            )
        )
    for row in rows:
        out.extend(_collector(row))
    out.extend(_detectors(status))
    out.extend(_channels(status))
    out.append(_gaps(gaps))
    return out


def _stored_check(raw: Mapping[str, Any]) -> Finding:
    level = raw.get("level", "warn")
    return Finding(
        f"check: {raw.get('name', '')}",
        Level(level) if level in {lv.value for lv in Level} else Level.WARN,
        str(raw.get("message", "")),
        str(raw.get("fix", "")),
    )


def _collector(row: Mapping[str, Any]) -> list[Finding]:
    name, age = row["server"], row["age_s"]
    out = []
    if age is None or age > DEAD_S:
        when = "never" if age is None else f"{human(age)} ago"
        fix = "check that `querywatch watch` runs and can reach the server"
        out.append(Finding(f"collector {name}", Level.FAIL, f"last snapshot {when}", fix))
    elif age > STALE_S:
        out.append(Finding(f"collector {name}", Level.WARN, f"last snapshot {human(age)} ago"))
    else:
        out.append(Finding(f"collector {name}", Level.OK, f"last snapshot {human(age)} ago"))
    if row["last_error"]:
        out.append(Finding(f"collector {name}", Level.WARN, f"last error: {row['last_error']}"))
    if row["dealloc"]:
        out.append(
            Finding(
                f"collector {name}",
                Level.WARN,
                f"pg_stat_statements evicted entries {row['dealloc']} times (dealloc): "
                "statistics were lost between snapshots",
                "raise pg_stat_statements.max in postgresql.conf and restart PostgreSQL",
            )
        )
    return out


def _detectors(status: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    out = []
    for key, value in sorted(status.items()):
        if key.startswith("detector:"):
            name = key.split(":", 1)[1]
            opened = len(value.get("open_incidents", []))
            if value.get("learning"):
                out.append(Finding(f"detector {name}", Level.WARN, "learning the normal workload"))
            else:
                out.append(Finding(f"detector {name}", Level.OK, f"{opened} open incidents"))
    return out


def _channels(status: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    out = []
    for c in status.get("alerts", {}).get("channels", []):
        name = f"alert channel {c.get('name', '')}"
        if c.get("last_error"):
            message = f"{c.get('failed', 0)} failed deliveries, last error: {c['last_error']}"
            out.append(Finding(name, Level.WARN, message, "check the channel's URL or key"))
        else:
            out.append(Finding(name, Level.OK, f"{c.get('sent', 0)} sent"))
    return out


def _gaps(gaps: Sequence[Gap]) -> Finding:
    if not gaps:
        return Finding("gaps", Level.OK, "no gaps in the last 24 hours")
    reasons = sorted({g.reason.value for g in gaps})
    return Finding(
        "gaps",
        Level.WARN,
        f"{len(gaps)} gaps in the last 24 hours ({', '.join(reasons)}): those stretches are "
        "left out of charts and diagnosis, never shown as zeros",
    )
