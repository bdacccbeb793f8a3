"""Log formats: raw bytes of a PostgreSQL server log -> :class:`Entry` (one message of the server).

stderr with any ``log_line_prefix`` (detected from the file, or given), csvlog, jsonlog (15+),
syslog, and the cloud carriers: RDS (stderr with ``%t:%r:%u@%d:[%p]:``), Cloud SQL (JSON lines whose
``textPayload`` is a stderr line), CloudNativePG (JSON lines with the jsonlog ``record``) and Heroku
logplex (syslog-like ``app[postgres.PID]: [COLOR] [L-N]`` lines).

A stderr line whose prefix does not match, that is not a continuation (PostgreSQL starts those with a
tab) is given back as a :class:`BadLine`; nothing here raises on bad input.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "BadLine", "Entry", "LogFormat", "compile_prefix", "detect", "entries"]

FORMATS = ("stderr", "csvlog", "jsonlog", "syslog", "rds", "cloudsql", "cnpg", "logplex")
SECONDARY = frozenset({"DETAIL", "HINT", "CONTEXT", "STATEMENT", "QUERY", "LOCATION"})
_SEV = (
    rb"(?P<sev>LOG|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DEBUG[1-5]?"
    rb"|DETAIL|HINT|CONTEXT|STATEMENT|QUERY|LOCATION)"
)
_TS = rb"(?P<ts>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?)"
_TZ = rb"(?:[ ]?(?P<tz>[A-Z]{2,5}(?![A-Za-z])|[+-]\d\d(?::?\d\d)?|Z))?"
# A generic stderr line: a timestamp first, anything, then the severity. The fields of the prefix
# text between them are found by _FIELDS (user=, db=, app=, client=, user@db, [pid]).
# The message, with the duration and statement header of log_min_duration_statement split off.
_MSG = (
    rb":  ?(?:duration: (?P<ms>\d+(?:\.\d+)?) ms  (?P<phase>statement|execute|bind|parse)[^:\n]*: )?"
    rb"(?P<msg>[^\n]*)"
)
_GENERIC = _TS + _TZ + rb"(?P<pre>[^\n]*?)" + _SEV + _MSG
# PostgreSQL starts the next lines of a message with a tab; an editor or a copy may have made
# spaces of it (pgBadger takes any line without a prefix as a continuation).
_CONTINUATION = rb"(?P<more>(?:\n[\t ][^\n]*)*)"


class Entry:
    """One message of the server (primary line with its DETAIL/STATEMENT/... parts). Internal."""

    __slots__ = (
        "application",
        "client",
        "context",
        "database",
        "detail",
        "hint",
        "line_no",
        "message",
        "ms",
        "phase",
        "pid",
        "severity",
        "sqlstate",
        "statement",
        "ts",
        "tz",
        "user",
    )

    def __init__(
        self, line_no: int, ts: str | None, tz: str | None, severity: str, message: str
    ) -> None:
        self.line_no = line_no
        self.ts = ts
        self.tz = tz
        self.severity = severity
        self.message = message
        self.ms: float | None = None  # set: `message` is the statement text of this duration
        self.phase: str | None = None
        self.pid: int | None = None
        self.database: str | None = None
        self.user: str | None = None
        self.application: str | None = None
        self.client: str | None = None
        self.sqlstate: str | None = None
        self.detail: str | None = None
        self.hint: str | None = None
        self.context: str | None = None
        self.statement: str | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a PostgreSQL log line: where, a sample, why."""

    line_no: int
    sample: str
    reason: str


@dataclass(frozen=True, slots=True)
class LogFormat:
    """What :func:`detect` found: the format name and, for stderr-like ones, the line prefix."""

    name: str
    prefix: str | None = None  # the log_line_prefix given or recognized; None: generic


# Common log_line_prefix values, tried in order when detecting; the generic pattern is the fallback.
KNOWN_PREFIXES = (
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: [%l-1] user=%u,db=%d ",
    "%t [%p]: db=%d,user=%u,app=%a,client=%h ",
    "%m [%p] %q%u@%d ",
    "%m [%p] ",
    "%t:%r:%u@%d:[%p]:",
)

_ESCAPES: dict[str, bytes] = {
    "a": rb"(?P<app>[^\n]*?)",
    "u": rb"(?P<user>[^\n]*?)",
    "d": rb"(?P<db>[^\n]*?)",
    "r": rb"(?P<client>[^\n]*?)",
    "h": rb"(?P<client>[^\n]*?)",
    "b": rb"[^\n]*?",
    "p": rb"(?P<pid>\d+)",
    "P": rb"\d*",
    "t": _TS + _TZ,
    "m": _TS + _TZ,
    "n": rb"(?P<epoch>\d+(?:\.\d+)?)",
    "i": rb"[^\n]*?",
    "e": rb"(?P<sqlstate>[0-9A-Z]{5})",
    "c": rb"[0-9a-f.]*",
    "l": rb"\d+",
    "s": rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Z]{2,5}| ?[+-]\d\d(?::?\d\d)?)?",
    "v": rb"[\d/]*",
    "x": rb"\d*",
    "Q": rb"-?\d*",
    "%": rb"%",
}


def compile_prefix(prefix: str) -> bytes:
    """The regex (bytes) of a ``log_line_prefix``: named groups ts, tz, pid, user, db, app, client.

    >>> import re
    >>> m = re.match(compile_prefix("%m [%p] %q%u@%d "), b"2024-01-02 03:04:05.678 UTC [42] bob@shop ")
    >>> m["pid"], m["user"], m["db"]
    (b'42', b'bob', b'shop')
    """
    out: list[bytes] = []
    optional_from: int | None = None
    seen: set[str] = set()
    i = 0
    while i < len(prefix):
        ch = prefix[i]
        if ch != "%" or i + 1 >= len(prefix):
            out.append(re.escape(ch.encode()))
            i += 1
            continue
        j = i + 1
        while j < len(prefix) and (prefix[j] == "-" or prefix[j].isdigit()):
            j += 1  # padding, e.g. %-10u
        esc = prefix[j] if j < len(prefix) else "%"
        i = j + 1
        if esc == "q":
            optional_from = len(out)
            continue
        pattern = _ESCAPES.get(esc, rb"[^\n]*?")
        key = "m" if esc == "t" else "client" if esc in "rh" else esc
        if key in seen:  # a group name may appear once: later ones match without capturing
            pattern = re.sub(rb"\?P<\w+>", b"?:", pattern)
        seen.add(key)
        if esc in "rh" and pattern.startswith(rb"(?P<client>"):
            pattern = rb"(?P<client>[^\n]*?)" if esc == "r" else pattern
        out.append(pattern)
    if optional_from is not None:
        out[optional_from:] = [rb"(?:" + b"".join(out[optional_from:]) + rb")?"]
    return b"".join(out).replace(rb"\ ", rb" ")


def _line_regex(prefix: str | None) -> re.Pattern[bytes]:
    head = _GENERIC if prefix is None else compile_prefix(prefix) + _SEV + _MSG
    return re.compile(rb"^" + head + _CONTINUATION, re.MULTILINE)


_FIELDS = re.compile(
    rb"(?:\b(?:user|usr)=(?P<user>[^,\s]*))"
    rb"|(?:\b(?:db|database)=(?P<db>[^,\s]*))"
    rb"|(?:\b(?:app|appli|application|application_name)=(?P<app>[^,]*?)(?=,|\s*$|\s+\w+=))"
    rb"|(?:\b(?:client|host|remote)=(?P<client>[^,\s]*))"
    rb"|(?:(?:\[|\bpid=)(?P<pid>\d+)\]?)"
    rb"|(?:(?<![\w\[])(?P<ua>[\w.\-\[\]]*)@(?P<da>[\w.\-\[\]]*))"
)
_SQLSTATE = re.compile(rb"(?:sql_error_code = |\b)(?P<code>[0-9A-Z]{5})\b")


def _fill_generic(entry: Entry, pre: bytes) -> None:
    """Fields of a prefix found by keyword (user=, db=...), ``user@db`` and ``[pid]``."""
    for m in _FIELDS.finditer(pre):
        group = m.lastgroup
        if group == "ua":
            if entry.user is None:
                entry.user = _field(m["ua"])
                entry.database = _field(m["da"])
            continue
        value = m[group] if group else None
        if value is None:
            continue
        if group == "pid":
            if entry.pid is None:
                entry.pid = int(value)
        elif group == "user":
            entry.user = _field(value)
        elif group == "db":
            entry.database = _field(value)
        elif group == "app":
            entry.application = _field(value)
        elif group == "client":
            entry.client = _field(value)
    if entry.pid is None:
        lead = re.match(rb"\s*:?(\d+)\b", pre)
        if lead:
            entry.pid = int(lead[1])


def _field(value: bytes) -> str | None:
    if not value or value == b"[unknown]":
        return None
    return value.decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# --- detection ---------------------------------------------------------------------------------


def detect(sample: bytes) -> LogFormat:
    """The format of a log from its first bytes (a few hundred lines are enough)."""
    lines = [ln for ln in sample.split(b"\n")[:400] if ln.strip()]
    if not lines:
        return LogFormat("stderr")
    first = lines[0].lstrip()
    if first.startswith(b"{"):
        if b'"textPayload"' in first or b'"insertId"' in first:
            return LogFormat("cloudsql")
        if b'"record"' in first and b'"logger"' in first:
            return LogFormat("cnpg")
        return LogFormat("jsonlog")
    if re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* app\[postgres", first) or re.match(
        rb"\d+ <\d+>\d+ \S+ \S+ app postgres", first
    ):
        return LogFormat("logplex")
    if re.match(rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ \S+\[\d+\]: \[\d+-\d+\]", first):
        return LogFormat("syslog")
    csv_like = sum(1 for ln in lines if _CSV_START.match(ln))
    if csv_like >= max(1, len(lines) // 2):
        return LogFormat("csvlog")
    return LogFormat("stderr", _detect_prefix(lines))


_CSV_START = re.compile(rb'"?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [A-Z+\-\d:]+"?,')


def _detect_prefix(lines: list[bytes]) -> str | None:
    """The first known log_line_prefix matching every line the generic pattern matches."""
    generic = re.compile(_GENERIC)
    wanted = [ln for ln in lines if generic.match(ln)]
    if not wanted:
        return None
    for prefix in KNOWN_PREFIXES:
        rx = re.compile(compile_prefix(prefix) + _SEV + rb":  ")
        if all(rx.match(ln) for ln in wanted):
            return prefix
    return None


# --- entries -----------------------------------------------------------------------------------


# A stderr duration line handed over raw: the line number of its block's start, the match (its
# line number is counted from it when wanted, see line_of), the duration, the phase, the statement
# text (continuation lines joined), the timestamp and its zone. Internal to the parser.
Timed = tuple[int, "re.Match[bytes]", float, bytes, bytes, bytes, bytes | None]
# Given out before a Timed line taken by `timed` when entries came before it: the message they
# belong to is over (its DETAIL/STATEMENT lines would come first).
CUT = BadLine(0, "", "")


def entries(
    chunks: Iterable[bytes], fmt: LogFormat, *, timed: Callable[[Timed], bool] | None = None
) -> Iterator[Entry | BadLine | None]:
    """Entries of the log in order; None after each chunk that ended a burst (an empty chunk).

    ``timed``: stderr ``duration: ... statement|execute|bind|parse: ...`` lines are offered to it
    as :data:`Timed` tuples first (the summary's fast path, no object per line); it returns False
    for a line it does not take, which then comes as an entry.
    """
    if fmt.name in ("stderr", "rds"):
        return _stderr(chunks, fmt.prefix, timed)
    if fmt.name == "csvlog":
        return _csvlog(_lines(chunks))
    if fmt.name in ("jsonlog", "cnpg", "cloudsql"):
        return _jsonlines(_lines(chunks), fmt.name)
    return _syslog(_lines(chunks), fmt)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    """Whole lines (without the newline) of the chunks; None where an empty chunk was given."""
    rest = b""
    for chunk in chunks:
        if not chunk:
            if rest:
                yield rest
                rest = b""
            yield None
            continue
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        yield from data[:cut].split(b"\n")
    if rest:
        yield rest


def _stderr(
    chunks: Iterable[bytes], prefix: str | None, timed: Callable[[Timed], bool] | None
) -> Iterator[Entry | BadLine | None]:
    rx = _line_regex(prefix)
    generic = prefix is None
    pending = b""
    line_no = 1  # of the first line of `pending`
    chunk_iter = iter(chunks)
    done = False
    while not done:
        chunk = next(chunk_iter, None)
        flush = not chunk
        if chunk is None:
            done = True
        elif chunk:
            pending += chunk
            # Keep back the last message: its continuation lines (a tab or a space after a
            # newline) may be in the next piece, so cut before the last line start seen.
            cut = pending.rfind(b"\n", 0, len(pending) - 1)
            while cut >= 0 and pending[cut + 1 : cut + 2] in (b"\t", b" "):
                cut = pending.rfind(b"\n", 0, cut)
            if cut < 0:
                continue
        if not pending:
            if flush and not done:
                yield None
            continue
        data, pending = (pending, b"") if flush else (pending[: cut + 1], pending[cut + 1 :])
        yield from _stderr_block(data, rx, generic, line_no, timed)
        line_no += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if flush and not done:
            yield None


def _stderr_block(
    data: bytes,
    rx: re.Pattern[bytes],
    generic: bool,
    line_no: int,
    timed: Callable[[Timed], bool] | None = None,
) -> Iterator[Entry | BadLine]:
    pos = 0
    counted = 0  # data[:counted] holds line_no - first newlines
    first = line_no
    index = rx.groupindex  # groups by number: no name looked up per line
    numbers = tuple(index[n] for n in ("ts", "tz", "sev", "msg", "more", "ms", "phase"))
    fields = ("pid", "user", "db", "app", "client", "sqlstate", "epoch")
    named = tuple(n for n in fields if n in index)
    strings = _STRINGS
    secondary = _SECONDARY_BYTES
    after_entry = True  # False after a line `timed` took: its DETAIL lines are skipped
    for m in rx.finditer(data):
        start, end = m.span()
        if start > pos:
            yield from _bad_lines(data, pos, start, first + data.count(b"\n", 0, pos))
        pos = end + 1
        ts, tz, sev, msg, more, ms, phase = m.group(*numbers)
        if more:
            msg += more.replace(b"\n\t", b"\n")
        if timed is not None:
            if ms is not None and sev == b"LOG":
                if after_entry:
                    yield CUT
                    after_entry = False
                if timed((first, m, float(ms), phase, msg, ts, tz)):
                    continue
            elif not after_entry and sev in secondary:
                continue
        line_no += data.count(b"\n", counted, start)
        counted = start
        stamp = ts.decode() if ts is not None else None
        entry = Entry(
            line_no, stamp, _cached(strings, tz), _cached(strings, sev) or "LOG", _text(msg)
        )
        if ms is not None and sev == b"LOG":
            entry.ms = float(ms)
            entry.phase = _cached(strings, phase)
        elif ms is not None:  # not a LOG line: the duration header stays in its message
            entry.message = _text(data[m.start("ms") - 10 : m.start("msg")]) + entry.message
        fill(entry, m, generic, named)
        after_entry = True
        yield entry
    if pos < len(data):
        yield from _bad_lines(data, pos, len(data), first + data.count(b"\n", 0, pos))


_SECONDARY_BYTES = frozenset(k.encode() for k in SECONDARY)
SECONDARY_BYTES = _SECONDARY_BYTES
line_regex = _line_regex  # the regex of a stderr message (its prefix, severity, text, next lines)


def fill(entry: Entry, m: re.Match[bytes], generic: bool, named: tuple[str, ...]) -> None:
    """The prefix fields of a stderr line's match into its entry."""
    if generic:
        _fill_generic(entry, m["pre"])
    elif named:
        _fill_named(entry, _groups(m, named))


def entry_of(line: Timed) -> Entry:
    """The entry of a :data:`Timed` line (built only when an event is wanted of it)."""
    first, m, ms, phase, text, ts, tz = line
    data, start = m.string, m.start()
    block, offset, before = _COUNTED[0]
    if block is data and start >= offset:  # the same block further on: count from there
        newlines = before + data.count(b"\n", offset, start)
    else:
        newlines = data.count(b"\n", 0, start)
    _COUNTED[0] = (data, start, newlines)  # one tuple: read and written whole (threads)
    line_no = first + newlines
    stamp = ts.decode() if ts is not None else None
    entry = Entry(line_no, stamp, _cached(_STRINGS, tz), "LOG", _text(text))
    entry.ms = ms
    entry.phase = _cached(_STRINGS, phase)
    fields = ("pid", "user", "db", "app", "client", "sqlstate", "epoch")
    fill(entry, m, "pre" in m.re.groupindex, tuple(n for n in fields if n in m.re.groupindex))
    return entry


_STRINGS: dict[bytes | None, str | None] = {None: None}
# entry_of's last count: (block, offset, newlines before it). The slowest lines of a block are
# counted on from the previous one, not each from the block's start (a 1 MB scan each).
_COUNTED: list[tuple[Any, int, int]] = [(None, 0, 0)]


def _cached(cache: dict[bytes | None, str | None], raw: bytes | None) -> str | None:
    """Decoded text of a prefix field, cached (users, databases, applications repeat)."""
    try:
        return cache[raw]
    except KeyError:
        if len(cache) > 50_000:
            cache.clear()
            cache[None] = None
        value = cache[raw] = _field(raw) if raw is not None else None
        return value


def _str(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _groups(m: re.Match[bytes], names: tuple[str, ...]) -> dict[str, bytes | None]:
    if len(names) == 1:
        return {names[0]: m[names[0]]}
    return dict(zip(names, m.group(*names), strict=True))


def _fill_named(entry: Entry, groups: dict[str, bytes | None]) -> None:
    strings = _STRINGS
    for name, raw in groups.items():
        if name == "pid":
            entry.pid = int(raw) if raw else None
        elif name == "user":
            entry.user = _cached(strings, raw)
        elif name == "db":
            entry.database = _cached(strings, raw)
        elif name == "app":
            entry.application = _cached(strings, raw)
        elif name == "client":
            entry.client = _cached(strings, raw)
        elif name == "sqlstate" and raw:
            entry.sqlstate = raw.decode()
        elif name == "epoch" and raw and entry.ts is None:
            entry.ts = "@" + raw.decode()


def _bad_lines(data: bytes, start: int, end: int, line_no: int) -> Iterator[BadLine]:
    for offset, line in enumerate(data[start:end].split(b"\n")):
        if line.strip(b"\r\n\t \x00"):
            yield BadLine(line_no + offset, _text(line[:200]), "not a PostgreSQL log line")


def _csvlog(lines: Iterable[bytes | None]) -> Iterator[Entry | BadLine | None]:
    """csvlog: one record per row (a row may span lines), columns as PostgreSQL documents them."""
    line_no = 0
    buffer: list[str] = []
    start = 1
    for raw in lines:
        if raw is None:
            yield None
            continue
        line_no += 1
        if not buffer:
            start = line_no
        buffer.append(raw.decode("utf-8", "replace"))
        text = "\n".join(buffer)
        if text.count('"') % 2 and len(buffer) < 10_000:  # an open quoted field: the row goes on
            continue
        buffer = []
        try:
            row = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration):
            row = []
        if len(row) < 14:
            if text.strip():
                yield BadLine(start, text[:200], "not a csvlog row")
            continue
        yield _csv_entry(row, start)
    if buffer:
        yield BadLine(start, "\n".join(buffer)[:200], "truncated csvlog row")


def _csv_entry(row: list[str], line_no: int) -> Entry:
    ts, _, tz = row[0].rpartition(" ")
    if not ts:
        ts, tz = row[0], ""
    entry = Entry(line_no, ts, tz or None, row[11], row[13])
    entry.user = row[1] or None
    entry.database = row[2] or None
    entry.pid = int(row[3]) if row[3].isdigit() else None
    entry.client = row[4] or None
    entry.sqlstate = row[12] or None
    entry.detail = _col(row, 14)
    entry.hint = _col(row, 15)
    entry.context = _col(row, 18)
    entry.statement = _col(row, 19)
    entry.application = _col(row, 22)
    return entry


def _col(row: list[str], index: int) -> str | None:
    return row[index] or None if index < len(row) else None


def _jsonlines(lines: Iterable[bytes | None], name: str) -> Iterator[Entry | BadLine | None]:
    text_rx = _line_regex(None)
    last: Entry | None = None
    for line_no, raw in enumerate(lines, 1):
        if raw is None:
            yield None
            continue
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            yield BadLine(line_no, _text(raw[:200]), f"not a {name} JSON line")
            continue
        if not isinstance(obj, dict):
            yield BadLine(line_no, _text(raw[:200]), f"not a {name} record")
            continue
        if name == "cnpg" and obj.get("logger") != "postgres":
            continue  # the operator's own messages (wal-archive, instance manager...)
        payload = obj.get("textPayload") if name == "cloudsql" else None
        if isinstance(payload, str) and payload.startswith(("\t", " ")) and last is not None:
            last.message += "\n" + payload[1:]  # Cloud SQL: one record per line of a message
            continue
        entry = _json_entry(obj, name, line_no, text_rx)
        if entry is None:
            yield BadLine(line_no, _text(raw[:200]), f"not a {name} record")
            continue
        last = entry
        yield entry


def _json_entry(
    obj: dict[str, object], name: str, line_no: int, text_rx: re.Pattern[bytes]
) -> Entry | None:
    if name == "cloudsql":
        payload = obj.get("textPayload")
        stamp = obj.get("timestamp")
        if not isinstance(payload, str) or not isinstance(stamp, str):
            return None
        m = re.match(rb"(?P<pre>[^\n]*?)" + _SEV + rb":  ?(?P<msg>.*)", payload.encode(), re.DOTALL)
        if m is None:
            return None
        entry = Entry(
            line_no, stamp.rstrip("Z").replace("T", " "), "UTC", m["sev"].decode(), _text(m["msg"])
        )
        _fill_generic(entry, m["pre"])
        return entry
    record = obj.get("record") if name == "cnpg" else obj
    if name == "cnpg" and record is None and isinstance(obj.get("msg"), str):
        return _text_entry(str(obj["msg"]).encode("utf-8", "replace"), line_no, text_rx)
    if not isinstance(record, dict) or "message" not in record:
        return None
    get = record.get
    stamp = str(get("timestamp") or get("log_time") or "")
    ts, _, tz = stamp.rpartition(" ")
    entry = Entry(
        line_no,
        ts or stamp or None,
        tz or None,
        str(get("error_severity", "LOG")),
        str(get("message")),
    )
    pid = get("pid", get("process_id"))
    entry.pid = (
        int(pid) if isinstance(pid, int) or (isinstance(pid, str) and pid.isdigit()) else None
    )
    entry.user = _opt(get("user", get("user_name")))
    entry.database = _opt(get("dbname", get("database_name")))
    entry.application = _opt(get("application_name"))
    host = get("remote_host", get("connection_from"))
    port = get("remote_port")
    entry.client = _opt(f"{host}:{port}" if host and port else host)
    entry.sqlstate = _opt(get("state_code", get("sql_state_code")))
    entry.detail = _opt(get("detail"))
    entry.hint = _opt(get("hint"))
    entry.context = _opt(get("context"))
    entry.statement = _opt(get("statement", get("query")))
    return entry


def _text_entry(raw: bytes, line_no: int, text_rx: re.Pattern[bytes]) -> Entry | None:
    """The entry of one stderr line carried in another format (CloudNativePG's early lines)."""
    m = text_rx.match(raw)
    if m is None:
        return None
    ts, tz, sev, msg, ms, phase = m.group("ts", "tz", "sev", "msg", "ms", "phase")
    entry = Entry(line_no, _str(ts), _str(tz), sev.decode(), _text(msg))
    if ms is not None and sev == b"LOG":
        entry.ms = float(ms)
        entry.phase = phase.decode()
    elif ms is not None:
        entry.message = _text(raw[m.start("ms") - 10 : m.start("msg")]) + entry.message
    _fill_generic(entry, m["pre"])
    return entry


def _opt(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


_SYSLOG = re.compile(
    rb"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) \S+ \S+\[(?P<pid>\d+)\]: "
    rb"(?:\[(?P<n>\d+)-(?P<k>\d+)\] ?)?(?P<body>.*)$"
)
_LOGPLEX = re.compile(
    rb"^(?:\d+ <\d+>\d+ )?(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(?P<tz>[+-]\d\d:\d\d|Z)? (?:\S+ )?"
    rb"app(?:\[| )postgres[.\[](?P<pid>\d+)\]?:? (?:- )?(?:\[\w+\] )?\[(?P<n>\d+)-(?P<k>\d+)\] ?(?P<body>.*)$"
)
_OTHER_PROGRAM = re.compile(rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ [^\s\[]+(?:\[\d+\])?: ")
_MONTHS = {
    m: i
    for i, m in enumerate(
        (
            b"Jan",
            b"Feb",
            b"Mar",
            b"Apr",
            b"May",
            b"Jun",
            b"Jul",
            b"Aug",
            b"Sep",
            b"Oct",
            b"Nov",
            b"Dec",
        ),
        1,
    )
}


_SYSLOG_OPEN_LINES = 1_000  # a message still open this many lines after its start is given out


def _syslog(lines: Iterable[bytes | None], fmt: LogFormat) -> Iterator[Entry | BadLine | None]:
    """syslog and logplex: a header per line; ``[n-k]`` with k > 1 continues message n.

    Messages of several processes interleave: each process's message is held, its parts (k > 1,
    DETAIL, STATEMENT...) joined to it by (pid, n), and given out when that process starts its
    next message, or 1,000 lines later, or at a pause or the end.
    """
    header = _LOGPLEX if fmt.name == "logplex" else _SYSLOG
    body_rx = re.compile(
        (compile_prefix(fmt.prefix) if fmt.prefix else rb"(?P<pre>[^\n]*?)")
        + rb"(?:sql_error_code = (?P<code>[0-9A-Z]{5}) )?"
        + _SEV
        + rb":  ?(?P<msg>.*)"
    )
    # the open message of each process: (entry, its n, the line it started at), oldest first
    held: dict[int, tuple[Entry, bytes | None, int]] = {}
    part: dict[int, str | None] = {}  # which part of it the next continuation line extends
    for line_no, raw in enumerate(lines, 1):
        if raw is None:
            yield from _given_out(held, part)
            yield None
            continue
        while held:  # the oldest message, still open long after it started: over
            pid, (entry, _, start) = next(iter(held.items()))
            if line_no - start <= _SYSLOG_OPEN_LINES:
                break
            del held[pid]
            yield entry
        m = header.match(raw)
        if m is None:
            if _OTHER_PROGRAM.match(raw):
                continue  # another program's line in the same syslog file
            if raw.strip():
                yield BadLine(line_no, _text(raw[:200]), f"not a {fmt.name} line")
            continue
        pid = int(m["pid"])
        body = m["body"]
        n = m["n"]
        tab = body.startswith((b"#011", b"\t"))
        b = None if tab and n is not None else body_rx.match(body)
        open_ = held.get(pid)
        if open_ is not None and n is not None and open_[1] != n:
            open_ = None  # a part of an earlier message of the process, given out already
        if b is None:
            if n is None:
                continue  # another program's line (no sequence number, no severity)
            if open_ is not None:
                text = body[4:] if body.startswith(b"#011") else body[1:] if tab else body
                _extend(open_[0], part.get(pid), _text(text.replace(b"#011", b"\t")))
            elif body.strip():
                yield BadLine(line_no, _text(raw[:200]), "continuation of an unknown message")
            continue
        sev = b["sev"]
        msg = _text(b["msg"].replace(b"#011", b"\t"))
        if sev in _SECONDARY_BYTES and open_ is not None:
            # DETAIL, STATEMENT...: a part of the process's open message
            name = _PARTS.get(sev)
            part[pid] = name or "-"
            if name is not None:
                before = getattr(open_[0], name)
                setattr(open_[0], name, msg if before is None else before + "\n" + msg)
            continue
        if fmt.name == "logplex":
            ts, tz = _text(m["ts"]).replace("T", " "), _str(m["tz"])
        else:
            ts, tz = _syslog_ts(m["ts"]), None
        entry = Entry(line_no, ts, tz, sev.decode(), msg)
        if fmt.prefix:
            fields = ("pid", "user", "db", "app", "client", "sqlstate", "epoch")
            _fill_named(entry, _groups(b, tuple(n for n in fields if n in b.re.groupindex)))
        else:
            _fill_generic(entry, b["pre"])
        entry.pid = pid
        if b["code"]:
            entry.sqlstate = b["code"].decode()
        before_entry = held.pop(pid, None)
        if before_entry is not None:
            yield before_entry[0]  # the process's previous message is over
        if len(held) > 4096:
            yield from _given_out(held, part)
        held[pid] = (entry, n, line_no)
        part[pid] = None
    yield from _given_out(held, part)


def _given_out(
    held: dict[int, tuple[Entry, bytes | None, int]], part: dict[int, str | None]
) -> Iterator[Entry]:
    """Every held message, in the order they started; none held after."""
    entries = [entry for entry, _, _ in held.values()]
    held.clear()
    part.clear()
    yield from entries


_PARTS = {b"DETAIL": "detail", b"HINT": "hint", b"CONTEXT": "context", b"STATEMENT": "statement"}


def _extend(entry: Entry, name: str | None, text: str) -> None:
    """A continuation line: it extends the message's text, or its last DETAIL/STATEMENT... part."""
    if name is None:
        entry.message += "\n" + text
    elif name != "-":
        before = getattr(entry, name)
        setattr(entry, name, text if before is None else before + "\n" + text)


def _syslog_ts(raw: bytes) -> str:
    month = _MONTHS.get(raw[:3], 1)
    day = int(raw[4:6])
    return f"0000-{month:02d}-{day:02d} {raw[7:15].decode()}"
