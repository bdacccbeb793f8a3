"""Pure: rank statements over a window by database time, calls, mean time, rows or I/O; with the
server's cores, each one's capacity (querywatch.capacity: the calls/s at which it alone would
saturate the cores at its current cost per call)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # capacity loads pglast: _ranked imports it, the CLI (SORT_KEYS) does not
    from .capacity import StatementCapacity
    from .model import Counters

SORT_KEYS: dict[str, Callable[[Counters], float]] = {
    "time": lambda c: c.exec_ms,
    "calls": lambda c: c.calls,
    "mean": lambda c: c.mean_ms,
    "rows": lambda c: c.rows,
    "io": lambda c: c.io_blocks,
}


@dataclass(frozen=True)
class RankedStatement:
    rank: int
    fingerprint: str
    queryids: tuple[int, ...]
    query: str
    counters: Counters
    share: float  # of the window's total database (execution) time
    calls_per_s: float
    mean_ms: float
    rows_per_call: float
    capacity: StatementCapacity | None = None  # with the server's cores (top --capacity)

    def as_dict(self) -> dict[str, object]:
        c = self.counters
        extra = {"capacity": self.capacity.as_json()} if self.capacity is not None else {}
        return {
            "rank": self.rank,
            "fingerprint": self.fingerprint,
            "queryids": [str(q) for q in self.queryids],
            "query": self.query,
            "share": round(self.share, 4),
            "calls": int(c.calls),
            "calls_per_s": round(self.calls_per_s, 3),
            "total_ms": round(c.exec_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "rows": int(c.rows),
            "rows_per_call": round(self.rows_per_call, 2),
            "io_blocks": int(c.io_blocks),
            "temp_blks_written": int(c.temp_blks_written),
            **extra,
        }


@dataclass(frozen=True)
class Entry:
    fingerprint: str
    queryids: tuple[int, ...]
    query: str
    counters: Counters


def rank(
    entries: Sequence[Entry],
    seconds: float,
    by: str = "time",
    limit: int = 20,
    cores: int | None = None,
) -> list[RankedStatement]:
    """The ``limit`` first entries by ``by``; shares are of the total execution time. With
    ``cores``, each statement's capacity against them."""
    key = SORT_KEYS[by]
    total_ms = sum(e.counters.exec_ms for e in entries)
    ordered = sorted(entries, key=lambda e: (-key(e.counters), e.fingerprint))[:limit]
    return [_ranked(i + 1, e, total_ms, seconds, cores) for i, e in enumerate(ordered)]


def _ranked(
    position: int, e: Entry, total_ms: float, seconds: float, cores: int | None
) -> RankedStatement:
    from .capacity import StatementCapacity

    c = e.counters
    calls_per_s = c.calls / seconds if seconds else 0.0
    capacity = StatementCapacity(cores, c.mean_ms, calls_per_s) if cores else None
    return RankedStatement(
        rank=position,
        fingerprint=e.fingerprint,
        queryids=e.queryids,
        query=e.query,
        counters=c,
        share=c.exec_ms / total_ms if total_ms else 0.0,
        calls_per_s=calls_per_s,
        mean_ms=c.mean_ms,
        rows_per_call=c.rows / c.calls if c.calls else 0.0,
        capacity=capacity,
    )
