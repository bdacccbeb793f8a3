"""Pure: the review as JSON (a dict) and as Markdown. The Rich text view lives in commands.py.

Each finding and health check carries the link to its documentation page (``docs_url``, under the
base URL ``docs_base``: the ``docs_url`` setting).
"""

from __future__ import annotations

from typing import Any

from ..docs import DEFAULT_BASE, link
from ..durations import iso
from ..fingerprint import display
from ..text import md_escape
from .records import Advice, Finding, HealthFinding, IndexAdvice, Review


def finding_docs(f: Finding, docs_base: str = DEFAULT_BASE) -> str:
    return link(f"findings/{f.rule}", docs_base)


def health_docs(h: HealthFinding, docs_base: str = DEFAULT_BASE) -> str:
    return link(f"health/{h.check}", docs_base)


def finding_to_json(f: Finding, docs_base: str = DEFAULT_BASE) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "severity": f.severity.value,
        "message": f.message,
        "evidence": list(f.evidence),
        "relation": f.relation,
        "fix": f.fix,
        "docs_url": finding_docs(f, docs_base),
    }


def index_to_json(a: IndexAdvice) -> dict[str, Any]:
    v = a.verification
    return {
        "name": a.name,
        "ddl": a.ddl,
        "table": a.candidate.table,
        "keys": list(a.candidate.key_texts),
        "reason": a.candidate.reason,
        "verified": a.verified,
        "hypopg": {
            "available": v.available,
            "used": v.used,
            "cost_before": round(v.cost_before, 2),
            "cost_after": round(v.cost_after, 2),
            "cost_ratio": round(v.cost_ratio, 4),
            "detail": v.detail,
        },
        "saving": round(a.saving, 4),
        "saved_ms_per_s": round(a.saved_ms_per_s, 3),
        "basis": a.basis,
        "evidence": list(a.evidence),
        "write_heavy": a.write_heavy,
        "warnings": list(a.warnings),
    }


def health_to_json(h: HealthFinding, docs_base: str = DEFAULT_BASE) -> dict[str, Any]:
    return {
        "check": h.check,
        "severity": h.severity.value,
        "subject": h.subject,
        "message": h.message,
        "fix": h.fix,
        "docs_url": health_docs(h, docs_base),
    }


def advice_to_json(
    a: Advice, rank: int | None = None, docs_base: str = DEFAULT_BASE
) -> dict[str, Any]:
    s = a.stats
    doc: dict[str, Any] = {
        "fingerprint": a.fingerprint,
        "queryids": [str(q) for q in a.queryids],
        "query": a.query,
        "db_ms_per_s": round(a.db_ms_per_s, 3),
        "calls": s.calls if s else None,
        "calls_per_s": round(s.calls_per_s, 3) if s else None,
        "mean_ms": round(s.mean_ms, 3) if s else None,
        "rows_per_call": round(s.rows_per_call, 3) if s else None,
        "error": a.error or None,
        "plan": None,
        "findings": [finding_to_json(f, docs_base) for f in a.findings],
        "indexes": [index_to_json(i) for i in a.indexes],
        "notes": list(a.notes),
    }
    if rank is not None:
        doc = {"rank": rank, **doc}
    if a.summary is not None:
        doc["plan"] = {
            "hash": a.summary.plan_hash,
            "total_cost": a.summary.total_cost,
            "rows": a.summary.rows,
            "nodes": list(a.summary.nodes),
            "generic": a.summary.generic,
            "analyzed": a.summary.analyzed,
        }
    return doc


def review_to_json(r: Review, docs_base: str = DEFAULT_BASE) -> dict[str, Any]:
    return {
        "server": r.server,
        "version": r.version,
        "generated_at": iso(r.generated_at),
        "window": {"start": iso(r.window_start), "end": iso(r.window_end)},
        "stats_source": r.stats_source,
        "hypopg": r.hypopg,
        "statements": [advice_to_json(a, i, docs_base) for i, a in enumerate(r.statements, 1)],
        "health": [health_to_json(h, docs_base) for h in r.health],
    }


def _md_statement(rank: int, a: Advice, docs_base: str) -> list[str]:
    s = a.stats
    lines = [f"### {rank}. `{md_escape(display(a.query, 100))}`", ""]
    if s is not None:
        lines.append(
            f"{a.db_ms_per_s:,.1f} ms of DB time per second: {s.calls:,.0f} calls "
            f"({s.calls_per_s:,.2f}/s), {s.mean_ms:,.3f} ms mean, {s.rows_per_call:,.1f} rows per "
            f"call. Fingerprint `{a.fingerprint}`."
        )
        lines.append("")
    if a.error:
        return [*lines, f"No plan: {a.error}", ""]
    if a.summary is not None:
        kind = "analyzed" if a.summary.analyzed else "generic"
        lines += [
            f"**Plan** ({kind}, hash `{a.summary.plan_hash}`, cost {a.summary.total_cost:,.0f}): "
            + " → ".join(a.summary.nodes),
            "",
        ]
    for f in a.findings:
        lines.append(f"- **{f.severity.value}** `{f.rule}`: {f.message}")
        lines += [f"  - {e}" for e in f.evidence]
        if f.fix:
            lines.append(f"  - fix: {f.fix}")
        lines.append(f"  - docs: <{finding_docs(f, docs_base)}>")
    if a.findings:
        lines.append("")
    for i in a.indexes:
        mark = "verified with hypopg" if i.verified else "**unverified**"
        lines += [
            "```sql",
            i.ddl,
            "```",
            f"{mark}; saves ~{i.saving:.0%} of its time (~{i.saved_ms_per_s:,.1f} ms/s), "
            f"estimate from {i.basis}.",
        ]
        lines += [f"- {e}" for e in (*i.evidence, *i.warnings)]
        lines.append("")
    return lines


def review_to_markdown(r: Review, docs_base: str = DEFAULT_BASE) -> str:
    lines = [
        f"# querywatch review of {r.server}",
        "",
        f"PostgreSQL {r.version}; statements from {r.stats_source} "
        f"{iso(r.window_start) or 'since statistics began'} to {iso(r.window_end)}; "
        f"hypopg: {r.hypopg}.",
        "",
        "## Statements by database time",
        "",
    ]
    for rank, a in enumerate(r.statements, 1):
        lines += _md_statement(rank, a, docs_base)
    if not r.statements:
        lines += ["No statement ran in the window.", ""]
    lines += ["## Health", ""]
    lines += [
        f"- **{h.severity.value}** `{h.check}` {h.subject}: {h.message}"
        + (f" Fix: `{h.fix}`" if h.fix else "")
        + f" Docs: <{health_docs(h, docs_base)}>"
        for h in r.health
    ] or ["Nothing to report."]
    return "\n".join(lines).rstrip() + "\n"
