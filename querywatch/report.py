"""Pure: a Diagnosis as the public JSON object or as a few lines of plain text.

The JSON shape is the public contract of ``querywatch diagnose --format json`` (DESIGN.md); alert
channels and the web page carry the same object. Times become ISO 8601 UTC here, at the edge.
"""

from __future__ import annotations

from querywatch.durations import clock, iso
from querywatch.model import Culprit, DeployVerdict, Diagnosis, Rate
from querywatch.text import figure, one_line

TEXT_CULPRITS = 3  # culprits shown in the text report
TEXT_DEPLOYS = 3  # deploys shown in the text report
QUERY_WIDTH = 100  # a culprit's query is cut to one line of this width


def diagnosis_to_json(d: Diagnosis) -> dict[str, object]:
    """Exactly the ``diagnose --format json`` object of the public contract."""
    return {
        "window": {"start": iso(d.window_start), "end": iso(d.window_end)},
        "baseline": {
            "start": iso(d.baseline_start),
            "end": iso(d.baseline_end),
            "kind": d.baseline_kind,
        },
        "verdict": d.verdict.value,
        "summary": d.summary,
        "traffic_factor": round(d.traffic_factor, 2),
        "culprits": [_culprit_json(c) for c in d.culprits],
        "deploys": [_deploy_json(v) for v in d.deploys],
        **({"note": d.note} if d.note else {}),  # optional: what limits the diagnosis
        # optional: the top culprit's capacity, the headroom left, replicas (querywatch.capacity)
        **({"capacity": d.capacity.as_json()} if d.capacity is not None else {}),
    }


def _culprit_json(c: Culprit) -> dict[str, object]:
    return {
        "queryid": c.queryid,
        "fingerprint": c.fingerprint,
        "query": c.query,
        "kind": c.kind.value,
        "excess_share": round(c.excess_share, 3),
        "calls_per_s": _rate_json(c.calls_per_s),
        "mean_ms": _rate_json(c.mean_ms),
        "onset": iso(c.onset),
        "evidence": list(c.evidence),
    }


def _rate_json(rate: Rate) -> dict[str, float]:
    return {"baseline": round(rate.baseline, 3), "window": round(rate.window, 3)}


def _deploy_json(v: DeployVerdict) -> dict[str, object]:
    return {"version": v.version, "at": iso(v.at), "suspect": v.suspect}


def diagnosis_to_text(d: Diagnosis) -> str:
    """A few lines a person reads in five seconds: verdict, summary, culprits, deploys."""
    head = (
        f"verdict: {d.verdict.value}{' (learning)' if d.learning else ''}  "
        f"window {clock(d.window_start)}-{clock(d.window_end)} UTC  "
        f"traffic x{figure(d.traffic_factor)}"
    )
    lines = [head, d.summary]
    if d.baseline_note:
        lines.append(f"compared with {d.baseline_note} ({d.baseline_kind})")
    for n, culprit in enumerate(d.culprits[:TEXT_CULPRITS], start=1):
        lines.extend(_culprit_lines(n, culprit))
    if len(d.culprits) > TEXT_CULPRITS:
        lines.append(f"   ... and {len(d.culprits) - TEXT_CULPRITS} more culprits (--format json)")
    if d.capacity is not None:
        lines.extend(d.capacity.lines())
    if d.deploys:
        lines.append(_deploys_line(d.deploys))
    return "\n".join(lines)


def _culprit_lines(n: int, c: Culprit) -> list[str]:
    onset = f"  since {clock(c.onset)}" if c.onset is not None else ""
    numbers = (
        f"{n}. {c.kind.value:<9} {c.excess_share:>4.0%}  "
        f"calls/s {figure(c.calls_per_s.baseline)} -> {figure(c.calls_per_s.window)}  "
        f"mean {figure(c.mean_ms.baseline)} -> {figure(c.mean_ms.window)} ms{onset}"
    )
    return [numbers, f"   {one_line(c.query or c.fingerprint, QUERY_WIDTH)}"]


def _deploys_line(deploys: tuple[DeployVerdict, ...]) -> str:
    shown = sorted(deploys, key=lambda v: (v.suspect, v.at))[-TEXT_DEPLOYS:]
    parts = [
        f"{v.version} at {clock(v.at)} {'SUSPECT' if v.suspect else 'not suspect'}"
        + (f" ({v.reason})" if v.reason else "")
        for v in sorted(shown, key=lambda v: v.at)
    ]
    more = f" (+{len(deploys) - TEXT_DEPLOYS} more)" if len(deploys) > TEXT_DEPLOYS else ""
    return "deploys: " + "; ".join(parts) + more
