"""Pure: how many calls a statement can take before the server's cores are full, how much room
the server has left, and which replicas could serve a read-only statement instead.

Capacity counts database (execution) time as core time: a statement that takes ``m`` ms per call
keeps ``c x m / 1000`` cores busy at ``c`` calls/s, so it alone saturates ``n`` cores at
``n x 1000 / m`` calls/s. Time spent waiting (I/O, locks) counts too, so this is the bound the
CPU would reach if every millisecond were CPU work: a cautious figure.

A statement may move to a replica only when it is read-only (:mod:`querywatch.readonly`): one
plain ``SELECT`` with no ``FOR UPDATE``/``SHARE``, no ``SELECT INTO``, no data-modifying CTE and
no function that writes or that querywatch does not know (a function of your own may write). A
replica takes it when its replay lag is within ``max_lag_s`` and its busy cores stay within
``max_busy`` of its cores once it runs the statement's calls at the primary's cost per call
(:func:`place`).

>>> s = StatementCapacity(cores=4, mean_ms=8.4, calls_per_s=390.0)
>>> round(s.saturating_calls_per_s), f"{s.utilisation:.0%}"
(476, '82%')
>>> s.sentence()
'at 8.4 ms per call this statement saturates 4 cores at 476 calls/s; it runs at 390/s (82%)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from querywatch.errors import ConfigError
from querywatch.readonly import ReadOnly, read_only
from querywatch.text import figure

__all__ = [
    "Assessment",
    "CapacitySettings",
    "Headroom",
    "Placement",
    "ReadOnly",
    "ReplicaLoad",
    "StatementCapacity",
    "assess",
    "place",
    "read_only",
    "saturating_calls_per_s",
    "settings_from_mapping",
]


@dataclass(frozen=True)
class CapacitySettings:
    """The ``[capacity]`` table of querywatch.toml."""

    max_lag_s: float = 10.0
    """A replica whose replay lag is above this (seconds) is not proposed: its reads are stale."""
    max_busy: float = 0.8
    """A replica is proposed while its busy cores stay within this share of its cores."""


def settings_from_mapping(table: Mapping[str, object]) -> CapacitySettings:
    """Validate the ``[capacity]`` table (unset keys: defaults).

    >>> settings_from_mapping({"max_lag_s": 2}).max_lag_s
    2.0
    """
    known = {f.name for f in fields(CapacitySettings)}
    values: dict[str, float] = {}
    for key, value in table.items():
        if key not in known:
            shown = key if key.isidentifier() else repr(key)
            raise ConfigError(
                f"capacity.{shown}: unknown setting (known: {', '.join(sorted(known))})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"capacity.{key}: expected a number, got {value!r} (fix querywatch.toml)"
            )
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"capacity.{key}: must be a finite number above 0, got {value!r}")
        values[key] = float(value)
    return CapacitySettings(**values)


# -- one statement ---------------------------------------------------------------------------------
def saturating_calls_per_s(cores: float, mean_ms: float) -> float:
    """Calls/s at which a statement of ``mean_ms`` per call alone keeps ``cores`` cores busy
    (infinite for a statement that takes no time)."""
    return cores * 1000.0 / mean_ms if mean_ms > 0 else math.inf


@dataclass(frozen=True)
class StatementCapacity:
    """A statement's cost per call and rate against the server's cores."""

    cores: int
    mean_ms: float
    calls_per_s: float

    @property
    def saturating_calls_per_s(self) -> float:
        return saturating_calls_per_s(self.cores, self.mean_ms)

    @property
    def busy_cores(self) -> float:
        """Cores its calls keep busy now."""
        return self.calls_per_s * self.mean_ms / 1000.0

    @property
    def utilisation(self) -> float:
        """Its current rate over the saturating rate (its share of the server's cores)."""
        return self.busy_cores / self.cores if self.cores > 0 else 0.0

    def sentence(self) -> str:
        if self.mean_ms <= 0 or self.calls_per_s <= 0:
            return "this statement finished no call in the window: its cost per call is unknown"
        return (
            f"at {figure(self.mean_ms)} ms per call this statement saturates {self.cores} cores "
            f"at {_rate(self.saturating_calls_per_s)} calls/s; it runs at "
            f"{_rate(self.calls_per_s)}/s ({self.utilisation:.0%})"
        )

    def as_json(self) -> dict[str, object]:
        sat = self.saturating_calls_per_s
        return {
            "cores": self.cores,
            "mean_ms": round(self.mean_ms, 3),
            "calls_per_s": round(self.calls_per_s, 3),
            "saturating_calls_per_s": round(sat, 1) if math.isfinite(sat) else None,
            "busy_cores": round(self.busy_cores, 3),
            "utilisation": round(self.utilisation, 4),
        }


@dataclass(frozen=True)
class Headroom:
    """The server's cores against the DB time all its statements take."""

    cores: int
    db_ms_per_s: float

    @property
    def busy_cores(self) -> float:
        return self.db_ms_per_s / 1000.0

    @property
    def left_cores(self) -> float:
        return max(self.cores - self.busy_cores, 0.0)

    @property
    def used(self) -> float:
        return self.busy_cores / self.cores if self.cores > 0 else 0.0

    def sentence(self) -> str:
        return (
            f"statements keep {self.busy_cores:.1f} of {self.cores} cores busy "
            f"({self.used:.0%}, {self.db_ms_per_s:,.0f} ms of DB time per second): "
            f"{self.left_cores:.1f} cores left"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "cores": self.cores,
            "db_ms_per_s": round(self.db_ms_per_s, 3),
            "busy_cores": round(self.busy_cores, 3),
            "left_cores": round(self.left_cores, 3),
            "used": round(self.used, 4),
        }


def _rate(value: float) -> str:
    if not math.isfinite(value):
        return "unbounded"
    return f"{value:,.0f}" if value >= 10 else figure(value)


# -- replicas --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaLoad:
    """A replica that could take reads: its cores, its own DB time now and its replay lag (None
    when unknown: not watched, or no figure yet)."""

    name: str
    cores: int | None
    db_ms_per_s: float | None
    lag_s: float | None
    streaming: bool = True


@dataclass(frozen=True)
class Placement:
    """What one replica could take of a read-only statement."""

    replica: str
    calls_per_s: float  # of the statement's calls/s it could take (0: none)
    whole: bool  # all of them
    reason: str
    cores: int | None = None
    busy_before: float | None = None  # cores
    busy_after: float | None = None
    lag_s: float | None = None

    @property
    def takes(self) -> bool:
        return self.calls_per_s > 0

    def as_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "takes": self.takes,
            "whole": self.whole,
            "calls_per_s": round(self.calls_per_s, 3),
            "cores": self.cores,
            "busy_cores_before": _round(self.busy_before),
            "busy_cores_after": _round(self.busy_after),
            "lag_s": _round(self.lag_s),
            "reason": self.reason,
        }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def place(
    statement: StatementCapacity,
    replica: ReplicaLoad,
    settings: CapacitySettings = CapacitySettings(),
) -> Placement:
    """How many of the statement's calls/s ``replica`` could take at the same cost per call,
    keeping its busy cores within ``max_busy`` of its cores, if its lag allows at all."""
    lag = replica.lag_s
    if statement.calls_per_s <= 0 or statement.mean_ms <= 0:
        return Placement(replica.name, 0.0, False, "the statement finished no call", lag_s=lag)
    if not replica.streaming:
        return Placement(replica.name, 0.0, False, "it is not streaming", lag_s=lag)
    if lag is None:
        return Placement(replica.name, 0.0, False, "its replay lag is unknown")
    if lag > settings.max_lag_s:
        why = f"replay lag {figure(lag)} s is over the {figure(settings.max_lag_s)} s limit"
        return Placement(replica.name, 0.0, False, why, lag_s=lag)
    if replica.cores is None or replica.db_ms_per_s is None:
        why = "its cores or load are unknown (watch it with its own DSN)"
        return Placement(replica.name, 0.0, False, why, replica.cores, lag_s=lag)
    before = replica.db_ms_per_s / 1000.0
    room_ms = settings.max_busy * replica.cores * 1000.0 - replica.db_ms_per_s
    fit = room_ms / statement.mean_ms
    calls = max(min(fit, statement.calls_per_s), 0.0)
    after = before + calls * statement.mean_ms / 1000.0
    limit = f"{settings.max_busy:.0%} of {replica.cores} cores"
    busy = f"{before:.1f} -> {after:.1f} busy cores, lag {figure(lag)} s"
    if calls <= 0:
        why = f"already {before:.1f} of {replica.cores} cores busy (limit {limit})"
        return Placement(replica.name, 0.0, False, why, replica.cores, before, before, lag)
    whole = calls >= statement.calls_per_s
    what = "all" if whole else f"{_rate(calls)} of the"
    why = f"could take {what} {_rate(statement.calls_per_s)} calls/s ({busy})"
    return Placement(replica.name, calls, whole, why, replica.cores, before, after, lag)


# -- all of it for one culprit ---------------------------------------------------------------------
@dataclass(frozen=True)
class Assessment:
    """Headroom of the server during a window and where its top culprit's load could go."""

    headroom: Headroom
    fingerprint: str
    query: str
    statement: StatementCapacity
    read_only: ReadOnly
    placements: tuple[Placement, ...] = ()
    cores_from: str = ""
    settings: CapacitySettings = field(default_factory=CapacitySettings)
    replicas_known: bool = True  # False: nobody looked (a one-shot diagnosis)

    @property
    def proposed(self) -> tuple[Placement, ...]:
        """Replicas that could take some of it, the most first."""
        found = [p for p in self.placements if p.takes]
        return tuple(sorted(found, key=lambda p: (-p.calls_per_s, p.replica)))

    def lines(self) -> list[str]:
        """The headroom line and the replica line of a diagnosis (plain text)."""
        out = [
            f"headroom: {self.headroom.sentence()}",
            f"capacity: {self.statement.sentence()}",
        ]
        replicas = self.replica_line()
        return [*out, replicas] if replicas else out

    def replica_line(self) -> str:
        if not self.read_only.ok:
            return f"replicas: not for a replica: {self.read_only.reason}"
        if not self.replicas_known:
            return "replicas: it only reads, so a replica could serve it (its replicas are not known here)"
        if not self.placements:
            return "replicas: it only reads, but this server has no replica to take it"
        taking = self.proposed
        if taking:
            best = taking[0]
            return f"replicas: it only reads; replica {best.replica} {best.reason}" + (
                f" (also: {', '.join(p.replica for p in taking[1:])})" if taking[1:] else ""
            )
        why = "; ".join(f"{p.replica}: {p.reason}" for p in self.placements)
        return f"replicas: it only reads, but no replica can take it ({why})"

    def as_json(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint,
            "cores_from": self.cores_from,
            "headroom": self.headroom.as_json(),
            "statement": self.statement.as_json(),
            "read_only": self.read_only.ok,
            "read_only_reason": self.read_only.reason,
            "max_lag_s": self.settings.max_lag_s,
            "replicas": [p.as_json() for p in self.placements],
            "proposed": [p.replica for p in self.proposed],
            "lines": self.lines(),
        }


def assess(
    cores: int,
    db_ms_per_s: float,
    fingerprint: str,
    query: str,
    calls_per_s: float,
    mean_ms: float,
    replicas: Sequence[ReplicaLoad] | None = (),
    settings: CapacitySettings = CapacitySettings(),
    cores_from: str = "",
) -> Assessment:
    """Headroom, the statement's capacity and, for a read-only one, each replica's placement
    (a statement that writes is never placed on a replica); ``replicas`` None: not known."""
    statement = StatementCapacity(cores, mean_ms, calls_per_s)
    ro = read_only(query) if query else ReadOnly(False, "its text is unknown")
    placements = tuple(place(statement, r, settings) for r in replicas or ()) if ro.ok else ()
    return Assessment(
        Headroom(cores, db_ms_per_s),
        fingerprint,
        query,
        statement,
        ro,
        placements,
        cores_from,
        settings,
        replicas is not None,
    )
