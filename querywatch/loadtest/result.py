"""Pure: a load test's result, its JSON file form, a text report and a before/after comparison.

Latencies are milliseconds, measured from each request's scheduled arrival (queueing included).
The JSON keeps the HDR histogram (base64) so a later run can be compared percentile by percentile.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..durations import iso
from ..errors import InputError
from ..fingerprint import display

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass(frozen=True)
class LoadResult:
    query: str
    fingerprint: str
    target_rate: float
    duration_s: float
    concurrency: int
    due: int  # requests scheduled in the duration
    completed: int
    completed_in_window: int
    errors: int
    unfinished: int  # still queued when the drain time ran out (latency lower bound recorded)
    achieved_rate: float  # completed within the duration / duration
    latency: Latency
    db_calls: float | None = None  # pg_stat_statements deltas of this statement
    db_exec_ms: float | None = None
    server_exec_ms: float | None = None  # all statements during the run
    db_note: str = ""
    error_samples: tuple[str, ...] = ()
    started_at: float = 0.0
    histogram: str = ""  # HDR histogram of microseconds, base64 (hdrhistogram's encode)

    @property
    def db_mean_ms(self) -> float | None:
        if self.db_calls and self.db_exec_ms is not None:
            return self.db_exec_ms / self.db_calls
        return None

    @property
    def rate_ratio(self) -> float:
        return self.achieved_rate / self.target_rate if self.target_rate else 0.0


def to_json(r: LoadResult) -> dict[str, Any]:
    doc = asdict(r)
    doc["error_samples"] = list(r.error_samples)
    doc["started_at"] = iso(r.started_at)
    doc["db_mean_ms"] = r.db_mean_ms
    return {"format": FORMAT_VERSION, **doc}


def from_json(doc: dict[str, Any], where: str = "result") -> LoadResult:
    from ..durations import parse_time

    try:
        fields = {k: v for k, v in doc.items() if k not in {"format", "db_mean_ms"}}
        fields["latency"] = Latency(**fields["latency"])
        fields["error_samples"] = tuple(fields.get("error_samples", ()))
        started = fields.get("started_at")
        fields["started_at"] = parse_time(started) if isinstance(started, str) else 0.0
        return LoadResult(**fields)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: not a querywatch loadtest result ({exc})") from None


def load_file(path: str) -> LoadResult:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise InputError(f"--compare: cannot read {path!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"--compare: {path!r} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"--compare: {path!r} is not a querywatch loadtest result")
    return from_json(doc, f"--compare {path!r}")


def to_text(r: LoadResult) -> str:
    lat = r.latency
    lines = [
        f"loadtest {display(r.query, 80)}",
        f"target {r.target_rate:g}/s for {r.duration_s:g}s with {r.concurrency} connections: "
        f"achieved {r.achieved_rate:.1f}/s ({r.rate_ratio:.1%}), {r.completed} completed, "
        f"{r.errors} errors, {r.unfinished} unfinished",
        f"latency from scheduled arrival: p50 {lat.p50_ms:.2f} ms, p95 {lat.p95_ms:.2f} ms, "
        f"p99 {lat.p99_ms:.2f} ms, max {lat.max_ms:.2f} ms",
        _db_line(r),
    ]
    lines += [f"error: {e}" for e in r.error_samples]
    return "\n".join(lines)


def _db_line(r: LoadResult) -> str:
    if r.db_exec_ms is None or r.db_calls is None:
        return f"database time: {r.db_note or 'not measured'}"
    return (
        f"database time (pg_stat_statements): {r.db_exec_ms:.1f} ms over {r.db_calls:.0f} calls "
        f"({r.db_mean_ms or 0.0:.3f} ms/call); all statements {r.server_exec_ms or 0.0:.1f} ms"
    )


@dataclass(frozen=True)
class Row:
    metric: str
    before: float | None
    after: float | None
    lower_is_better: bool = True

    @property
    def change(self) -> str:
        if self.before is None or self.after is None:
            return ""
        if self.before == self.after:
            return "same"
        if self.after == 0 or self.before == 0:
            return f"{self.after - self.before:+.3g}"
        ratio = self.before / self.after if self.lower_is_better else self.after / self.before
        word = "better" if ratio > 1 else "worse"
        factor = ratio if ratio > 1 else 1 / ratio
        return f"{factor:.1f}x {word}"


def compare_rows(before: LoadResult, after: LoadResult) -> list[Row]:
    b, a = before.latency, after.latency
    return [
        Row("achieved rate /s", before.achieved_rate, after.achieved_rate, lower_is_better=False),
        Row("p50 ms", b.p50_ms, a.p50_ms),
        Row("p95 ms", b.p95_ms, a.p95_ms),
        Row("p99 ms", b.p99_ms, a.p99_ms),
        Row("max ms", b.max_ms, a.max_ms),
        Row("errors", before.errors, after.errors),
        Row("DB ms per call", before.db_mean_ms, after.db_mean_ms),
        Row("DB ms total", before.db_exec_ms, after.db_exec_ms),
    ]


def compare_text(before: LoadResult, after: LoadResult) -> str:
    rows = compare_rows(before, after)
    lines = [f"{'':18} {'before':>12} {'after':>12}  change"]
    for r in rows:
        lines.append(f"{r.metric:18} {_num(r.before):>12} {_num(r.after):>12}  {r.change}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if value < 100 else f"{value:,.1f}"
