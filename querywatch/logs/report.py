"""Pure: the report of a server log in text, JSON and HTML.

:class:`Report` holds what is shown (built from the parser's summary by
:func:`querywatch.logs.commands.build_report`): top statements by time and by count, the slowest
executions with their plans, lock waits and deadlocks, temp files, errors by SQLSTATE, per-hour
histograms and the unparsed lines with samples. Each renderer takes the same record, so the
three formats always agree. ``anonymize`` masks literals (quoted strings, and numbers compared in
plans and messages) in everything shown.

>>> anonymize("WHERE email = 'a@b.c' AND id > 42")
"WHERE email = '?' AND id > ?"
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

_STRING = re.compile(r"E?'(?:[^']|'')*'")
# a number compared (``id = 42``, ``x > 7``, ``IN (1, 2)``, ``Key (id)=(42)``), not a plan's
# figures (``cost=0.00..1.10 rows=6``: no space before their ``=``)
_COMPARED_NUMBER = re.compile(
    r"((?:\s(?:=|<>|!=|<=|>=|<|>)\s*|\bIN \(\s*|,\s*|\)=\())-?\d+(?:\.\d+)?\b"
)
_BARE_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?![\w.])")


def anonymize(text: str) -> str:
    """Quoted strings become '?', numbers compared (``= 42``, ``> 7``, ``IN (1, 2)``) ``?``."""
    text = _STRING.sub("'?'", text)
    return _COMPARED_NUMBER.sub(lambda m: m.group(1) + "?", text)


def anonymize_query(text: str) -> str:
    """A statement's literals masked: strings and every number outside identifiers and $n."""
    return _BARE_NUMBER.sub("?", _STRING.sub("'?'", text))


@dataclass(frozen=True)
class StatementRow:
    fingerprint: str
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    max_ms: float
    share: float  # of all the statement time of the log


@dataclass(frozen=True)
class Execution:
    """One slow execution; ``plan`` is auto_explain's when the log has it (its format in
    ``plan_format``), ``explain`` an EXPLAIN of the logged values (``--keep-params --dsn``)."""

    at: str | None
    duration_ms: float
    fingerprint: str
    query: str
    database: str | None = None
    user: str | None = None
    pid: int | None = None
    params: tuple[str, ...] | None = None
    text: str | None = None
    plan: str | None = None
    plan_format: str | None = None
    explain: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LockWaitRow:
    at: str | None
    pid: int | None
    mode: str
    lock: str
    relation: str | None
    wait_ms: float
    acquired: bool
    holders: tuple[int, ...]
    query: str | None


@dataclass(frozen=True)
class DeadlockRow:
    at: str | None
    processes: tuple[int, ...]
    detail: str
    query: str | None


@dataclass(frozen=True)
class TempFileRow:
    """Temp files of one statement (fingerprint None: the log named no statement)."""

    fingerprint: str | None
    query: str | None
    count: int
    total_bytes: int
    max_bytes: int


@dataclass(frozen=True)
class ErrorRow:
    severity: str
    sqlstate: str | None
    message: str
    count: int
    query: str | None = None


@dataclass(frozen=True)
class HourRow:
    hour: str  # ISO 8601, the hour's start
    statements: int = 0
    total_ms: float = 0.0
    errors: int = 0
    temp_files: int = 0
    temp_bytes: int = 0
    lock_waits: int = 0
    connections: int = 0


@dataclass(frozen=True)
class UnparsedSample:
    line_no: int
    reason: str
    sample: str


@dataclass(frozen=True)
class Report:
    files: tuple[str, ...]
    first: str | None = None
    last: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    top_by_time: tuple[StatementRow, ...] = ()
    top_by_count: tuple[StatementRow, ...] = ()
    slowest: tuple[Execution, ...] = ()
    plans: tuple[Execution, ...] = ()  # the slowest executions that have an auto_explain plan
    lock_waits: tuple[LockWaitRow, ...] = ()
    deadlocks: tuple[DeadlockRow, ...] = ()
    temp_files: tuple[TempFileRow, ...] = ()
    errors: tuple[ErrorRow, ...] = ()
    hours: tuple[HourRow, ...] = ()
    unparsed: int = 0
    unparsed_samples: tuple[UnparsedSample, ...] = ()
    loaded: Mapping[str, Any] | None = None  # what --store wrote
    notes: tuple[str, ...] = ()

    def anonymized(self) -> Report:
        """The same report with literals masked everywhere they can appear."""
        a, q = anonymize, anonymize_query

        def opt(f: Callable[[str], str], v: str | None) -> str | None:
            return None if v is None else f(v)

        return replace(
            self,
            top_by_time=tuple(replace(s, query=q(s.query)) for s in self.top_by_time),
            top_by_count=tuple(replace(s, query=q(s.query)) for s in self.top_by_count),
            slowest=tuple(_anonymized_execution(e) for e in self.slowest),
            plans=tuple(_anonymized_execution(e) for e in self.plans),
            lock_waits=tuple(replace(w, query=opt(q, w.query)) for w in self.lock_waits),
            deadlocks=tuple(
                replace(d, detail=a(d.detail), query=opt(q, d.query)) for d in self.deadlocks
            ),
            temp_files=tuple(replace(t, query=opt(q, t.query)) for t in self.temp_files),
            errors=tuple(
                replace(e, message=a(e.message), query=opt(q, e.query)) for e in self.errors
            ),
            unparsed_samples=tuple(replace(u, sample=a(u.sample)) for u in self.unparsed_samples),
        )


def _anonymized_execution(e: Execution) -> Execution:
    return replace(
        e,
        query=anonymize_query(e.query),
        params=tuple("?" for _ in e.params) if e.params is not None else None,
        text=None if e.text is None else anonymize_query(e.text),
        plan=None if e.plan is None else anonymize(e.plan),
        explain=_anonymized_doc(e.explain) if e.explain is not None else None,
    )


def _anonymized_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    text = json.dumps(doc)
    return dict(json.loads(_STRING_IN_JSON.sub(lambda m: _mask_json_string(m.group(0)), text)))


_STRING_IN_JSON = re.compile(r'"(?:[^"\\]|\\.)*"')


def _mask_json_string(s: str) -> str:
    inner = json.loads(s)
    masked = anonymize(inner)
    return json.dumps(masked) if masked != inner else s


# -- JSON ------------------------------------------------------------------------------------------
def to_json(report: Report) -> dict[str, Any]:
    """The report as one JSON object (the contract of ``logs --format json``)."""
    return {
        "files": list(report.files),
        "period": {"first": report.first, "last": report.last},
        "counts": dict(report.counts),
        "top_by_time": [_plain(s) for s in report.top_by_time],
        "top_by_count": [_plain(s) for s in report.top_by_count],
        "slowest": [_plain(e) for e in report.slowest],
        "plans": [_plain(e) for e in report.plans],
        "lock_waits": [_plain(w) for w in report.lock_waits],
        "deadlocks": [_plain(d) for d in report.deadlocks],
        "temp_files": [_plain(t) for t in report.temp_files],
        "errors": [_plain(e) for e in report.errors],
        "hours": [_plain(h) for h in report.hours],
        "unparsed": {
            "count": report.unparsed,
            "samples": [_plain(u) for u in report.unparsed_samples],
        },
        "loaded": dict(report.loaded) if report.loaded is not None else None,
        "notes": list(report.notes),
    }


def _plain(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in record.__dataclass_fields__:
        value = getattr(record, key)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, float):
            value = round(value, 3)
        out[key] = value
    return out


# -- text ------------------------------------------------------------------------------------------
def to_text(report: Report, width: int = 100) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"server log report: {', '.join(report.files)}")
    if report.first:
        add(f"from {report.first} to {report.last}")
    add("  ".join(f"{label} {v:,}" for label, v in shown_counts(report)) or "no events")
    for title, rows in (
        ("top statements by total time", report.top_by_time),
        ("top statements by count", report.top_by_count),
    ):
        if rows:
            add("")
            add(title)
            add(
                f"{'#':>3} {'calls':>9} {'total ms':>12} {'mean ms':>10} {'max ms':>10} {'share':>6}  query"
            )
            for i, s in enumerate(rows, 1):
                add(
                    f"{i:>3} {s.calls:>9,} {s.total_ms:>12,.1f} {s.mean_ms:>10,.2f} "
                    f"{s.max_ms:>10,.1f} {s.share:>6.1%}  {_one_line(s.query, width - 56)}"
                )
    for title, executions in (
        ("slowest executions", report.slowest),
        ("slowest executions with an auto_explain plan", report.plans),
    ):
        if executions:
            add("")
            add(title)
            for e in executions:
                lines.extend(_execution_lines(e, width))
    if report.lock_waits:
        add("")
        add("lock waits")
        for w in report.lock_waits:
            state = "acquired" if w.acquired else "still waiting"
            rel = f" ({w.relation})" if w.relation else ""
            holders = ", ".join(str(p) for p in w.holders) or "?"
            add(
                f"  {w.at} process {w.pid} {state} for {w.mode} on {w.lock}{rel} after "
                f"{w.wait_ms:,.0f} ms, held by {holders}: {_one_line(w.query or '', width - 40)}"
            )
    if report.deadlocks:
        add("")
        add("deadlocks")
        for d in report.deadlocks:
            procs = ", ".join(str(p) for p in d.processes)
            add(f"  {d.at} processes {procs}: {_one_line(d.query or '', width - 40)}")
            lines.extend("    " + line for line in d.detail.splitlines()[:6])
    if report.temp_files:
        add("")
        add("temp files")
        for t in report.temp_files:
            add(
                f"  {t.count:>6,} files {human_bytes(t.total_bytes):>10} (largest "
                f"{human_bytes(t.max_bytes)}): {_one_line(t.query or '(no statement logged)', width - 50)}"
            )
    if report.errors:
        add("")
        add("errors")
        for r in report.errors:
            message = _one_line(r.message, width - 20)
            add(f"  {r.count:>6,} {r.severity} {r.sqlstate or '-----'} {message}")
    if report.hours:
        add("")
        add("per hour")
        peak = max((h.statements for h in report.hours), default=0) or 1
        for h in report.hours:
            bar = "#" * round(30 * h.statements / peak)
            add(
                f"  {h.hour[:13]}h {h.statements:>9,} stmts {h.total_ms:>12,.0f} ms "
                f"{h.errors:>5} err {h.temp_files:>5} tmp {h.lock_waits:>5} lock  {bar}"
            )
    add("")
    add(f"unparsed lines: {report.unparsed:,}")
    for u in report.unparsed_samples:
        add(f"  line {u.line_no} ({u.reason}): {_one_line(u.sample, width - 20)}")
    if report.loaded is not None:
        add("")
        add("loaded into the store: " + ", ".join(f"{k} {v}" for k, v in report.loaded.items()))
    for note in report.notes:
        add(f"note: {note}")
    return "\n".join(lines)


def _execution_lines(e: Execution, width: int) -> list[str]:
    who = "@".join(x for x in (e.user, e.database) if x)
    out = [f"  {e.duration_ms:,.1f} ms at {e.at} [{e.pid}] {who}: {_one_line(e.query, width)}"]
    if e.params:
        out.append(f"    parameters: {', '.join(e.params)}")
    if e.plan:
        out.append(f"    plan ({e.plan_format}, auto_explain):")
        out.extend("      " + line for line in e.plan.splitlines()[:40])
    if e.explain is not None:
        out.append("    EXPLAIN with the logged values:")
        out.extend("      " + line for line in plan_lines(e.explain)[:40])
    return out


# The counts a person reads first (the JSON keeps every count the summary has).
_SHOWN = (
    ("executions", "executions"),
    ("plans", "plans"),
    ("lock_waits", "lock waits"),
    ("deadlocks", "deadlocks"),
    ("temp_files", "temp files"),
    ("errors", "errors"),
    ("connection_messages", "connection lines"),
    ("checkpoints", "checkpoints"),
    ("autovacuums", "autovacuum runs"),
)


def shown_counts(report: Report) -> list[tuple[str, int]]:
    """The headline counts, in reading order, the zero ones left out, unparsed lines last."""
    counts = report.counts
    out = [(label, int(counts[key])) for key, label in _SHOWN if counts.get(key)]
    if report.unparsed:
        out.append(("unparsed lines", report.unparsed))
    return out


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    width = max(width, 20)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def human_bytes(n: float) -> str:
    """
    >>> human_bytes(1_400_000), human_bytes(512)
    ('1.3 MiB', '512 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def plan_lines(doc: Mapping[str, Any]) -> list[str]:
    """An EXPLAIN JSON document as indented node lines (node, relation, cost, rows)."""
    out: list[str] = []

    def walk(node: Mapping[str, Any], depth: int) -> None:
        name = str(node.get("Node Type", "?"))
        if "Index Name" in node:
            name += f" using {node['Index Name']}"
        if "Relation Name" in node:
            name += f" on {node['Relation Name']}"
        cost = node.get("Total Cost")
        rows = node.get("Plan Rows")
        out.append("  " * depth + ("-> " if depth else "") + f"{name}  (cost={cost} rows={rows})")
        for key in ("Filter", "Index Cond", "Recheck Cond", "Hash Cond", "Join Filter"):
            if key in node:
                out.append("  " * depth + f"     {key}: {node[key]}")
        for child in node.get("Plans", ()):
            walk(child, depth + 1)

    plan = doc.get("Plan")
    if isinstance(plan, Mapping):
        walk(plan, 0)
    return out


# -- HTML ------------------------------------------------------------------------------------------
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,monospace}pre{background:#f6f8fa;padding:8px;overflow:auto}
.bar{background:#4a7bd0;height:10px;display:inline-block}.muted{color:#666}
.counts span{display:inline-block;margin-right:14px}
"""


def to_html(report: Report) -> str:
    """One self-contained page (no script, no external resource)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>querywatch log report: {e(', '.join(report.files))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Server log report: {e(', '.join(report.files))}</h1>",
        f"<p class='muted'>from {e(report.first or '?')} to {e(report.last or '?')}</p>",
        "<p class='counts'>"
        + "".join(f"<span><b>{v:,}</b> {e(label)}</span>" for label, v in shown_counts(report))
        + "</p>",
    ]
    for title, anchor, rows in (
        ("Top statements by total time", "by-time", report.top_by_time),
        ("Top statements by count", "by-count", report.top_by_count),
    ):
        parts.append(f"<h2 id='{anchor}'>{title}</h2>")
        parts.append(
            _table(
                ["#", "calls", "total ms", "mean ms", "max ms", "share", "query"],
                [
                    [
                        i,
                        f"{s.calls:,}",
                        f"{s.total_ms:,.1f}",
                        f"{s.mean_ms:,.2f}",
                        f"{s.max_ms:,.1f}",
                        f"{s.share:.1%}",
                        _code(s.query, s.fingerprint),
                    ]
                    for i, s in enumerate(rows, 1)
                ],
                numeric=(0, 1, 2, 3, 4, 5),
            )
        )
    parts.append("<h2 id='slowest'>Slowest executions</h2>")
    parts.extend(_html_execution(x) for x in report.slowest)
    parts.append("<h2 id='plans'>Slowest executions with an auto_explain plan</h2>")
    parts.extend(_html_execution(x) for x in report.plans)
    if not report.plans:
        parts.append("<p class='muted'>none (auto_explain logged no plan)</p>")
    parts.append("<h2 id='locks'>Lock waits</h2>")
    parts.append(
        _table(
            ["at", "pid", "state", "mode", "lock", "waited ms", "held by", "query"],
            [
                [
                    w.at,
                    w.pid,
                    "acquired" if w.acquired else "waiting",
                    w.mode,
                    w.lock + (f" ({w.relation})" if w.relation else ""),
                    f"{w.wait_ms:,.0f}",
                    ", ".join(str(p) for p in w.holders),
                    _code(w.query or ""),
                ]
                for w in report.lock_waits
            ],
            numeric=(1, 5),
        )
    )
    parts.append("<h2 id='deadlocks'>Deadlocks</h2>")
    parts.append(
        _table(
            ["at", "processes", "detail", "query"],
            [
                [d.at, ", ".join(str(p) for p in d.processes), _pre(d.detail), _code(d.query or "")]
                for d in report.deadlocks
            ],
        )
    )
    parts.append("<h2 id='temp'>Temp files</h2>")
    parts.append(
        _table(
            ["files", "total", "largest", "query"],
            [
                [
                    f"{t.count:,}",
                    human_bytes(t.total_bytes),
                    human_bytes(t.max_bytes),
                    _code(t.query or ""),
                ]
                for t in report.temp_files
            ],
            numeric=(0, 1, 2),
        )
    )
    parts.append("<h2 id='errors'>Errors</h2>")
    parts.append(
        _table(
            ["count", "severity", "SQLSTATE", "message", "statement"],
            [
                [f"{x.count:,}", x.severity, x.sqlstate or "", x.message, _code(x.query or "")]
                for x in report.errors
            ],
            numeric=(0,),
        )
    )
    parts.append("<h2 id='hours'>Per hour</h2>")
    peak = max((h.statements for h in report.hours), default=0) or 1
    parts.append(
        _table(
            ["hour", "statements", "total ms", "errors", "temp files", "lock waits", ""],
            [
                [
                    h.hour[:13] + "h",
                    f"{h.statements:,}",
                    f"{h.total_ms:,.0f}",
                    h.errors,
                    h.temp_files,
                    h.lock_waits,
                    _Raw(
                        f"<span class='bar' style='width:{round(200 * h.statements / peak)}px'></span>"
                    ),
                ]
                for h in report.hours
            ],
            numeric=(1, 2, 3, 4, 5),
        )
    )
    parts.append(f"<h2 id='unparsed'>Unparsed lines: {report.unparsed:,}</h2>")
    parts.append(
        _table(
            ["line", "reason", "sample"],
            [[u.line_no, u.reason, _code(u.sample)] for u in report.unparsed_samples],
        )
    )
    if report.loaded is not None:
        parts.append("<h2>Loaded into the store</h2><p>")
        parts.append(", ".join(f"{e(str(k))} {e(str(v))}" for k, v in report.loaded.items()))
        parts.append("</p>")
    for note in report.notes:
        parts.append(f"<p class='muted'>note: {e(note)}</p>")
    parts.append(
        f"<p class='muted'>generated {datetime.now(UTC).isoformat(timespec='seconds')} by querywatch</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_execution(x: Execution) -> str:
    e = html.escape
    who = "@".join(v for v in (x.user, x.database) if v)
    parts = [
        f"<p><b>{x.duration_ms:,.1f} ms</b> at {e(x.at or '?')} [{x.pid}] {e(who)}</p>",
        f"<pre>{e(x.query)}</pre>",
    ]
    if x.params:
        parts.append(f"<p class='muted'>parameters: {e(', '.join(x.params))}</p>")
    if x.plan:
        parts.append(
            f"<details open><summary>plan ({e(x.plan_format or '')}, auto_explain)</summary>"
            f"<pre>{e(x.plan)}</pre></details>"
        )
    if x.explain is not None:
        body = "\n".join(plan_lines(x.explain))
        parts.append(
            "<details open><summary>EXPLAIN with the logged values</summary>"
            f"<pre>{e(body)}</pre></details>"
        )
    return "\n".join(parts)


@dataclass(frozen=True)
class _Raw:
    html: str


def _code(text: str, title: str | None = None) -> _Raw:
    t = f" title='{html.escape(title)}'" if title else ""
    return _Raw(f"<code{t}>{html.escape(text)}</code>")


def _pre(text: str) -> _Raw:
    return _Raw(f"<pre>{html.escape(text)}</pre>")


def _table(
    head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: tuple[int, ...] = ()
) -> str:
    if not rows:
        return "<p class='muted'>none</p>"

    def cell(v: Any, i: int, tag: str) -> str:
        cls = " class='n'" if i in numeric else ""
        body = v.html if isinstance(v, _Raw) else html.escape("" if v is None else str(v))
        return f"<{tag}{cls}>{body}</{tag}>"

    out = ["<table><tr>" + "".join(cell(h, i, "th") for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell(v, i, "td") for i, v in enumerate(r)) + "</tr>" for r in rows]
    out.append("</table>")
    return "".join(out)


RENDERERS: Mapping[str, Callable[[Report], str]] = {
    "text": to_text,
    "json": lambda r: json.dumps(to_json(r), indent=1, ensure_ascii=False),
    "html": to_html,
}
