"""Pure: the lines of a PostgreSQL server log -> events (:mod:`querywatch.logs.records`).

>>> stamp = b"2024-05-01 10:00:00.123 UTC [42] bob@shop "
>>> log = [
...     stamp + b"LOG:  duration: 12.5 ms  statement: SELECT * FROM t WHERE id = 7\\n",
...     b"2024-05-01 10:00:01.000 UTC [42] bob@shop ERROR:  relation \\"nope\\" does not exist\\n",
...     b"2024-05-01 10:00:01.000 UTC [42] bob@shop STATEMENT:  select * from nope\\n",
... ]
>>> first, second = parse(log)
>>> first.duration_ms, first.query, first.user, first.database, first.pid
(12.5, 'SELECT * FROM t WHERE id = $1', 'bob', 'shop', 42)
>>> second.severity, second.query
('ERROR', 'select * from nope')

``parse`` streams: it holds one open message per process and a bounded cache of statement shapes,
never the file. The pieces it is given may be lines or blocks of any size (bytes or str); an empty
piece means "nothing more for now" (``--follow``): every complete message is given out then.
Statements are shaped with :func:`querywatch.fingerprint.shape` (the fingerprint of the
pg_stat_statements data), cached by their text with values masked, so each query shape is parsed
once. Events come in the order their messages end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import partial
from itertools import chain
from typing import Literal, TypedDict

from querywatch import fingerprint as fp
from querywatch.errors import InputError
from querywatch.logs import formats
from querywatch.logs.formats import FORMATS, BadLine, Entry, LogFormat, Timed
from querywatch.logs.records import (
    AnyEvent,
    Autovacuum,
    Checkpoint,
    Connection,
    Deadlock,
    Disconnection,
    Error,
    LockWait,
    Plan,
    Statement,
    TempFile,
    Unparsed,
)

__all__ = ["FORMATS", "OnTimed", "detect_format", "parse", "shape_key"]

_DETECT_BYTES = 256 * 1024
_DURATION = re.compile(
    r"duration: (?P<ms>[\d.]+) ms"
    r"(?:\s+(?P<phase>statement|execute|bind|parse|plan)(?P<name>[^:\n]*):[ \n]?(?P<text>.*))?",
    re.DOTALL,
)
_STATEMENT = re.compile(
    r"(?P<phase>statement|execute|bind|parse)(?P<name>[^:\n]*): (?P<text>.*)", re.DOTALL
)
_PARAM = re.compile(r"\$\d+ = ('(?:[^']|'')*'|NULL|[^,]*)")
_LOCK = re.compile(
    r"process (?P<pid>\d+) (?P<state>still waiting for|acquired|avoided deadlock for"
    r"|detected deadlock while waiting for)"
    r" (?P<mode>\w+) on (?P<lock>.+?) after (?P<ms>[\d.]+) ms"
)
_HOLDERS = re.compile(
    r"Process(?:es)? holding the lock: (?P<holders>[\d, ]+)\.(?: Wait queue: (?P<queue>[\d, ]+)\.)?"
)
_RELATION = re.compile(r"relation (\d+) of database \d+")
_CONTEXT_RELATION = re.compile(r'in relation "([^"]+)"')
_TEMP = re.compile(r'temporary file: path "(?P<path>[^"]*)", size (?P<size>\d+)')
_CHECKPOINT = re.compile(
    r"write=(?P<write>[\d.]+) s, sync=(?P<sync>[\d.]+) s, total=(?P<total>[\d.]+) s"
)
_BUFFERS = re.compile(r"wrote (\d+) buffers")
_VACUUM = re.compile(r'automatic (?P<action>vacuum|analyze) of table "(?P<table>[^"]+)"')
_ELAPSED = re.compile(r"elapsed: (?P<s>[\d.]+) s")
_SESSION = re.compile(r"session time: (?P<h>\d+):(?P<m>\d\d):(?P<s>[\d.]+)")
_DEADLOCK_PIDS = re.compile(r"Process (\d+) waits for")
_MESSAGE_VALUES = re.compile(r"'(?:[^']|'')*'|(?<=: )\"[^\"]*\"$")
# The cache key of a statement's shape: values (strings, numbers, $n) masked and IN lists of
# them collapsed, as the fingerprint ignores them; quoted identifiers are masked apart and appended
# (they name things). Control bytes never occur in SQL text, so they mark what was masked.
_VALUE = re.compile(  # a quote, digit or $ first: the engine skips other bytes fast
    rb"['\d$](?:(?<=')[^']*'|(?<=\$)\d+"
    rb"|(?<=\d)(?<![\w$.\x80-\xff]\d)[\d.]*(?:[eE][-+]?\d+)?)"
)
# A parenthesized list of masked values; an IN list when ``in`` (a word) and spaces lead to it.
# Searched from its "(" (a literal first: the engine jumps to it) and checked backwards, which is
# 4x cheaper than a pattern led by ``\b(?i:in)`` (i and n are everywhere in SQL).
_VALUE_LIST = re.compile(rb"\(\s*\x00(?:\s*,\s*\x00)*\s*\)")
_SPACE = frozenset(b" \t\n\r\f\v")  # \s of a bytes pattern
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")  # \w


def _in_lists(masked: bytes) -> bytes:
    """Each ``IN (\x00, \x00...)`` (any case, any spaces) of masked text as one ``\x04``."""
    parts: list[bytes] = []
    last = 0
    for m in _VALUE_LIST.finditer(masked):
        j = m.start()
        while j > last and masked[j - 1] in _SPACE:
            j -= 1
        if (
            j - 2 >= last
            and masked[j - 2 : j].lower() == b"in"
            and (j == 2 or masked[j - 3] not in _WORD)
        ):
            parts.append(masked[last : j - 2])
            parts.append(b"\x04")
            last = m.end()
    if not parts:
        return masked
    parts.append(masked[last:])
    return b"".join(parts)


def shape_key(text: bytes) -> bytes:
    r"""The key under which a statement's (fingerprint, normalized text) is cached.

    Texts with the same key have the same fingerprint. Text the mask could misread (backslash
    escapes in strings, dollar quotes) is its own key.

    >>> shape_key(b"SELECT * FROM t WHERE a = 'x' AND id IN (1, 2, $3)")
    b'SELECT * FROM t WHERE a = \x00 AND id \x04'
    >>> shape_key(b'SELECT "t1".x FROM t1 WHERE y = 1') != shape_key(b'SELECT "t2".x FROM t1 WHERE y = 1')
    True
    """
    if b"\\'" in text or b"$$" in text:
        return b"\x02" + text
    if b'"' in text:  # quoted identifiers kept aside as they are, the rest masked
        parts = text.split(b'"')
        masked = (
            _VALUE.sub(b"\x00", b"\x01".join(parts[0::2])) + b"\x03" + b"\x03".join(parts[1::2])
        )
    else:
        masked = _VALUE.sub(b"\x00", text)
    if b"\x00, \x00" in masked or b"\x00,\x00" in masked:  # a list of values, maybe IN (...)
        masked = _in_lists(masked)
    return masked


_FIRST_PLAN_LINE = re.compile(r"\(cost=|\(actual |\(never executed\)")
_TZ_OFFSETS = {
    "UTC": 0,
    "GMT": 0,
    "Z": 0,
    "WET": 0,
    "WEST": 60,
    "BST": 60,
    "CET": 60,
    "CEST": 120,
    "MET": 60,
    "MEST": 120,
    "EET": 120,
    "EEST": 180,
    "MSK": 180,
    "IST": 330,
    "JST": 540,
    "KST": 540,
    "AEST": 600,
    "AEDT": 660,
    "NZST": 720,
    "NZDT": 780,
    "EST": -300,
    "EDT": -240,
    "CST": -360,
    "CDT": -300,
    "MST": -420,
    "MDT": -360,
    "PST": -480,
    "PDT": -420,
    "AKST": -540,
    "HST": -600,
}
_SHAPE_CACHE_MAX = 20_000


# on_timed(assembler, line) -> False to have the line given as an event instead.
OnTimed = Callable[["_Assembler", Timed], bool]


class _Where(TypedDict):
    at: datetime | None
    line_no: int
    pid: int | None
    database: str | None
    user: str | None
    application: str | None
    client: str | None


_PENDING_MAX = 10_000


def detect_format(sample: bytes, fmt: str | None = None, prefix: str | None = None) -> LogFormat:
    """The format of a log, from a sample of its first bytes, or as given (checked)."""
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"log format: {fmt!r} is not one of {', '.join(FORMATS)}")
    found = formats.detect(sample) if fmt is None else LogFormat(fmt)
    if prefix is not None:
        if found.name not in ("stderr", "rds", "syslog", "logplex"):
            raise InputError(f"--prefix: a {found.name} log has no log_line_prefix")
        return LogFormat(found.name, prefix)
    return found


def parse(
    data: Iterable[bytes | str],
    *,
    fmt: str | None = None,
    prefix: str | None = None,
    keep_params: bool = False,
    year: int | None = None,
    default_tz: tzinfo = UTC,
    on_timed: OnTimed | None = None,
) -> Iterator[AnyEvent]:
    """Events of a log given as pieces (lines or blocks); never raises on bad input.

    ``fmt`` (one of :data:`FORMATS`) and ``prefix`` (the server's ``log_line_prefix``) are detected
    from the first 256 kB when not given. ``keep_params`` keeps parameter values and the statement
    as logged. ``year`` dates syslog lines (which carry none; default: the current year).
    ``default_tz`` is the zone of timestamps that name none or an unknown abbreviation.
    ``on_timed`` (the summary's fast path, see :func:`querywatch.logs.summary.summarize`) takes
    the ``duration: ... statement`` lines of stderr logs raw instead of their Statement events;
    it is ignored with ``keep_params``.
    """
    pieces = (p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in data)
    head: list[bytes] = []
    size = 0
    for piece in pieces:
        head.append(piece)
        size += len(piece)
        if size >= _DETECT_BYTES or not piece:
            break
    found = detect_format(b"".join(head), fmt, prefix)
    if year is None:
        year = datetime.now(UTC).year
    assembler = _Assembler(keep_params, year, default_tz)
    timed = None
    if on_timed is not None and not keep_params:
        assembler.on_timed = on_timed
        timed = partial(on_timed, assembler)
    return assembler.run(formats.entries(chain(head, pieces), found, timed=timed))


class _Assembler:
    """Messages -> events: the parts of one message joined, statements paired with durations."""

    on_timed: OnTimed | None = None

    def __init__(self, keep_params: bool, year: int, default_tz: tzinfo) -> None:
        self.keep_params = keep_params
        self.year = year
        self.default_tz = default_tz
        self.shapes: dict[bytes, tuple[str, str]] = {}
        self.texts: dict[str, tuple[str, str]] = {}  # shape() by the exact text
        self.zones: dict[str | None, tzinfo] = {}
        self.pending: dict[int | None, Entry] = {}  # log_statement text awaiting its log_duration

    def run(self, items: Iterator[Entry | BadLine | None]) -> Iterator[AnyEvent]:
        current: Entry | None = None
        secondary = formats.SECONDARY
        for item in items:
            if item is None:  # a pause in a followed file: give out what is complete
                if current is not None:
                    yield from self.events(current)
                    current = None
                yield from self.drain()
            elif item is formats.CUT:
                if current is not None:
                    yield from self.events(current)
                    current = None
            elif type(item) is BadLine:
                yield Unparsed(
                    at=None, line_no=item.line_no, sample=item.sample, reason=item.reason
                )
            elif type(item) is Entry:
                if item.severity in secondary:
                    if current is not None and (item.pid == current.pid or item.pid is None):
                        _attach(current, item)
                    continue
                if current is not None:
                    yield from self.events(current)
                current = item
        if current is not None:
            yield from self.events(current)
        yield from self.drain()

    def drain(self) -> Iterator[AnyEvent]:
        for entry in list(self.pending.values()):
            yield self.statement(entry, None, _STATEMENT.match(entry.message))
        self.pending.clear()

    def events(self, entry: Entry) -> Iterator[AnyEvent]:
        message = entry.message
        severity = entry.severity
        if severity != "LOG":
            if severity in ("ERROR", "FATAL", "PANIC"):
                yield from self.error(entry)
            return
        if entry.ms is not None:  # stderr: the duration and the statement split by the line regex
            pending = self.pending.pop(entry.pid, None) if self.pending else None
            if pending is not None:
                yield self.statement(pending, None, _STATEMENT.match(pending.message))
            yield self.statement(entry, entry.ms, None)
            return
        if message.startswith("duration: "):
            yield from self.duration(entry)
            return
        pending = self.pending.pop(entry.pid, None) if self.pending else None
        if pending is not None:
            yield self.statement(pending, None, _STATEMENT.match(pending.message))
        head = message[:12]
        if head.startswith(("statement: ", "execute ", "bind ", "parse ")):
            m = _STATEMENT.match(message)
            if m is not None:
                if len(self.pending) >= _PENDING_MAX:
                    yield from self.drain()
                self.pending[entry.pid] = entry
                return
        event = self.other(entry, message)
        if event is not None:
            yield event

    def duration(self, entry: Entry) -> Iterator[AnyEvent]:
        m = _DURATION.match(entry.message)
        if m is None:
            return
        ms = float(m["ms"])
        pending = self.pending.pop(entry.pid, None) if self.pending else None
        if m["phase"] is None:  # log_duration: the statement was logged before (log_statement)
            if pending is not None:
                yield self.statement(pending, ms, _STATEMENT.match(pending.message))
            return
        if pending is not None:
            yield self.statement(pending, None, _STATEMENT.match(pending.message))
        if m["phase"] == "plan":
            plan = self.plan(entry, ms, m["text"])
            if plan is not None:
                yield plan
            return
        yield self.statement(entry, ms, m)

    def statement(self, entry: Entry, ms: float | None, m: re.Match[str] | None) -> Statement:
        text = m["text"] if m is not None else entry.message
        phase = m["phase"] if m is not None else entry.phase or "statement"
        detail = entry.detail
        if detail and detail.startswith("prepare: ") and text[:8].lower() == "execute ":
            # EXECUTE of a prepared statement: pg_stat_statements counts it under the PREPARE
            fingerprint, query = self.shape(detail[9:])
        else:
            fingerprint, query = self.shape(text)
        params: tuple[str, ...] | None = None
        if self.keep_params and entry.detail and entry.detail.startswith("parameters: "):
            params = tuple(v.strip() for v in _PARAM.findall(entry.detail))
        return Statement(
            **self.where(entry),
            duration_ms=ms,
            fingerprint=fingerprint,
            query=query,
            phase=phase,
            params=params,
            text=text if self.keep_params else None,
        )

    def plan(self, entry: Entry, ms: float, body: str) -> Plan | None:
        body = body.strip("\n")
        query = ""
        kind: Literal["text", "json"]
        if body.lstrip().startswith("{"):
            kind = "json"
            try:
                doc = json.loads(body)
                query = str(doc.get("Query Text", "")) if isinstance(doc, dict) else ""
            except ValueError:
                query = ""
        else:
            kind = "text"
            lines = body.split("\n")
            if lines and lines[0].startswith("Query Text: "):
                taken = [lines[0][12:]]
                for line in lines[1:]:
                    if _FIRST_PLAN_LINE.search(line):
                        break
                    taken.append(line)
                query = "\n".join(taken)
        fingerprint, normalized = self.shape(query)
        return Plan(
            **self.where(entry),
            duration_ms=ms,
            fingerprint=fingerprint,
            query=normalized,
            format=kind,
            plan=body,
        )

    def other(self, entry: Entry, message: str) -> AnyEvent | None:
        """A LOG message that is not a statement: lock, temp file, checkpoint, vacuum, sessions."""
        first = message[:1]
        if first == "p" and message.startswith("process "):
            return self.lock(entry, message)
        if first == "t" and message.startswith("temporary file: "):
            m = _TEMP.match(message)
            if m is None:
                return None
            fingerprint, query = self.shape_of_statement(entry)
            return TempFile(
                **self.where(entry),
                path=m["path"],
                size_bytes=int(m["size"]),
                fingerprint=fingerprint,
                query=query,
            )
        if first == "c":
            if message.startswith("checkpoint complete"):
                c = _CHECKPOINT.search(message)
                return Checkpoint(
                    **self.where(entry),
                    buffers=int(b[1]) if (b := _BUFFERS.search(message)) else None,
                    write_ms=float(c["write"]) * 1000 if c else None,
                    sync_ms=float(c["sync"]) * 1000 if c else None,
                    total_ms=float(c["total"]) * 1000 if c else None,
                    detail=message,
                )
            if message.startswith("connection received"):
                return Connection(**self.where(entry), stage="received")
            if message.startswith("connection authorized"):
                return Connection(**self.where(entry), stage="authorized")
        if first == "d" and message.startswith("disconnection: "):
            s = _SESSION.search(message)
            session = (int(s["h"]) * 3600 + int(s["m"]) * 60 + float(s["s"])) * 1000 if s else None
            return Disconnection(**self.where(entry), session_ms=session)
        if first == "a" and message.startswith("automatic "):
            v = _VACUUM.match(message)
            if v is None:
                return None
            e = _ELAPSED.search(message)
            return Autovacuum(
                **self.where(entry),
                action="vacuum" if v["action"] == "vacuum" else "analyze",
                table=v["table"],
                elapsed_ms=float(e["s"]) * 1000 if e else None,
                detail=message,
            )
        return None

    def lock(self, entry: Entry, message: str) -> LockWait | None:
        m = _LOCK.match(message)
        if m is None:
            return None
        holders: tuple[int, ...] = ()
        queue: tuple[int, ...] = ()
        h = _HOLDERS.search(entry.detail or "")
        if h is not None:
            holders = _pids(h["holders"])
            queue = _pids(h["queue"] or "")
        lock = m["lock"]
        r = _RELATION.search(lock) or _CONTEXT_RELATION.search(entry.context or "")
        fingerprint, query = self.shape_of_statement(entry)
        where = self.where(entry)
        where["pid"] = int(m["pid"])
        return LockWait(
            **where,
            mode=m["mode"],
            lock=lock,
            relation=r[1] if r else None,
            wait_ms=float(m["ms"]),
            acquired=m["state"] == "acquired",
            holders=holders,
            queue=queue,
            fingerprint=fingerprint,
            query=query,
        )

    def error(self, entry: Entry) -> Iterator[AnyEvent]:
        fingerprint, query = self.shape_of_statement(entry)
        message = entry.message if self.keep_params else _MESSAGE_VALUES.sub("?", entry.message)
        sqlstate = entry.sqlstate if entry.sqlstate and entry.sqlstate != "00000" else None
        if message.startswith("deadlock detected"):
            sqlstate = sqlstate or "40P01"
            detail = entry.detail or ""
            yield Deadlock(
                **self.where(entry),
                processes=tuple(int(p) for p in _DEADLOCK_PIDS.findall(detail)),
                detail=detail if self.keep_params else _MESSAGE_VALUES.sub("?", detail),
                fingerprint=fingerprint,
                query=query,
            )
        yield Error(
            **self.where(entry),
            severity=entry.severity,
            sqlstate=sqlstate,
            message=message.split("\n", 1)[0],
            fingerprint=fingerprint,
            query=query,
        )

    def shape_of_statement(self, entry: Entry) -> tuple[str | None, str | None]:
        if not entry.statement:
            return None, None
        return self.shape(entry.statement)

    def shape(self, text: str) -> tuple[str, str]:
        """(fingerprint, normalized text), cached by the text with its values masked (and by the
        text itself in front: a text seen again is not masked again)."""
        cached = self.texts.get(text)
        if cached is not None:
            return cached
        key = shape_key(text.encode("utf-8", "surrogateescape"))
        cached = self.shapes.get(key)
        if cached is None:
            found = fp.shape(text)
            cached = (found.fingerprint, found.query)
            if len(self.shapes) >= _SHAPE_CACHE_MAX:
                self.shapes.clear()
                self.texts.clear()  # never a text's shape the shapes no longer hold
            self.shapes[key] = cached
        if len(self.texts) >= _SHAPE_CACHE_MAX:
            self.texts.clear()
        self.texts[text] = cached
        return cached

    def where(self, entry: Entry) -> _Where:
        """Where and when the entry was logged: the fields every event has (records.Event)."""
        return {
            "at": self.at(entry),
            "line_no": entry.line_no,
            "pid": entry.pid,
            "database": entry.database,
            "user": entry.user,
            "application": entry.application,
            "client": entry.client,
        }

    def at(self, entry: Entry) -> datetime | None:
        ts = entry.ts
        if ts is None:
            return None
        zone = self.zones.get(entry.tz)
        if zone is None:
            zone = self.zones[entry.tz] = _zone(entry.tz, self.default_tz)
        try:
            if ts[0] == "@":
                return datetime.fromtimestamp(float(ts[1:]), UTC)
            if ts[0] == "0":
                ts = f"{self.year:04d}{ts[4:]}"
            if zone is UTC:
                return datetime.fromisoformat(ts + "+00:00")
            return datetime.fromisoformat(ts).replace(tzinfo=zone)
        except ValueError:
            return None


def _attach(entry: Entry, part: Entry) -> None:
    kind = part.severity
    if kind == "DETAIL":
        entry.detail = part.message if entry.detail is None else entry.detail + "\n" + part.message
    elif kind == "STATEMENT":
        entry.statement = part.message
    elif kind == "CONTEXT":
        entry.context = part.message
    elif kind == "HINT":
        entry.hint = part.message


def _pids(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.replace(" ", "").split(",") if p.isdigit())


def _zone(name: str | None, default: tzinfo) -> tzinfo:
    if name is None:
        return default
    if name in _TZ_OFFSETS:
        return timezone(timedelta(minutes=_TZ_OFFSETS[name]))
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)?", name)
    if m is None:
        return default
    minutes = int(m[2]) * 60 + int(m[3] or 0)
    return timezone(timedelta(minutes=-minutes if m[1] == "-" else minutes))
