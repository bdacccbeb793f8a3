"""Pure: a slowdown the whole server shared (contention), told apart from one query's regression.

When the server gets busier (more traffic, one statement's extra calls, a new CPU-heavy statement,
another process on the host), the busy statements wait longer for a core and their mean times rise
together. That rise is contention: the fix is where the load comes from, not an index on each
statement that slowed. :func:`contention` finds the factor ``s`` by which the busy statements ran
slower together; :mod:`querywatch.diagnose` counts each statement's mean rise up to ``s`` as
contention, only the part beyond ``s`` as the statement's own change, and hands the contention to
what added the load (:func:`shares`: the traffic, and the culprits by their own extra DB time);
when nothing did, diagnose leaves the rise with the statements (a table they share may have
changed) and only says they slowed together.

The slowdown is server-wide by either test:

- **together**: of the *busy* statements (known in both spans, each holding at least ``busy_share``
  of the baseline's DB time), at least ``min_busy`` are judged and at least ``wide_share`` of them
  ran ``slow_factor`` or more slower, within ``band`` of the busy statements' median factor; ``s``
  is the median factor of those. On a CPU-saturated server (sessions busy on CPU, i.e. active and
  not waiting on a lock, at least ``cpu_ratio`` of its cores) one statement fewer and half of them
  are enough;
- **with a surge** (traffic factor k >= the diagnosis' ``surge_factor``): the statements whose calls
  grew with the traffic (calls/s ratio within ``band`` of k) ran slower by the median of their mean
  factors weighted by their baseline DB time: that is ``s`` when it is ``slow_factor`` or more, at
  most k. Statements of a few microseconds rarely wait for a core, so under contention only the
  heavy ones show it; the cap at k keeps a per-call rise beyond the surge a regression.

>>> changes = [Change(fp, 10.0, 2.0, 20.0, 3.2) for fp in "abc"]
>>> found = contention(changes, k=2.0, surge_factor=1.5, busy_cores=None)
>>> found.how, round(found.factor, 2), found.words()
('together', 1.6, 'all 3 busy statements ran ~1.6x slower at once: server-wide contention')
>>> shares(100.0, traffic_added=60.0, drivers={"n+1": 20.0})
{'n+1': 25.0}
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from querywatch.text import figure

TOGETHER = "together"  # most busy statements slowed alike
SURGE = "surge"  # the statements carrying a traffic surge slowed with it


@dataclass(frozen=True)
class ContentionSettings:
    """Thresholds of :func:`contention`, with their defaults."""

    slow_factor: float = 1.2  # a statement ran slower from this mean-time ratio
    band: float = 1.5  # ... alike with the others within this factor of their median
    busy_share: float = 0.02  # a statement is busy from this share of the baseline's DB time
    min_busy: int = 3  # busy statements judged, at least (one fewer on a saturated CPU)
    wide_share: float = 2 / 3  # share of them that slowed alike, at least (half when saturated)
    cpu_cores: int | None = None  # the server's cores; None: saturation is not known
    cpu_ratio: float = 0.8  # sessions busy on CPU / cores from which the CPU is saturated


@dataclass(frozen=True, slots=True)
class Change:
    """One statement's calls/s and mean ms in the baseline and in the window."""

    fingerprint: str
    base_calls_per_s: float
    base_mean_ms: float
    win_calls_per_s: float
    win_mean_ms: float

    @property
    def known(self) -> bool:
        """Ran in both spans with a measured mean (a factor can be taken)."""
        return self.base_calls_per_s > 0 and self.win_calls_per_s > 0 and self.base_mean_ms > 0

    @property
    def base_ms_per_s(self) -> float:
        return self.base_calls_per_s * self.base_mean_ms

    @property
    def slowdown(self) -> float:
        """Window mean over baseline mean (1.0 when unknown)."""
        return self.win_mean_ms / self.base_mean_ms if self.known else 1.0

    @property
    def calls_factor(self) -> float:
        return self.win_calls_per_s / self.base_calls_per_s if self.known else 0.0


@dataclass(frozen=True)
class Contention:
    """The factor by which the busy statements ran slower together (1.0: no contention found)."""

    factor: float = 1.0
    how: str = ""  # TOGETHER, SURGE or "" (none)
    slowed: int = 0  # statements that ran ~factor slower
    judged: int = 0  # statements judged (busy ones, or the ones carrying the surge)
    busy_cores: float | None = None  # sessions busy on CPU on average over the window
    cores: int | None = None
    cpu_ratio: float = 0.8

    @property
    def found(self) -> bool:
        return self.how != "" and self.factor > 1.0

    @property
    def saturated(self) -> bool:
        return _saturated(self.busy_cores, self.cores, self.cpu_ratio)

    def allowance(self, change: Change) -> float:
        """How much of this statement's mean rise is contention: its factor, between 1 and s."""
        return min(max(change.slowdown, 1.0), self.factor) if self.found else 1.0

    def what(self) -> str:
        """What slowed, e.g. "all 3 busy statements ran ~1.6x slower at once"."""
        s = figure(self.factor)
        if self.how == SURGE:
            return f"the statements carrying the surge ran ~{s}x slower under its load"
        many = "all" if self.slowed == self.judged else f"{self.slowed} of"
        return f"{many} {self.judged} busy statements ran ~{s}x slower at once"

    def words(self) -> str:
        """What slowed and why, e.g. "all 3 busy statements ran ~1.6x slower at once: CPU
        contention (1.9 of 2 cores busy)"."""
        if not self.found:
            return ""
        what = self.what()
        if self.saturated and self.busy_cores is not None:
            return f"{what}: CPU contention ({self.busy_cores:.1f} of {self.cores} cores busy)"
        return f"{what}: server-wide contention"


def busy_cores(samples: Sequence[tuple[int, float, float]], db_ms_per_s: float) -> float:
    """Sessions busy on CPU on average: (samples, active mean, lock-waiting mean) per interval,
    weighted by samples; without samples, the DB time per second in cores."""
    count = sum(n for n, _, _ in samples)
    if count <= 0:
        return db_ms_per_s / 1000.0
    return sum(n * max(active - waiting, 0.0) for n, active, waiting in samples) / count


def contention(
    changes: Sequence[Change],
    k: float,
    surge_factor: float,
    busy_cores: float | None,
    settings: ContentionSettings = ContentionSettings(),
) -> Contention:
    """The server-wide slowdown of the window against the baseline (see the module docstring);
    ``k`` is the traffic factor, ``busy_cores`` the window's sessions busy on CPU."""
    s = settings
    saturated = _saturated(busy_cores, s.cpu_cores, s.cpu_ratio)
    found = [_together(changes, saturated, s)]
    if k >= surge_factor:
        found.append(_with_surge(changes, k, s))
    best = max((f for f in found if f is not None), key=lambda f: f[0], default=None)
    if best is None:
        return Contention(busy_cores=busy_cores, cores=s.cpu_cores, cpu_ratio=s.cpu_ratio)
    factor, how, slowed, judged = best
    return Contention(factor, how, slowed, judged, busy_cores, s.cpu_cores, s.cpu_ratio)


Found = tuple[float, str, int, int]  # factor, how, slowed, judged


def _together(changes: Sequence[Change], saturated: bool, s: ContentionSettings) -> Found | None:
    total = sum(c.base_ms_per_s for c in changes if c.known)
    busy = [c.slowdown for c in changes if c.known and c.base_ms_per_s >= s.busy_share * total]
    need = max(s.min_busy - 1, 2) if saturated else s.min_busy
    if len(busy) < need:
        return None
    middle = statistics.median(busy)
    alike = [r for r in busy if r >= s.slow_factor and middle / s.band <= r <= middle * s.band]
    share = 0.5 if saturated else s.wide_share
    if len(alike) < need or len(alike) < share * len(busy) - 1e-9:
        return None
    return statistics.median(alike), TOGETHER, len(alike), len(busy)


def _with_surge(changes: Sequence[Change], k: float, s: ContentionSettings) -> Found | None:
    riders = [c for c in changes if c.known and k / s.band <= c.calls_factor <= k * s.band]
    if not riders:
        return None
    factor = min(weighted_median([(c.slowdown, c.base_ms_per_s) for c in riders]), k)
    if factor < s.slow_factor:
        return None
    slowed = sum(1 for c in riders if c.slowdown >= s.slow_factor)
    return factor, SURGE, slowed, len(riders)


def shares(total: float, traffic_added: float, drivers: Mapping[str, float]) -> dict[str, float]:
    """The contention ``total`` (ms/s) split over what added the load, in proportion to it: the
    traffic (``traffic_added``, its part is not returned) and each driver by its own extra DB
    time. Nothing added: nothing is handed out (the cause is outside the statements)."""
    added = max(traffic_added, 0.0) + sum(max(v, 0.0) for v in drivers.values())
    if added <= 0 or total <= 0:
        return {}
    return {fp: total * max(v, 0.0) / added for fp, v in drivers.items()}


def _saturated(busy: float | None, cores: int | None, ratio: float) -> bool:
    return bool(cores) and busy is not None and busy >= ratio * (cores or 0)


def weighted_median(pairs: list[tuple[float, float]]) -> float:
    """The value at half the total weight of ``(value, weight)`` pairs (the traffic factor k and
    the shared slowdown are both call- or time-weighted medians)."""
    ordered = sorted(pairs)
    half = sum(weight for _, weight in ordered) / 2
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= half:
            return value
    return ordered[-1][0]
