"""Server-log events into the history store, beside (or instead of) pg_stat_statements.

:class:`Loader` takes the parser's events one by one and writes them in batches:

* statement durations (``statement`` and ``execute`` phases) become per-bucket, per-fingerprint
  calls and execution time, the shape the pg_stat_statements collector writes, marked
  ``source = 'logs'`` (see :mod:`querywatch.store.logevents` for the rules that keep the two
  sources from counting a statement twice). Empty buckets between two with durations are
  written too, for a silence of up to an hour (``FILL_MAX``): the log was being written and
  nothing that long ran; a longer silence (a server down, a missing log) stays uncovered;
* auto_explain plans feed the plan history (``Store.record_plan``) that ``explain``, ``audit``
  and the dashboard show. JSON plans are stored as logged; text plans as the tree their node
  lines give (node type, relation, index, costs);
* lock waits, deadlocks, temp files, errors, checkpoints and autovacuum runs become
  ``log_events`` rows.

Durations inside spans of log loaded by an earlier run are skipped, so loading a file again, or
a resumed run overlapping the last one, adds nothing. State is bounded: open buckets are flushed
once the log is ``FLUSH_LAG`` buckets past them, events every ``BATCH`` rows.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..advise import nodes
from ..store.logevents import Batch, Bucket, EventRow
from ..store.protocol import StoreProtocol
from . import formats
from .records import (
    Autovacuum,
    Checkpoint,
    Deadlock,
    Error,
    Event,
    LockWait,
    Plan,
    Statement,
    TempFile,
)
from .report import anonymize

log = logging.getLogger("querywatch.logs")

BUCKET_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OWN = b"querywatch"  # OWN_APPLICATION in a line's prefix: only then is its application read
FLUSH_LAG = 3  # buckets behind the newest event before a bucket is written
FILL_MAX = 60  # empty buckets written between two of a log (longer silences stay uncovered)
BATCH = 5000  # events kept before a write
COUNTED_PHASES = frozenset({"statement", "execute"})  # what pg_stat_statements counts as calls
OWN_APPLICATION = "querywatch"


@dataclass
class LoadResult:
    """What a load wrote (counts over the whole run)."""

    statements: int = 0  # durations counted into buckets
    already_loaded: int = 0  # durations skipped: an earlier run loaded that span of log
    buckets: int = 0
    skipped_buckets: int = 0  # pg_stat_statements already covers them
    events: int = 0  # new log_events rows
    plans: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Loader:
    """Feed events with :meth:`add`, then :meth:`close`; ``durations=False`` (``watch --log``,
    where pg_stat_statements has the statistics) keeps plans and events only."""

    store: StoreProtocol
    server_id: int
    durations: bool = True
    bucket_s: float = BUCKET_S
    keep_values: bool = False  # --keep-params: plans keep their literal values
    result: LoadResult = field(default_factory=LoadResult)

    def __post_init__(self) -> None:
        spans = self.store.log_ranges(self.server_id) if self.durations else []
        self._loaded_starts = [a for a, _ in spans]
        self._loaded = spans
        self._buckets: dict[float, dict[tuple[str, bool], list[float]]] = {}
        self._texts: dict[str, str] = {}
        self._events: list[EventRow] = []
        self._plans: dict[tuple[str, str], tuple[dict[str, Any], float, float]] = {}
        self._alike: dict[tuple[float, int, str, str], int] = {}
        self._written: float | None = None  # the newest bucket written
        self._newest: float | None = None
        self._span: tuple[float, float] | None = None  # of this batch, for log_ranges
        self._minutes: dict[tuple[bytes, bytes | None], int] = {}  # (minute, zone) -> its µs

    # -- feeding --------------------------------------------------------------------------------
    def add(self, event: Event) -> None:
        if event.at is None:
            return
        at = event.at.timestamp()
        self._seen(at)
        if isinstance(event, Statement):
            self._statement(event, at)
        elif isinstance(event, Plan):
            self._plan(event, at)
        else:
            row = event_row(event, at)
            if row is not None:
                self._events.append(self._numbered(row))
        if len(self._events) + len(self._plans) >= BATCH:
            self.flush()

    def add_all(self, events: Iterable[Event]) -> LoadResult:
        for event in events:
            self.add(event)
        return self.close()

    def timed(
        self,
        fingerprint: str,
        query: str,
        execution: bool,
        ms: float,
        line: formats.Timed,
        assembler: Any,
    ) -> None:
        """A duration line of the summary's fast path (Summary.on_line): what :meth:`add` does
        with its Statement event, without making it."""
        at = self._line_at(line, assembler)
        if at is None:
            return
        self._seen(at)
        if not self.durations or not execution:
            return
        if self._was_loaded(at):
            self.result.already_loaded += 1
            return
        m = line[1]
        own = m.string.find(_OWN, m.start(), m.start("msg")) >= 0 and (
            formats.entry_of(line).application == OWN_APPLICATION
        )
        self._count(at, fingerprint, own, ms, query)

    def _line_at(self, line: formats.Timed, assembler: Any) -> float | None:
        """``at.timestamp()`` of the line's event, the same float, with the date read once a
        minute (the microseconds since the epoch are whole numbers, divided once)."""
        ts = line[5]
        key = (ts[:16], line[6])
        base = self._minutes.get(key)
        if base is None:
            at = assembler.at(formats.entry_of(line))
            if at is None:
                return None
            start = at.replace(second=0, microsecond=0) - _EPOCH
            base = (start.days * 86_400 + start.seconds) * 1_000_000 + start.microseconds
            if len(self._minutes) > 10_000:
                self._minutes.clear()
            self._minutes[key] = base
        tail = ts[17:]
        if len(tail) not in (2, 6, 9) or tail[:2] > b"59" or (len(tail) > 2 and tail[2:3] != b"."):
            at = assembler.at(formats.entry_of(line))  # leap second, odd fraction: as parsed
            return at.timestamp() if at is not None else None
        micros = int(tail[:2]) * 1_000_000 + (int(tail[3:].ljust(6, b"0")) if len(tail) > 2 else 0)
        return (base + micros) / 1_000_000

    def _numbered(self, row: EventRow) -> EventRow:
        """Two alike events of one process in one instant (two syntax errors in a millisecond)
        stay two rows: the second gets ``#2`` in its ident, the same on every load."""
        key = (row.at, row.pid, row.kind, row.ident)
        if len(self._alike) > 10_000:
            self._alike.clear()
        n = self._alike[key] = self._alike.get(key, 0) + 1
        return row if n == 1 else replace(row, ident=f"{row.ident}#{n}")

    def _seen(self, at: float) -> None:  # once per event: plain comparisons
        r = self.result
        if r.first_at is None or r.last_at is None:
            r.first_at = r.last_at = at
        elif at > r.last_at:
            r.last_at = at
        elif at < r.first_at:
            r.first_at = at
        span = self._span
        if span is None:
            self._span = (at, at)
        elif at > span[1] or at < span[0]:
            self._span = (min(span[0], at), max(span[1], at))

    def _statement(self, s: Statement, at: float) -> None:
        if not self.durations or s.duration_ms is None or s.phase not in COUNTED_PHASES:
            return
        if self._was_loaded(at):
            self.result.already_loaded += 1
            return
        self._count(at, s.fingerprint, s.application == OWN_APPLICATION, s.duration_ms, s.query)

    def _count(self, at: float, fingerprint: str, own: bool, ms: float, query: str) -> None:
        start = (at // self.bucket_s) * self.bucket_s
        sums = self._buckets.setdefault(start, {})
        cell = sums.setdefault((fingerprint, own), [0, 0.0])
        cell[0] += 1
        cell[1] += ms
        self._texts.setdefault(fingerprint, query)
        self.result.statements += 1
        if self._newest is None or start > self._newest:
            self._newest = start
            if min(self._buckets) < start - FLUSH_LAG * self.bucket_s:
                self.flush()

    def _was_loaded(self, at: float) -> bool:
        i = bisect.bisect_right(self._loaded_starts, at) - 1
        return i >= 0 and at <= self._loaded[i][1]

    def _plan(self, p: Plan, at: float) -> None:
        doc = plan_document(p, self.keep_values)
        if doc is None:
            return
        key = (p.fingerprint, nodes.plan_hash(doc))
        self._plans[key] = (doc, nodes.total_cost(doc), at)
        self._texts.setdefault(p.fingerprint, p.query)

    # -- writing --------------------------------------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Write the events and plans kept, and the buckets the log has moved past."""
        batch = Batch(
            buckets=self._ready_buckets(final),
            texts=self._texts,
            events=self._events,
            ranges=[self._span] if self._span is not None and self.durations else [],
        )
        written = self.store.record_log_batch(self.server_id, batch)
        for (fp, plan_hash), (doc, cost, at) in sorted(self._plans.items()):
            self.store.record_plan(self.server_id, fp, plan_hash, doc, cost, at)
        self.result.buckets += written.buckets
        self.result.skipped_buckets += written.skipped_buckets
        self.result.events += written.events
        self.result.plans += len(self._plans)
        self._texts, self._events, self._plans, self._span = {}, [], {}, None

    def _ready_buckets(self, final: bool) -> list[Bucket]:
        """Buckets the log has moved past (``final``: all) and the empty ones between them (a
        silence of at most ``FILL_MAX`` buckets: the log was written, nothing ran; a longer one
        is left uncovered), and buckets that got late lines (added to what is stored)."""
        if self._newest is None:
            return []
        limit = self._newest if final else self._newest - FLUSH_LAG * self.bucket_s
        starts: list[float] = []
        previous = self._written
        for start in sorted(b for b in self._buckets if b <= limit):
            if previous is not None and start > previous:
                missing = round((start - previous) / self.bucket_s) - 1
                if 0 < missing <= FILL_MAX:
                    starts += [previous + self.bucket_s * (k + 1) for k in range(missing)]
            starts.append(start)
            previous = start if previous is None else max(previous, start)
        self._written = previous
        return [self._bucket(b) for b in starts]

    def _bucket(self, start: float) -> Bucket:
        sums = self._buckets.pop(start, {})
        end = start + self.bucket_s
        if self.result.last_at is not None and end > self.result.last_at:
            end = max(self.result.last_at, start + 1.0)  # the log stops here (a later load extends)
        return Bucket(start, end, {k: (int(v[0]), float(v[1])) for k, v in sums.items()})

    def close(self) -> LoadResult:
        self.flush(final=True)
        return self.result


# -- events as rows -------------------------------------------------------------------------------
def _detail(**values: Any) -> str:
    return json.dumps({k: v for k, v in values.items() if v is not None}, sort_keys=True)


def event_row(event: Event, at: float) -> EventRow | None:
    """The ``log_events`` row of an event worth keeping; None for the others."""
    pid, db, user = event.pid or 0, event.database, event.user
    if isinstance(event, LockWait):
        state = "acquired" if event.acquired else "waiting"
        ident = f"{event.mode}|{event.lock}|{state}|{event.wait_ms}"
        detail = _detail(
            mode=event.mode,
            lock=event.lock,
            relation=event.relation,
            acquired=event.acquired,
            holders=list(event.holders),
            queue=list(event.queue),
            query=event.query,
        )
        return EventRow(
            at, pid, "lock_wait", ident, event.fingerprint, event.wait_ms, db, user, detail
        )
    if isinstance(event, Deadlock):
        ident = ",".join(str(p) for p in event.processes)
        detail = _detail(processes=list(event.processes), detail=event.detail, query=event.query)
        return EventRow(at, pid, "deadlock", ident, event.fingerprint, None, db, user, detail)
    if isinstance(event, TempFile):
        detail = _detail(path=event.path, query=event.query)
        return EventRow(
            at, pid, "temp_file", event.path, event.fingerprint, event.size_bytes, db, user, detail
        )
    if isinstance(event, Error):
        ident = f"{event.severity}|{event.message[:200]}"  # stderr may lack the SQLSTATE
        detail = _detail(
            severity=event.severity,
            sqlstate=event.sqlstate,
            message=event.message,
            query=event.query,
        )
        return EventRow(at, pid, "error", ident, event.fingerprint, None, db, user, detail)
    if isinstance(event, Checkpoint):
        detail = _detail(
            buffers=event.buffers,
            write_ms=event.write_ms,
            sync_ms=event.sync_ms,
            detail=event.detail,
        )
        return EventRow(
            at, pid, "checkpoint", event.detail[:200], None, event.total_ms, db, user, detail
        )
    if isinstance(event, Autovacuum):
        ident = f"{event.action}|{event.table}"
        detail = _detail(action=event.action, table=event.table, detail=event.detail)
        return EventRow(at, pid, "autovacuum", ident, None, event.elapsed_ms, db, user, detail)
    return None


# -- plans ----------------------------------------------------------------------------------------
def plan_document(p: Plan, keep_values: bool = False) -> dict[str, Any] | None:
    """The EXPLAIN (FORMAT JSON) document of an auto_explain plan; a text plan's node lines
    made into one. None when the plan holds no node. Values are masked unless ``keep_values``
    (``--keep-params``): the query text is the normalized one, quoted strings and compared
    numbers of conditions become ``?`` (the store keeps no parameter value by default)."""
    if p.format == "json":
        try:
            doc = json.loads(p.plan)
        except ValueError:
            return None
        if isinstance(doc, list) and doc:
            doc = doc[0]
        if not (isinstance(doc, Mapping) and isinstance(doc.get("Plan"), Mapping)):
            return None
        if keep_values:
            return {**doc, "Query Text": doc.get("Query Text", p.query)}
        return {**doc, "Query Text": p.query, "Plan": _masked(doc["Plan"])}
    root = text_plan(p.plan)
    if root is None:
        return None
    text = p.plan if keep_values else anonymize(p.plan)
    return {"Query Text": p.query, "Plan": root, "Format": "text", "Text": text}


def _masked(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "Plans" and isinstance(value, list):
            out[key] = [_masked(c) if isinstance(c, Mapping) else c for c in value]
        elif isinstance(value, str):
            out[key] = anonymize(value)
        elif isinstance(value, list):
            out[key] = [anonymize(v) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


_NODE = re.compile(
    r"^(?P<indent>\s*)(?:->\s+)?(?P<name>[A-Z][\w ]*?)"
    r"(?: using (?P<index>\S+))?(?: on (?P<rel>\S+)(?: \S+)?)?"
    r"\s+\(cost=(?P<startup>[\d.]+)\.\.(?P<total>[\d.]+) rows=(?P<rows>\d+)"
)
_ACTUAL = re.compile(r"\(actual time=(?P<start>[\d.]+)\.\.(?P<end>[\d.]+) rows=(?P<rows>\d+)")


def text_plan(text: str) -> dict[str, Any] | None:
    """The tree of a text plan's node lines, with EXPLAIN JSON's key names.

    >>> plan = text_plan('''Aggregate  (cost=25.89..25.90 rows=1 width=8)
    ...   ->  Seq Scan on t  (cost=0.00..25.88 rows=6 width=0)
    ...         Filter: (v ~~ 'v1%'::text)''')
    >>> plan["Node Type"], plan["Total Cost"], plan["Plans"][0]["Relation Name"]
    ('Aggregate', 25.9, 't')
    """
    stack: list[tuple[int, dict[str, Any]]] = []
    root: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _NODE.match(line.replace("\t", "    "))
        if m is None:
            continue
        node: dict[str, Any] = {
            "Node Type": m["name"].strip(),
            "Startup Cost": float(m["startup"]),
            "Total Cost": float(m["total"]),
            "Plan Rows": int(m["rows"]),
        }
        if m["rel"]:
            node["Relation Name"] = m["rel"]
        if m["index"]:
            node["Index Name"] = m["index"]
        if actual := _ACTUAL.search(line):
            node["Actual Total Time"] = float(actual["end"])
            node["Actual Rows"] = int(actual["rows"])
        depth = len(m["indent"].replace("\t", "    "))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].setdefault("Plans", []).append(node)
        elif root is None:
            root = node
        else:
            continue  # a second tree (an InitPlan line pattern we do not nest): keep the first
        stack.append((depth, node))
    return root
