"""Pure: a bounded, streaming summary of a log's events (what the ``logs`` report shows).

State is bounded whatever the log's size: per fingerprint (at most ``max_fingerprints``, then the
rest is counted under ``OTHER``) a count, total, min, max and a log-scale histogram of durations
(percentiles within ±4.5 %); the ``keep`` slowest executions, longest lock waits, largest temp
files and slowest plans; per-hour counters; errors by (severity, SQLSTATE, message), bounded;
the first unparsed lines as samples.

Statements are counted as PostgreSQL executes them: ``statement`` and ``execute`` phases are
executions; ``parse`` and ``bind`` durations of the extended protocol are steps of an execution
(counted apart, in ``counts``). A lock wait is one per waiting process: ``still waiting`` and then
``acquired`` for the same process and lock is one wait (the longer time); a wait that never
ends in ``acquired`` (deadlock, cancel) is still one.

>>> from datetime import UTC, datetime
>>> from querywatch.logs.records import Statement
>>> s = Summary()
>>> for ms in (1.0, 2.0, 30.0):
...     s.add(Statement(at=datetime(2024, 1, 1, 10, 5, tzinfo=UTC), line_no=1, duration_ms=ms,
...                     fingerprint="f1", query="SELECT $1"))
>>> st = s.statements()[0]
>>> st.calls, st.total_ms, st.max_ms
(3, 33.0, 30.0)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from itertools import count
from typing import Any

from querywatch.logs import formats
from querywatch.logs import parser as _parser
from querywatch.logs import report as rep
from querywatch.logs.parser import shape_key
from querywatch.logs.records import (
    AnyEvent,
    Autovacuum,
    Checkpoint,
    Connection,
    Deadlock,
    Disconnection,
    Error,
    Event,
    LockWait,
    Plan,
    Statement,
    TempFile,
    Unparsed,
)

__all__ = ["COUNT_NAMES", "OTHER", "StatementStats", "Summary", "summarize"]

OTHER = "other"  # the fingerprint under which statements past max_fingerprints are counted
# The report's `counts` keys (public JSON, documented in README's "Server logs"): events by
# kind; the extended protocol's steps are `<phase>_steps`. The report adds `executions` (what
# pg_stat_statements counts as calls) and `lock_waits` (one per wait: a `still waiting` message
# and its `acquired` one are one wait).
COUNT_NAMES = {
    "Statement": "statements",  # duration and statement messages, every phase
    "Plan": "plans",
    "LockWait": "lock_wait_messages",
    "Deadlock": "deadlocks",
    "TempFile": "temp_files",
    "Error": "errors",  # ERROR, FATAL and PANIC messages
    "Checkpoint": "checkpoints",
    "Autovacuum": "autovacuums",  # automatic vacuum and analyze runs
    "Connection": "connection_messages",  # connection received / authorized
    "Disconnection": "disconnections",
    "Unparsed": "unparsed_lines",
}
_STEPS = 8  # histogram buckets per doubling: bucket width 2^(1/8) = 9 %, midpoint within 4.5 %
_EXECUTIONS = frozenset({"statement", "execute"})
_EXECUTE = frozenset({b"execute ", b"EXECUTE ", b"Execute "})
_log2 = math.log2
_floor = math.floor
_FAST_CACHE_MAX = 50_000
_EXACT_MAX = 20_000  # texts seen as they are, in two generations of half (a few MB at most)
_ZEROED_MAX = 20_000  # texts with their digits made 0, the same
# Digits 1-9 made 0: texts that differ only in their numbers share their shape key when every
# digit is inside a value (`id = 12` and `id = 345`; not `t1` and `t2`): see _by_shape.
_ZERO = bytes.maketrans(b"123456789", b"000000000")


def summarize(
    data: Iterable[bytes | str],
    *,
    fmt: str | None = None,
    prefix: str | None = None,
    year: int | None = None,
    keep_params: bool = False,
    summary: Summary | None = None,
) -> Summary:
    """The summary of a whole log, read the fast way: the same figures as feeding it every event.

    stderr ``duration: ... statement`` lines are aggregated as they are matched, without an event
    object each; the slowest ones still become :class:`Statement` events for the report. With
    ``keep_params`` every statement is an event (their parameters are kept for the slowest).
    """
    summary = summary if summary is not None else Summary()
    events = _parser.parse(
        data, fmt=fmt, prefix=prefix, year=year, keep_params=keep_params, on_timed=summary.timed
    )
    for event in events:
        summary.add(event)
    return summary


@dataclass(frozen=True, slots=True)
class StatementStats:
    """One fingerprint's executions: ``calls`` all, ``timed`` those with a duration."""

    fingerprint: str
    query: str
    calls: int
    timed: int
    total_ms: float
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def mean_ms(self) -> float | None:
        return self.total_ms / self.timed if self.timed else None


class _Stats:
    __slots__ = ("buckets", "calls", "max", "min", "query", "timed", "total")

    def __init__(self, query: str) -> None:
        self.query = query
        self.calls = 0
        self.timed = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0
        self.buckets: dict[int, int] = {}


def _bucket(ms: float) -> int:
    return math.floor(math.log2(ms) * _STEPS) if ms > 0 else -10_000


def _bucket_value(index: int) -> float:
    if index == -10_000:
        return 0.0
    return float(2 ** ((index + 0.5) / _STEPS))


# What the fast path knows of a statement text: its stats, whether it is an execution, its
# phase, fingerprint and normalized text.
_Hit = tuple["_Stats", bool, bytes, str, str]


class _Hour:
    __slots__ = (
        "connections",
        "errors",
        "lock_waits",
        "statements",
        "temp_bytes",
        "temp_files",
        "total_ms",
    )

    def __init__(self) -> None:
        self.statements = 0
        self.total_ms = 0.0
        self.errors = 0
        self.temp_files = 0
        self.temp_bytes = 0
        self.lock_waits = 0
        self.connections = 0


class Summary:
    """Feed events with :meth:`add`; read the figures, or :meth:`report` for the ``logs`` report."""

    def __init__(
        self, *, keep: int = 50, max_fingerprints: int = 50_000, samples: int = 20
    ) -> None:
        self.keep = keep
        self.max_fingerprints = max_fingerprints
        self.samples = samples
        self.max_plans = keep * 4  # fingerprints whose slowest plan is kept (the first ones)
        self._kinds: dict[str, int] = {}  # events by kind (see counts)
        self._stats: dict[str, _Stats] = {}
        self._hours: dict[tuple[int, int, int, int], _Hour] = {}
        self._hour_keys: dict[tuple[int, int, int, int, Any], tuple[int, int, int, int]] = {}
        self._seq = count()
        self._slowest: list[tuple[float, int, Statement]] = []
        self._plans: dict[str, tuple[float, Plan]] = {}  # slowest plan per fingerprint, bounded
        self._locks: list[tuple[float, int, LockWait]] = []
        self._waiting: dict[tuple[int | None, str, str], LockWait] = {}
        self._opened: dict[tuple[int | None, str, str], _Hour] = {}  # first wait of each lock
        self._deadlocks: list[Deadlock] = []
        self._temp: dict[str | None, list[Any]] = {}
        self._errors: dict[tuple[str, str | None, str], list[Any]] = {}
        self._unparsed: list[Unparsed] = []
        self.unparsed = 0
        self.lock_waits = 0
        self.first: datetime | None = None
        self.last: datetime | None = None
        self._fast: dict[bytes, _Hit] = {}
        # Two generations (young, old): when the young one is full it becomes the old one, so
        # the texts in use stay (a cache emptied whole when full misses most of a working set
        # a little larger than it).
        self._exact: dict[bytes, _Hit] = {}
        self._exact_old: dict[bytes, _Hit] = {}
        self._zeroed: dict[bytes, bytes] = {}  # text with digits 0 -> its shape key, b"" if none
        self._zeroed_old: dict[bytes, bytes] = {}
        self._cur_hour_ts: bytes = b"\xff"  # the hour's timestamp prefix; no timestamp's first
        self._cur_tz: bytes | None = None
        self._cur_hour = _Hour()
        self._span: list[Any] = []
        self._timed_lines = 0  # Statement events the fast path counted without making them
        self._slow_floor = -math.inf  # the shortest of the slowest kept, once `keep` are
        self._fast_hours: dict[tuple[bytes, bytes | None], _Hour] = {}
        self._fast_range: dict[
            bytes | None, list[Any]
        ] = {}  # tz -> [first ts, line, last ts, line]
        self._assembler: Any = None
        # Called with each line of the fast path: (fingerprint, query, is an execution, ms, the
        # line, the parser's assembler); logs --store loads them so (see Loader.timed).
        self.on_line: Callable[[str, str, bool, float, formats.Timed, Any], None] | None = None
        self._shapes: dict[bytes, tuple[str, str]] = {}  # the parse's shapes (merge, detached)

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, events: Iterable[AnyEvent]) -> Summary:
        for event in events:
            self.add(event)
        return self

    def add(self, event: AnyEvent) -> None:
        kind = type(event)
        name = kind.__name__
        counts = self._kinds
        counts[name] = counts.get(name, 0) + 1
        at = event.at
        if at is not None:
            if self.first is None or at < self.first:
                self.first = at
            if self.last is None or at > self.last:
                self.last = at
        if kind is Statement:
            self._statement(event)  # type: ignore[arg-type]
        elif kind is Plan:
            self._plan(event)  # type: ignore[arg-type]
        elif kind is LockWait:
            self._lock(event)  # type: ignore[arg-type]
        elif kind is TempFile:
            self._tempfile(event)  # type: ignore[arg-type]
        elif kind is Error:
            self._error(event)  # type: ignore[arg-type]
        elif kind is Deadlock:
            if len(self._deadlocks) < self.samples:
                self._deadlocks.append(event)  # type: ignore[arg-type]
        elif kind is Connection:
            if event.stage == "received":  # type: ignore[union-attr]
                self._hour(at).connections += 1
        elif kind is Unparsed:
            self.unparsed += 1
            if len(self._unparsed) < self.samples:
                self._unparsed.append(event)  # type: ignore[arg-type]
        elif kind in (Checkpoint, Autovacuum, Disconnection):
            pass  # counted in `counts`

    def _statement(self, event: Statement) -> None:
        if event.phase not in _EXECUTIONS:
            key = "phase:" + event.phase
            self._kinds[key] = self._kinds.get(key, 0) + 1
            return
        fingerprint = event.fingerprint
        stats = self._stats.get(fingerprint)
        if stats is None:
            if len(self._stats) >= self.max_fingerprints:
                fingerprint = OTHER
                stats = self._stats.get(OTHER)
            if stats is None:
                stats = self._stats[fingerprint] = _Stats(
                    event.query if fingerprint != OTHER else OTHER
                )
        stats.calls += 1
        hour = self._hour(event.at)
        hour.statements += 1
        ms = event.duration_ms
        if ms is None:
            return
        stats.timed += 1
        stats.total += ms
        if ms < stats.min:
            stats.min = ms
        if ms > stats.max:
            stats.max = ms
        b = _bucket(ms)
        stats.buckets[b] = stats.buckets.get(b, 0) + 1
        hour.total_ms += ms
        if ms > self._slow_floor:
            self._keep_slow(event, ms)

    def _keep_slow(self, event: Statement, ms: float) -> None:
        slowest = self._slowest
        if len(slowest) < self.keep:
            heapq.heappush(slowest, (ms, next(self._seq), event))
        else:
            heapq.heapreplace(slowest, (ms, next(self._seq), event))
        if len(slowest) >= self.keep:
            self._slow_floor = slowest[0][0]

    def timed(self, assembler: Any, line: formats.Timed) -> bool:
        """The fast path: one stderr duration line, as the parser matched it (see summarize).

        False (the line then comes as an event) while a log_statement text awaits its duration.
        """
        _, _, ms, phase, text, ts, tz = line
        if assembler.pending:
            return False
        hit = self._exact.get(text)  # the same text again (parameters as $n): no masking
        if hit is None or hit[2] != phase:
            hit = self._exact_miss(text, phase, line, assembler)
            if hit is None:
                return False  # EXECUTE's fingerprint is its PREPARE's, on the DETAIL line
        stats, execution, _, fingerprint, query = hit
        self._timed_lines += 1
        if self.on_line is not None:  # logs --store: the loader takes the line too
            self.on_line(fingerprint, query, execution, ms, line, assembler)
        if not execution:
            name = "phase:" + phase.decode()
            self._kinds[name] = self._kinds.get(name, 0) + 1
            return True
        stats.calls += 1
        stats.timed += 1
        stats.total += ms
        if ms < stats.min:
            stats.min = ms
        if ms > stats.max:
            stats.max = ms
        b = _floor(_log2(ms) * _STEPS) if ms > 0 else -10_000
        buckets = stats.buckets
        buckets[b] = buckets.get(b, 0) + 1
        if not ts.startswith(self._cur_hour_ts) or tz != self._cur_tz:  # a new hour (13 bytes)
            self._cur_hour = self._fast_hour((ts[:13], tz), line, assembler)
            self._cur_hour_ts, self._cur_tz = ts[:13], tz
            self._fast_range.setdefault(tz, [ts, line, ts, line])
            self._span = self._fast_range[tz]
        hour = self._cur_hour
        hour.statements += 1
        hour.total_ms += ms
        span = self._span
        if ts > span[2]:
            span[2], span[3] = ts, line
        elif ts < span[0]:
            span[0], span[1] = ts, line
        if ms > self._slow_floor:
            self._keep_slow(assembler.statement(formats.entry_of(line), ms, None), ms)
        return True

    def _exact_miss(
        self, text: bytes, phase: bytes, line: formats.Timed, assembler: Any
    ) -> _Hit | None:
        """A text not in the young generation: from the old one, or by its shape."""
        hit = self._exact_old.get(text)
        if hit is None or hit[2] != phase:
            if text[:8] in _EXECUTE:  # never cached
                return None
            key = phase + b"\x05" + self._by_shape(text)
            hit = self._fast.get(key)
            if hit is None:
                hit = self._fast_miss(key, line, assembler)
        exact = self._exact
        if len(exact) >= _EXACT_MAX // 2:
            self._exact_old = exact
            exact = self._exact = {}
        exact[text] = hit
        return hit

    def _by_shape(self, text: bytes) -> bytes:
        """The shape key of a text (parser.shape_key), through the cache of its zeroed digits.

        When no digit of the zeroed text is left unmasked, every digit of the text is inside a
        value, and the masks see classes of bytes (digit, word, quote...) that zeroing keeps: any
        text zeroed the same has the same key.
        """
        zeroed = text.translate(_ZERO)
        key = self._zeroed.get(zeroed)
        if key is None:
            key = self._zeroed_old.get(zeroed)
            if key is None:
                key = shape_key(zeroed)
                if b"0" in key:  # a digit outside the values (t1, "col2"): not shared
                    key = b""
            if len(self._zeroed) >= _ZEROED_MAX // 2:
                self._zeroed_old = self._zeroed
                self._zeroed = {}
            self._zeroed[zeroed] = key
        return key or shape_key(text)

    def _fast_miss(self, key: bytes, line: formats.Timed, assembler: Any) -> _Hit:
        self._assembler = assembler
        phase = line[3].decode()
        fingerprint, query = assembler.shape(line[4].decode("utf-8", "replace"))
        stats = self._stats.get(fingerprint)
        if stats is None:
            counted = fingerprint
            if len(self._stats) >= self.max_fingerprints:
                counted = OTHER
                stats = self._stats.get(OTHER)
            if stats is None:
                stats = self._stats[counted] = _Stats(query if counted != OTHER else OTHER)
        if len(self._fast) >= _FAST_CACHE_MAX:
            self._fast.clear()
        hit = self._fast[key] = (stats, phase in _EXECUTIONS, line[3], fingerprint, query)
        return hit

    def _fast_hour(
        self, key: tuple[bytes, bytes | None], line: formats.Timed, assembler: Any
    ) -> _Hour:
        hour = self._hour(assembler.at(formats.entry_of(line)))
        if len(self._fast_hours) >= 100_000:
            self._fast_hours.clear()
        self._fast_hours[key] = hour
        return hour

    def _settle(self) -> None:
        """First and last timestamps of the fast path's lines, as datetimes."""
        assembler = self._assembler
        for span in self._fast_range.values():
            for line in (span[1], span[3]):
                at = assembler.at(formats.entry_of(line)) if assembler is not None else None
                if at is not None:
                    self.first = at if self.first is None or at < self.first else self.first
                    self.last = at if self.last is None or at > self.last else self.last
        self._fast_range.clear()

    def _plan(self, event: Plan) -> None:
        held = self._plans.get(event.fingerprint)
        if held is None and len(self._plans) >= self.max_plans:
            return
        if held is None or event.duration_ms > held[0]:
            self._plans[event.fingerprint] = (event.duration_ms, event)

    def _lock(self, event: LockWait) -> None:
        key = (event.pid, event.mode, event.lock)
        before = self._waiting.pop(key, None)
        if before is None:
            self.lock_waits += 1
            hour = self._hour(event.at)
            hour.lock_waits += 1
            if key not in self._opened and len(self._opened) < 10_000:
                self._opened[key] = hour  # a later part's wait may have begun before it (merge)
        if not event.acquired and len(self._waiting) < 10_000:
            self._waiting[key] = event
        locks = self._locks
        if len(locks) < self.keep:
            heapq.heappush(locks, (event.wait_ms, next(self._seq), event))
        elif event.wait_ms > locks[0][0]:
            heapq.heapreplace(locks, (event.wait_ms, next(self._seq), event))

    def _tempfile(self, event: TempFile) -> None:
        key = (
            event.fingerprint
            if event.fingerprint in self._temp or len(self._temp) < 10_000
            else None
        )
        row = self._temp.get(key)
        if row is None:
            row = self._temp[key] = [event.query if key is not None else None, 0, 0, 0]
        row[1] += 1
        row[2] += event.size_bytes
        row[3] = max(row[3], event.size_bytes)
        hour = self._hour(event.at)
        hour.temp_files += 1
        hour.temp_bytes += event.size_bytes

    def _error(self, event: Error) -> None:
        key = (event.severity, event.sqlstate, event.message)
        row = self._errors.get(key)
        if row is None:
            if len(self._errors) >= 10_000:
                key = (event.severity, event.sqlstate, OTHER)
                row = self._errors.get(key)
            if row is None:
                row = self._errors[key] = [0, event.query]
        row[0] += 1
        self._hour(event.at).errors += 1

    def _hour(self, at: datetime | None) -> _Hour:
        if at is None:
            key = (0, 0, 0, 0)
        else:
            local = (at.year, at.month, at.day, at.hour, at.tzinfo)
            found = self._hour_keys.get(local)
            if found is None:
                u = at.astimezone(UTC)
                found = (u.year, u.month, u.day, u.hour)
                if len(self._hour_keys) > 100_000:
                    self._hour_keys.clear()
                self._hour_keys[local] = found
            key = found
        hour = self._hours.get(key)
        if hour is None:
            hour = self._hours[key] = _Hour()
        return hour

    # -- merging (parallel reading) -----------------------------------------------------------

    def detached(self) -> Summary:
        """This summary without what ties it to the parse (caches, matches): ready to pickle."""
        self._settle()
        if self._assembler is not None:
            self._shapes = dict(self._assembler.shapes)
        for name in ("_fast", "_exact", "_exact_old", "_zeroed", "_zeroed_old", "_fast_hours"):
            setattr(self, name, {})
        self._hour_keys = {}
        self._assembler = None
        self.on_line = None
        self._span = []
        self._cur_hour = _Hour()
        self._cur_hour_ts, self._cur_tz = b"\xff", None
        self._seq = None  # type: ignore[assignment]  # renumbered by merge
        return self

    def merge(self, later: Summary, line_shift: int = 0) -> Summary:
        """Add the detached summary of the part of the log that comes after this one's.

        The figures are those of one summary fed both parts in order: ``line_shift`` is added to
        the later part's line numbers, a lock wait that began here and ended there is one wait.
        """
        self._settle()
        first_seen: dict[tuple[str, str], str] = {}  # a shape's text as this part first saw it
        for shape, (fingerprint, query) in later._shapes.items():
            mine_shape = self._shapes.setdefault(shape, (fingerprint, query))
            if mine_shape[1] != query:
                first_seen[(fingerprint, query)] = mine_shape[1]
        shift = partial(_shifted, line_shift, first_seen)
        seen_text = {query: seen for (_, query), seen in first_seen.items()}  # errors: no fp
        for name, n in later._kinds.items():
            self._kinds[name] = self._kinds.get(name, 0) + n
        self._timed_lines += later._timed_lines
        self.unparsed += later.unparsed
        for at in (later.first, later.last):
            if at is not None:
                self.first = at if self.first is None or at < self.first else self.first
                self.last = at if self.last is None or at > self.last else self.last
        for fingerprint, theirs in later._stats.items():
            mine = self._stats.get(fingerprint)
            if mine is None:
                if len(self._stats) >= self.max_fingerprints:
                    fingerprint = OTHER
                    mine = self._stats.get(OTHER)
                if mine is None:
                    text = first_seen.get((fingerprint, theirs.query), theirs.query)
                    mine = self._stats[fingerprint] = _Stats(
                        text if fingerprint != OTHER else OTHER
                    )
            mine.calls += theirs.calls
            mine.timed += theirs.timed
            mine.total += theirs.total
            mine.min = min(mine.min, theirs.min)
            mine.max = max(mine.max, theirs.max)
            for b, n in theirs.buckets.items():
                mine.buckets[b] = mine.buckets.get(b, 0) + n
        for key, lock_hour in later._opened.items():  # waits that began in this part
            if self._waiting.pop(key, None) is not None:
                later.lock_waits -= 1
                lock_hour.lock_waits -= 1
            elif key not in self._opened and len(self._opened) < 10_000:
                self._opened[key] = lock_hour
        self.lock_waits += later.lock_waits
        for key, event in later._waiting.items():
            if len(self._waiting) < 10_000:
                self._waiting[key] = shift(event)
        for hour_key, theirs_hour in later._hours.items():
            hour = self._hours.get(hour_key)
            if hour is None:
                hour = self._hours[hour_key] = _Hour()
            for field in _Hour.__slots__:
                setattr(hour, field, getattr(hour, field) + getattr(theirs_hour, field))
        for ms, _, slow in sorted(later._slowest, key=lambda t: t[1]):
            if len(self._slowest) < self.keep or ms > self._slow_floor:
                self._keep_slow(shift(slow), ms)
        for fingerprint, (ms, plan) in later._plans.items():
            held = self._plans.get(fingerprint)
            if held is None and len(self._plans) >= self.max_plans:
                continue
            if held is None or ms > held[0]:
                self._plans[fingerprint] = (ms, shift(plan))
        for wait_ms, _, wait in sorted(later._locks, key=lambda t: t[1]):
            locks = self._locks
            if len(locks) < self.keep:
                heapq.heappush(locks, (wait_ms, next(self._seq), shift(wait)))
            elif wait_ms > locks[0][0]:
                heapq.heapreplace(locks, (wait_ms, next(self._seq), shift(wait)))
        room = self.samples - len(self._deadlocks)
        self._deadlocks.extend(shift(d) for d in later._deadlocks[: max(room, 0)])
        room = self.samples - len(self._unparsed)
        self._unparsed.extend(shift(u) for u in later._unparsed[: max(room, 0)])
        for temp_key, row in later._temp.items():
            into = temp_key if temp_key in self._temp or len(self._temp) < 10_000 else None
            mine_row = self._temp.get(into)
            if mine_row is None:
                temp_text = first_seen.get((into, row[0]), row[0]) if into is not None else None
                mine_row = self._temp[into] = [temp_text, 0, 0, 0]
            mine_row[1] += row[1]
            mine_row[2] += row[2]
            mine_row[3] = max(mine_row[3], row[3])
        for error_key, row in later._errors.items():
            mine_row = self._errors.get(error_key)
            if mine_row is None:
                if len(self._errors) >= 10_000:
                    error_key = (error_key[0], error_key[1], OTHER)
                    mine_row = self._errors.get(error_key)
                if mine_row is None:
                    error_text = seen_text.get(row[1], row[1]) if row[1] is not None else None
                    mine_row = self._errors[error_key] = [0, error_text]
            mine_row[0] += row[0]
        return self

    # -- reading ------------------------------------------------------------------------------

    def statements(self) -> list[StatementStats]:
        """Every fingerprint's figures, the most total time first."""
        rows = [_stats_row(fp, s) for fp, s in self._stats.items()]
        rows.sort(key=lambda r: (-r.total_ms, -r.calls, r.fingerprint))
        return rows

    def slowest(self) -> list[Statement]:
        return [e for _, _, e in sorted(self._slowest, key=lambda t: (-t[0], t[1]))]

    def plans(self) -> list[Plan]:
        return [p for _, p in sorted(self._plans.values(), key=lambda t: -t[0])]

    def errors_by_sqlstate(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, sqlstate, _), row in self._errors.items():
            out[sqlstate or ""] = out.get(sqlstate or "", 0) + row[0]
        return out

    def unparsed_samples(self) -> list[Unparsed]:
        return list(self._unparsed)

    def report(self, files: tuple[str, ...] = (), top: int = 20) -> rep.Report:
        """The record the text, JSON and HTML renderers of ``logs`` show."""
        self._settle()
        stats = self.statements()
        grand = sum(s.total_ms for s in stats) or 1.0
        by_time = tuple(_row(s, grand) for s in stats[:top])
        by_count = tuple(
            _row(s, grand) for s in sorted(stats, key=lambda r: (-r.calls, r.fingerprint))[:top]
        )
        return rep.Report(
            files=files,
            first=_iso(self.first),
            last=_iso(self.last),
            counts=self._counts(),
            top_by_time=by_time,
            top_by_count=by_count,
            slowest=tuple(self._execution(e) for e in self.slowest()[:top]),
            lock_waits=tuple(
                _lock_row(w) for _, _, w in sorted(self._locks, key=lambda t: (-t[0], t[1]))[:top]
            ),
            deadlocks=tuple(
                rep.DeadlockRow(
                    at=_iso(d.at), processes=d.processes, detail=d.detail, query=d.query
                )
                for d in self._deadlocks[:top]
            ),
            temp_files=tuple(
                rep.TempFileRow(
                    fingerprint=fp, query=r[0], count=r[1], total_bytes=r[2], max_bytes=r[3]
                )
                for fp, r in sorted(self._temp.items(), key=lambda kv: -kv[1][2])[:top]
            ),
            errors=tuple(
                rep.ErrorRow(severity=k[0], sqlstate=k[1], message=k[2], count=r[0], query=r[1])
                for k, r in sorted(self._errors.items(), key=lambda kv: -kv[1][0])[:top]
            ),
            hours=tuple(
                rep.HourRow(
                    hour=datetime(*k, tzinfo=UTC).isoformat() if k != (0, 0, 0, 0) else "unknown",
                    statements=h.statements,
                    total_ms=round(h.total_ms, 3),
                    errors=h.errors,
                    temp_files=h.temp_files,
                    temp_bytes=h.temp_bytes,
                    lock_waits=h.lock_waits,
                    connections=h.connections,
                )
                for k, h in sorted(self._hours.items())
            ),
            unparsed=self.unparsed,
            unparsed_samples=tuple(
                rep.UnparsedSample(line_no=u.line_no, reason=u.reason, sample=u.sample)
                for u in self._unparsed
            ),
        )

    @property
    def counts(self) -> dict[str, int]:
        """Events by kind, in words (:data:`COUNT_NAMES`): ``statements``, ``lock_wait_messages``...;
        ``bind_steps``/``parse_steps`` for the extended protocol's steps."""
        counts: dict[str, int] = {}
        for kind, n in self._kinds.items():
            name = COUNT_NAMES.get(kind) or kind.removeprefix("phase:") + "_steps"
            counts[name] = counts.get(name, 0) + n
        if self._timed_lines:
            counts["statements"] = counts.get("statements", 0) + self._timed_lines
        return dict(sorted(counts.items()))

    def _counts(self) -> dict[str, int]:
        out = self.counts
        out["executions"] = sum(s.calls for s in self._stats.values())
        out["lock_waits"] = self.lock_waits
        out["temp_files"] = sum(r[1] for r in self._temp.values())
        out["errors"] = sum(r[0] for r in self._errors.values())
        return out

    def _execution(self, e: Statement) -> rep.Execution:
        held = self._plans.get(e.fingerprint)
        plan = held[1] if held is not None else None
        return rep.Execution(
            at=_iso(e.at),
            duration_ms=e.duration_ms or 0.0,
            fingerprint=e.fingerprint,
            query=e.query,
            database=e.database,
            user=e.user,
            pid=e.pid,
            params=e.params,
            text=e.text,
            plan=plan.plan if plan is not None else None,
            plan_format=plan.format if plan is not None else None,
        )


def _stats_row(fingerprint: str, s: _Stats) -> StatementStats:
    return StatementStats(
        fingerprint=fingerprint,
        query=s.query,
        calls=s.calls,
        timed=s.timed,
        total_ms=round(s.total, 6),
        min_ms=s.min if s.timed else None,
        max_ms=s.max if s.timed else None,
        p50_ms=_percentile(s, 0.50),
        p95_ms=_percentile(s, 0.95),
        p99_ms=_percentile(s, 0.99),
    )


def _percentile(s: _Stats, q: float) -> float | None:
    """The q-quantile from the histogram (bucket midpoint), clamped to the exact min and max."""
    if not s.timed:
        return None
    rank = q * s.timed
    seen = 0
    for index in sorted(s.buckets):
        seen += s.buckets[index]
        if seen >= rank:
            return min(max(_bucket_value(index), s.min), s.max)
    return s.max


def _row(s: StatementStats, grand: float) -> rep.StatementRow:
    return rep.StatementRow(
        fingerprint=s.fingerprint,
        query=s.query,
        calls=s.calls,
        total_ms=s.total_ms,
        mean_ms=s.mean_ms or 0.0,
        max_ms=s.max_ms or 0.0,
        share=s.total_ms / grand,
    )


def _lock_row(w: LockWait) -> rep.LockWaitRow:
    return rep.LockWaitRow(
        at=_iso(w.at),
        pid=w.pid,
        mode=w.mode,
        lock=w.lock,
        relation=w.relation,
        wait_ms=w.wait_ms,
        acquired=w.acquired,
        holders=w.holders,
        query=w.query,
    )


def _shifted(lines: int, first_seen: dict[tuple[str, str], str], event: Any) -> Any:
    """An event of a later part of a log read apart: its line number moved by `lines`, its
    statement's text the one the earlier part first saw for that shape (as one reader gives)."""
    query = getattr(event, "query", None)
    if query is not None:
        seen = first_seen.get((event.fingerprint, query))
        if seen is not None:
            return replace(event, line_no=event.line_no + lines, query=seen)
    return replace(event, line_no=event.line_no + lines) if lines else event


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _event_at(event: Event) -> datetime | None:
    return event.at
