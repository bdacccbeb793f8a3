"""Parsing and formatting of durations ("15m", "48h") and points in time (ISO 8601)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from .errors import InputError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Seconds in "90", "15m", "1.5h", "2d".

    >>> parse_duration("15m")
    900.0
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise InputError(f"{what}: {str(text)!r} is not a duration (use e.g. 30s, 15m, 2h, 7d)")
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(value):
        raise InputError(f"{what}: {str(text)!r} is not a finite duration")
    if value <= 0:
        raise InputError(f"{what}: {text!r} must be more than zero")
    return value


def parse_time(text: str, what: str = "time") -> float:
    """POSIX seconds from ISO 8601 ("2026-11-26T10:31:00Z"; no zone means UTC)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{what}: {text!r} is not an ISO 8601 time (use e.g. 2026-11-26T10:31:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with a Z, to the second.

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(ts: float) -> str:
    """HH:MM:SS in UTC, for summaries and tables."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def human(seconds: float) -> str:
    """A short human duration: 45s, 15m, 2h30m, 3d."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60}m" if rest >= 60 else f"{hours}h"
    return f"{seconds // 86400}d"
