"""Pure: the thresholds of detection and incidents, and their loader from querywatch.toml.

The ``[detect]`` table of querywatch.toml holds any of :class:`DetectSettings`' fields; every one
is documented in docs/thresholds.md.

>>> settings_from_mapping({"learning_intervals": 6}).learning_intervals
6
>>> settings_from_mapping({"long_run_min_age": "2m"}).long_run_min_age
120.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, get_args, get_type_hints

from querywatch.durations import parse_duration
from querywatch.errors import ConfigError, InputError
from querywatch.longrun import MIN_AGE_S


@dataclass(frozen=True)
class DetectSettings:
    """Thresholds of detection and incidents (the ``[detect]`` table of querywatch.toml)."""

    learning_intervals: int = 12
    """Intervals of history needed before anything pages; until then querywatch is learning."""
    window_intervals: int = 360
    """Trailing window of intervals the baseline is computed over (1 hour at 10 s)."""
    refresh_every: int = 60
    """Each fingerprint's baseline is recomputed at least once per this many intervals."""
    seasonal_after_days: float = 14.0
    """With this much history, build_baseline compares with the same hour of the week."""
    mad_k: float = 4.0
    """Threshold = median + mad_k x spread (spread = 1.4826 x MAD, floored)."""
    spread_floor_fraction: float = 0.25
    """Spread is at least this fraction of the median (so a flat baseline is not too sensitive)."""
    far_factor: float = 2.0
    """Severity (observed / threshold) from which an incident fires at once."""
    far_min_calls: int = 30
    """Fewer calls than this in an interval can page a fingerprint only by persisting."""
    marginal_intervals: int = 2
    """Consecutive anomalous intervals after which a marginal signal fires."""
    resolve_intervals: int = 3
    """Consecutive clean intervals after which a firing incident resolves."""
    min_db_ms_per_s: float = 10.0
    """A fingerprint is judged only with at least this DB time (ms per second)."""
    min_db_share: float = 0.05
    """... and at least this share of the server's DB time in the interval."""
    min_calls_per_s: float = 0.5
    """Fingerprints below this baseline call rate do not vote on the traffic factor."""
    min_calls: int = 5
    """Calls in the interval needed to judge a mean latency or rows per call."""
    min_samples: int = 3
    """Intervals a fingerprint must have run in the baseline to be judged against it."""
    latency_floor_ms: float = 0.05
    """Absolute floor of the mean-latency spread (ms)."""
    new_min_db_ms_per_s: float = 25.0
    """A fingerprint new to the baseline pages from this DB time (ms per second) ..."""
    new_min_db_share: float = 0.1
    """... and this share of the server's DB time."""
    rows_spread_floor: float = 5.0
    """Absolute floor of the rows-per-call spread."""
    temp_min_blks_per_s: float = 128.0
    """Temp blocks written per second (8 kB each) below which spills are ignored."""
    lock_min_waiting: float = 1.0
    """Sessions waiting on locks (mean over the interval's samples) that make an anomaly."""
    connections_ratio: float = 0.8
    """Peak sessions / max_connections that make an anomaly."""
    cpu_cores: int | None = None
    """CPU cores of the database server for the CPU rule; None: read from the server when it can
    be (querywatch.source.cores), 0 disables the rule."""
    cpu_ratio: float = 0.8
    """Total DB time / (cores x 1000 ms/s) that makes an anomaly."""
    traffic_surge_factor: float = 2.0
    """Traffic factor from which a server-wide traffic_surge anomaly is raised."""
    max_excluded_intervals: int = 360
    """Intervals kept out of the baseline during an incident, at most (then it becomes normal)."""
    long_run_min_age: float = MIN_AGE_S
    """Seconds: pg_stat_statements statistics younger than this are not trusted as the server's
    normal (querywatch.longrun; at least 30 intervals). In querywatch.toml a duration ("5m")."""


DURATIONS = frozenset({"long_run_min_age"})  # given as "30s", "5m", "1h" or a number of seconds


def settings_from_mapping(table: Mapping[str, object]) -> DetectSettings:
    """Validate the ``[detect]`` table of querywatch.toml into settings (unset keys: defaults)."""
    hints = get_type_hints(DetectSettings)
    values: dict[str, Any] = {}  # each value checked against its field's type by _checked
    for key, value in table.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            shown = key if key.isidentifier() else repr(key)  # one line, whatever the key
            raise ConfigError(f"detect.{shown}: unknown setting (known: {known})")
        values[key] = (
            _duration(key, value) if key in DURATIONS else _checked(key, value, hints[key])
        )
    return DetectSettings(**values)


def _duration(key: str, value: object) -> float:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return parse_duration(value, f"detect.{key}")
        except InputError as exc:
            raise ConfigError(f"{exc} (fix querywatch.toml)") from None
    raise ConfigError(f'detect.{key}: expected a duration such as "5m", got {value!r}')


def _checked(key: str, value: object, hint: object) -> object:
    allowed = get_args(hint) if isinstance(hint, UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return _non_negative(key, value)
    if float in allowed and isinstance(value, int | float) and not isinstance(value, bool):
        return _non_negative(key, float(value))
    names = " or ".join(
        "none" if a is type(None) else getattr(a, "__name__", str(a)) for a in allowed
    )
    raise ConfigError(f"detect.{key}: expected {names}, got {value!r} (fix querywatch.toml)")


def _non_negative(key: str, value: int | float) -> int | float:
    if not math.isfinite(value):
        raise ConfigError(f"detect.{key}: must be a finite number, got {value!r}")
    if value < 0:
        raise ConfigError(f"detect.{key}: must not be negative, got {value!r}")
    return value
