"""Pure: what pg_stat_kcache adds, per statement: CPU time, reads, writes and page faults.

pg_stat_kcache (https://github.com/powa-team/pg_stat_kcache) measures each statement with
getrusage() and keeps cumulative counters per (queryid, top, userid, dbid), like
pg_stat_statements. It needs ``shared_preload_libraries = 'pg_stat_statements,pg_stat_kcache'``
and ``CREATE EXTENSION pg_stat_kcache`` in the monitored database. Version 2.2 names its columns
``exec_user_time``, ``exec_system_time`` (seconds), ``exec_reads``, ``exec_writes`` (bytes),
``exec_minflts``, ``exec_majflts`` and the same with ``plan_`` (planning, when
``pg_stat_kcache.track_planning`` is on); querywatch adds planning to execution.

Readings are turned into per-interval usage the way the collector turns snapshots into deltas:
a server restart gives nothing (the counters started again), an entry whose counters went down was
reset or evicted and is left out, and when most entries went down (``pg_stat_kcache_reset()``) the
whole interval is left out. ``pg_stat_statements_reset()`` does not reset pg_stat_kcache. Nothing
is invented: an interval without usage simply has no CPU figures.

The diagnosis then states a culprit's share of the server's CPU time (the CPU time of every
top-level statement pg_stat_kcache measured in the window) instead of inferring it from execution
time:

>>> u = CpuUsage(10.0, {"a": KcacheCounters(user_ms=620.0), "b": KcacheCounters(user_ms=380.0)})
>>> cpu_evidence("a", u, None)
"62% of the server's CPU time (0.62 of 1.00 CPU s measured by pg_stat_kcache)"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter

from ..model import Diagnosis, StatementKey

KCACHE_FIELDS: tuple[str, ...] = (
    "user_ms",
    "system_ms",
    "reads_bytes",
    "writes_bytes",
    "minflts",
    "majflts",
)
RESET_FRACTION = 0.5  # more than this share of entries going down means pg_stat_kcache_reset()
PACKAGE = "postgresql-{major}-pg-stat-kcache"


@dataclass(frozen=True, slots=True)
class KcacheCounters:
    """Cumulative (in a reading) or per-interval resource usage of one statement."""

    user_ms: float = 0.0
    system_ms: float = 0.0
    reads_bytes: float = 0.0  # read from storage (not from the page cache)
    writes_bytes: float = 0.0
    minflts: float = 0.0  # page reclaims (memory touched without I/O)
    majflts: float = 0.0  # page faults that needed I/O

    @property
    def cpu_ms(self) -> float:
        return self.user_ms + self.system_ms

    def values(self) -> tuple[float, ...]:
        return _VALUES(self)

    def minus(self, earlier: KcacheCounters) -> KcacheCounters | None:
        """The growth since ``earlier``, or None when a counter went down (reset or eviction)."""
        diff = [a - b for a, b in zip(self.values(), earlier.values(), strict=True)]
        return None if min(diff) < 0 else KcacheCounters(*diff)

    def plus(self, other: KcacheCounters) -> KcacheCounters:
        return KcacheCounters(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))


_VALUES = attrgetter(*KCACHE_FIELDS)


@dataclass(frozen=True)
class KcacheReading:
    """One read of pg_stat_kcache(), taken with the pg_stat_statements snapshot of ``taken_at``."""

    taken_at: float
    server_started: float
    entries: Mapping[StatementKey, KcacheCounters]


@dataclass(frozen=True)
class KcacheUsage:
    """Per-statement usage between two readings (only statements whose counters moved)."""

    start: float
    end: float
    by_key: Mapping[StatementKey, KcacheCounters]


def usage_between(before: KcacheReading, after: KcacheReading) -> KcacheUsage | None:
    """The usage of the interval, or None when it cannot be known (restart, global reset)."""
    if after.server_started != before.server_started:
        return None
    grown: dict[StatementKey, KcacheCounters] = {}
    went_down = 0
    for key, counters in after.entries.items():
        old = before.entries.get(key)
        growth = counters if old is None else counters.minus(old)
        if growth is None:
            went_down += 1
        elif any(growth.values()):
            grown[key] = growth
    if went_down > RESET_FRACTION * max(len(before.entries), 1):
        return None
    return KcacheUsage(before.taken_at, after.taken_at, grown)


@dataclass
class KcacheTracker:
    """Keeps the previous reading; ``observe`` gives the usage since it (None on the first)."""

    previous: KcacheReading | None = None

    def observe(self, reading: KcacheReading | None) -> KcacheUsage | None:
        before, self.previous = self.previous, reading
        if before is None or reading is None:
            return None
        return usage_between(before, reading)


# -- what the extension's state means for `check` ------------------------------------------------
@dataclass(frozen=True)
class KcacheStatus:
    """pg_stat_kcache in the monitored database: created (version), installed, preloaded."""

    version: str | None  # None: not created in this database
    schema: str | None
    available: bool  # the package is installed (pg_available_extensions)
    preloaded: bool | None  # in shared_preload_libraries (None: not readable by this role)

    @property
    def usable(self) -> bool:
        return self.version is not None and self.schema is not None and self.preloaded is not False


# -- diagnosis evidence ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuUsage:
    """pg_stat_kcache's figures of a span, summed per fingerprint over top-level statements."""

    seconds: float  # stored intervals with kcache figures
    by_fingerprint: Mapping[str, KcacheCounters]

    @property
    def cpu_ms(self) -> float:
        return sum(c.cpu_ms for c in self.by_fingerprint.values())

    def share(self, fingerprint: str) -> float | None:
        total = self.cpu_ms
        found = self.by_fingerprint.get(fingerprint)
        return (found.cpu_ms if found else 0.0) / total if total > 0 else None


def cpu_usage(usage: KcacheUsage, fingerprints: Mapping[StatementKey, str]) -> CpuUsage:
    """Usage between two readings per fingerprint (top-level statements with a known
    fingerprint), for a diagnosis made without a store (two snapshots a few seconds apart)."""
    by_fp: dict[str, KcacheCounters] = {}
    for key, counters in usage.by_key.items():
        fp = fingerprints.get(key)
        if fp is not None and key.toplevel:
            by_fp[fp] = by_fp[fp].plus(counters) if fp in by_fp else counters
    return CpuUsage(usage.end - usage.start, by_fp)


def cpu_evidence(fingerprint: str, window: CpuUsage, baseline: CpuUsage | None) -> str | None:
    """'62% of the server's CPU time (...)', or None without pg_stat_kcache figures."""
    share = window.share(fingerprint)
    if share is None:
        return None
    used = window.by_fingerprint.get(fingerprint, KcacheCounters())
    text = (
        f"{share:.0%} of the server's CPU time ({used.cpu_ms / 1000:.2f} of "
        f"{window.cpu_ms / 1000:.2f} CPU s measured by pg_stat_kcache"
    )
    before = baseline.share(fingerprint) if baseline is not None else None
    if before is not None:
        text += f"; {before:.0%} before"
    faults = used.minflts + used.majflts
    if faults and window.seconds > 0:
        text += f"; {faults / window.seconds:,.0f} page faults/s"
    if used.reads_bytes and window.seconds > 0:
        text += f"; {used.reads_bytes / window.seconds / 1e6:,.1f} MB/s read from storage"
    return text + ")"


def with_cpu_evidence(
    diagnosis: Diagnosis, window: CpuUsage | None, baseline: CpuUsage | None
) -> Diagnosis:
    """The diagnosis with each culprit's CPU share added to its evidence (after the first line),
    when pg_stat_kcache recorded the window; unchanged otherwise."""
    if window is None or window.cpu_ms <= 0 or not diagnosis.culprits:
        return diagnosis
    culprits = []
    for culprit in diagnosis.culprits:
        line = cpu_evidence(culprit.fingerprint, window, baseline)
        kept = culprit.evidence
        evidence = kept if line is None else (*kept[:1], line, *kept[1:])
        culprits.append(dataclasses.replace(culprit, evidence=evidence))
    return dataclasses.replace(diagnosis, culprits=tuple(culprits))
