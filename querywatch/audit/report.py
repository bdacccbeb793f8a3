"""Pure: an AuditReport as JSON, plain text, Markdown, or an alert in the diagnosis contract shape.

Times become ISO 8601 UTC here, at the edge. The JSON object::

    {"deploy": {"version": "v2.3", "at": "..."}, "verdict": "pass | regressed",
     "traffic_factor": 1.0,
     "reasons": [{"fingerprint", "query", "kind", "factor", "p_value", "text"}],
     "before": {window facts}, "after": {window facts}, "plan_note": "...",
     "statements": [{"fingerprint", "query", "status": "new | gone | kept",
                     "before": {side} | null, "after": {side} | null,
                     "frequency_p": float | null, "latency_p": float | null, "plan": {...} | null}]}
"""

from __future__ import annotations

from collections.abc import Callable

from ..durations import clock, human, iso
from ..fingerprint import display
from ..text import md_escape
from .core import AuditReport, AuditVerdict, Change, Reason, ReasonKind, Side, UTest, WindowFacts

TEXT_STATEMENTS = 10  # statements listed in text and Markdown (JSON lists them all)
QUERY_WIDTH = 90


def audit_to_json(r: AuditReport) -> dict[str, object]:
    queries = {c.fingerprint: c.query for c in r.changes}
    return {
        "deploy": {"version": r.deploy.version, "at": iso(r.deploy.at), "note": r.deploy.note},
        "verdict": r.verdict.value,
        "traffic_factor": round(r.traffic_factor, 3),
        "reasons": [_reason_json(x, queries.get(x.fingerprint, "")) for x in r.reasons],
        "before": _window_json(r.before),
        "after": _window_json(r.after),
        "plan_note": r.plan_note,
        "statements": [_change_json(c) for c in r.changes],
    }


def _reason_json(r: Reason, query: str) -> dict[str, object]:
    return {
        "fingerprint": r.fingerprint,
        "query": query,
        "kind": r.kind.value,
        "factor": round(r.factor, 3),
        "p_value": None if r.p_value is None else float(f"{r.p_value:.3g}"),
        "text": r.text,
    }


def _window_json(w: WindowFacts) -> dict[str, object]:
    return {
        "start": iso(w.start),
        "end": iso(w.end),
        "intervals": w.intervals,
        "seconds": round(w.seconds, 3),
        "db_ms_per_s": round(w.db_ms_per_s, 3),
        "xact_per_s": None if w.xact_per_s is None else round(w.xact_per_s, 3),
    }


def _side_json(s: Side | None) -> dict[str, object] | None:
    if s is None:
        return None
    return {
        "calls": s.calls,
        "calls_per_s": round(s.calls_per_s, 4),
        "calls_per_xact": None if s.calls_per_xact is None else round(s.calls_per_xact, 4),
        "mean_ms": round(s.mean_ms, 4),
        "db_ms_per_s": round(s.db_ms_per_s, 4),
    }


def _p(test: UTest | None) -> float | None:
    return None if test is None else float(f"{test.p_value:.3g}")


def _change_json(c: Change) -> dict[str, object]:
    return {
        "fingerprint": c.fingerprint,
        "query": c.query,
        "status": c.status.value,
        "before": _side_json(c.before),
        "after": _side_json(c.after),
        "db_ms_per_s_change": round(c.db_ms_per_s_change, 4),
        "frequency_p": _p(c.frequency_test),
        "latency_p": _p(c.latency_test),
        "traffic": round(c.traffic, 3),
        "plan": None if c.plan is None else {"before": c.plan.before, "after": c.plan.after},
    }


# -- text and Markdown ----------------------------------------------------------------------------
def _headline(r: AuditReport) -> str:
    if r.verdict is AuditVerdict.PASS:
        return f"audit of deploy {r.deploy.version}: pass"
    return f"audit of deploy {r.deploy.version}: REGRESSED ({len(r.reasons)} reasons)"


def _windows_line(r: AuditReport) -> str:
    b, a = r.before, r.after
    return (
        f"before {clock(b.start)}-{clock(b.end)} ({b.intervals} intervals, {human(b.seconds)}), "
        f"after {clock(a.start)}-{clock(a.end)} ({a.intervals} intervals, {human(a.seconds)}) UTC; "
        f"DB time {b.db_ms_per_s:.1f} -> {a.db_ms_per_s:.1f} ms/s, "
        f"traffic x{r.traffic_factor:.2f} (median statement)"
        + _xact_text(b.xact_per_s, a.xact_per_s)
    )


def _xact_text(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    return f", transactions {before:.1f} -> {after:.1f}/s"


def _reason_line(r: Reason, queries: dict[str, str]) -> str:
    return f"{r.kind.value}: {display(queries.get(r.fingerprint, r.fingerprint), 70)} -- {r.text}"


def _fmt(side: Side | None, pick: Callable[[Side], float | None]) -> str:
    value = pick(side) if side is not None else None
    return "-" if value is None else f"{value:.3g}"


def _row(c: Change) -> list[str]:
    return [
        c.status.value,
        f"{_fmt(c.before, lambda s: s.calls_per_s)} -> {_fmt(c.after, lambda s: s.calls_per_s)}",
        f"{_fmt(c.before, lambda s: s.calls_per_xact)} -> "
        f"{_fmt(c.after, lambda s: s.calls_per_xact)}",
        f"{_fmt(c.before, lambda s: s.mean_ms)} -> {_fmt(c.after, lambda s: s.mean_ms)}",
        f"{c.db_ms_per_s_change:+.2f}",
        "-" if c.latency_test is None else f"{c.latency_test.p_value:.2g}",
        display(c.query or c.fingerprint, QUERY_WIDTH),
    ]


HEADER = ["status", "calls/s", "calls/xact", "mean ms", "DB ms/s change", "latency p", "query"]


def audit_to_text(r: AuditReport) -> str:
    queries = {c.fingerprint: c.query for c in r.changes}
    lines = [_headline(r), _windows_line(r)]
    lines += [f"  - {_reason_line(x, queries)}" for x in r.reasons]
    lines += [
        f"  plan changed: {display(c.query, 60)}: {c.plan.before} -> {c.plan.after}"
        for c in r.changes
        if c.plan is not None and c.plan.before != c.plan.after
    ]
    if r.plan_note:
        lines.append(f"plans: {r.plan_note}")
    rows = [HEADER] + [_row(c) for c in r.changes[:TEXT_STATEMENTS]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    if len(r.changes) > TEXT_STATEMENTS:
        lines.append(f"... and {len(r.changes) - TEXT_STATEMENTS} more statements (--format json)")
    return "\n".join(lines)


def audit_to_markdown(r: AuditReport) -> str:
    queries = {c.fingerprint: c.query for c in r.changes}
    icon = "✅" if r.verdict is AuditVerdict.PASS else "❌"
    lines = [f"### {icon} {_headline(r)}", "", _windows_line(r), ""]
    lines += [f"- {md_escape(_reason_line(x, queries))}" for x in r.reasons]
    if r.reasons:
        lines.append("")
    if r.plan_note:
        lines += [f"_plans: {r.plan_note}_", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for c in r.changes[:TEXT_STATEMENTS]:
        cells = _row(c)
        cells[-1] = "`" + cells[-1].replace("`", "'") + "`"
        lines.append("| " + " | ".join(md_escape(x) for x in cells) + " |")
    return "\n".join(lines)


# -- alerts ---------------------------------------------------------------------------------------
_KIND = {
    ReasonKind.FREQUENCY: "frequency",
    ReasonKind.LATENCY: "latency",
    ReasonKind.NEW_QUERY: "new_query",
}


def audit_to_alert(r: AuditReport) -> dict[str, object]:
    """The report in the diagnosis contract's shape, so every alert channel can carry it."""
    changes = {c.fingerprint: c for c in r.changes}
    added = sum(max(changes[x.fingerprint].db_ms_per_s_change, 0.0) for x in r.reasons) or 1.0
    culprits = [_culprit(x, changes[x.fingerprint], added) for x in r.reasons]
    summary = (
        f"deploy {r.deploy.version} regressed: "
        + "; ".join(f"{display(changes[x.fingerprint].query, 60)} {x.text}" for x in r.reasons[:2])
        if r.reasons
        else f"deploy {r.deploy.version} passed its audit"
    )
    return {
        "window": {"start": iso(r.after.start), "end": iso(r.after.end)},
        "baseline": {"start": iso(r.before.start), "end": iso(r.before.end)},
        "verdict": "query_regression" if r.reasons else "healthy",
        "summary": summary,
        "traffic_factor": _traffic(r),
        "culprits": culprits,
        "deploys": [{"version": r.deploy.version, "at": iso(r.deploy.at), "suspect": True}],
        "audit": audit_to_json(r),
    }


def _traffic(r: AuditReport) -> float:
    return round(r.traffic_factor, 2)


def _culprit(x: Reason, c: Change, added: float) -> dict[str, object]:
    def rate(pick: Callable[[Side], float]) -> dict[str, float]:
        return {
            "baseline": round(pick(c.before), 3) if c.before else 0.0,
            "window": round(pick(c.after), 3) if c.after else 0.0,
        }

    return {
        "queryid": "",
        "fingerprint": c.fingerprint,
        "query": c.query,
        "kind": _KIND[x.kind],
        "excess_share": round(max(c.db_ms_per_s_change, 0.0) / added, 3),
        "calls_per_s": rate(lambda s: s.calls_per_s),
        "mean_ms": rate(lambda s: s.mean_ms),
        "onset": None,
        "evidence": [x.text],
    }
