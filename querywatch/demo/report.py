"""Pure: the demo's incident report in Markdown (timeline, culprit, evidence, ruled out, fix)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import clock


@dataclass(frozen=True)
class Event:
    at: float
    text: str


@dataclass
class DemoFacts:
    events: list[Event]
    fix: str
    rollout_at: float = 0.0
    firing: dict[str, Any] = field(default_factory=dict)
    alert_delay_s: float = 0.0
    fix_at: float = 0.0
    fix_seconds: float = 0.0
    resolved_delay_s: float | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    surge: dict[str, Any] = field(default_factory=dict)
    loadtest: str = ""
    html_report: str = ""
    replica: dict[str, Any] = field(default_factory=dict)  # act 3 (querywatch.demo.redistribute)


def render(facts: DemoFacts) -> str:
    d = facts.firing.get("diagnosis", {})
    culprit = (d.get("culprits") or [{}])[0]
    parts = [
        "# Incident report: order history rollout saturates the database",
        "",
        f"**Verdict:** {d.get('verdict', '?')}. {d.get('summary', '')}",
        "",
        "## Timeline (UTC)",
        "",
        *[f"- {clock(e.at)} {e.text}" for e in facts.events],
        "",
        "## Culprit",
        "",
        f"```sql\n{culprit.get('query', '?')}\n```",
        "",
        f"- kind: {culprit.get('kind', '?')}; share of the extra database time: "
        f"{culprit.get('excess_share', 0):.0%}",
        f"- fingerprint {culprit.get('fingerprint', '?')}, queryid {culprit.get('queryid', '?')}",
        *[f"- {line}" for line in culprit.get("evidence", [])],
        "",
        "## Deploys",
        "",
        *[
            f"- {x['version']} at {x['at']}: {'suspect' if x['suspect'] else 'not a suspect'}"
            for x in d.get("deploys", [])
        ],
        "",
        "## Ruled out",
        "",
        *_ruled_out(d, facts.surge),
        "",
        "## Fix and verification",
        "",
        f"- alert {facts.alert_delay_s:.1f} s after the rollout "
        f"(incident {facts.firing.get('incident', '?')})",
        f"- fix applied: `{facts.fix}` ({facts.fix_seconds:.1f} s)",
        _verification(facts.verification),
        *(
            [
                "",
                "Load test of the culprit alone (open model, `querywatch loadtest`):",
                "",
                "```",
                facts.loadtest,
                "```",
                "",
            ]
            if facts.loadtest
            else []
        ),
        (
            f"- resolved notification {facts.resolved_delay_s:.1f} s after the fix"
            if facts.resolved_delay_s is not None
            else "- no resolved notification arrived in time"
        ),
        "",
        *_headroom(d, facts.replica),
        "## Diagnosis (JSON)",
        "",
        "```json",
        json.dumps(d, indent=2),
        "```",
        "",
    ]
    return "\n".join(parts)


def _ruled_out(d: dict[str, Any], surge: dict[str, Any]) -> list[str]:
    k = d.get("traffic_factor", 1.0)
    lines = [f"- a traffic surge: traffic overall changed only {k:.1f}x during the incident"]
    if d.get("verdict") != "lock_contention":
        lines.append("- lock contention: sampled sessions were not waiting on locks")
    innocent = [x["version"] for x in d.get("deploys", []) if not x["suspect"]]
    if innocent:
        lines.append(f"- deploys {', '.join(innocent)}: no culprit started right after them")
    if surge:
        sd = surge.get("diagnosis", {})
        lines.append(
            f"- act 2 (3x traffic on every endpoint) was labelled {sd.get('verdict', '?')}: "
            f"{sd.get('summary', '')}"
        )
    return lines


def _headroom(d: dict[str, Any], replica: dict[str, Any]) -> list[str]:
    """Headroom during the incident (the alert's diagnosis) and whether the replica made at the
    end could have served the culprit (act 3)."""
    at_alert = (d.get("capacity") or {}).get("lines") or []
    lines = replica.get("lines") or []
    if not at_alert and not lines:
        return []
    parts = ["## Headroom and where the load could go", ""]
    if at_alert:
        parts += ["When the alert fired:", "", *[f"- {line}" for line in at_alert], ""]
    if lines:
        parts += ["Act 3, the primary with a streaming replica:", ""]
        parts += [f"- {line}" for line in lines] + [""]
    return parts


def _verification(v: dict[str, Any]) -> str:
    before, after = v.get("mean_ms_before"), v.get("mean_ms_after")
    if before and after:
        return (
            f"- verified: the culprit's mean time fell from {before:.2f} ms to {after:.3f} ms "
            f"({before / after:,.0f}x) once the index existed"
        )
    return "- verification: not enough data after the fix"


def write_report(facts: DemoFacts, out_dir: Path) -> Path:
    path = out_dir / "incident-report.md"
    path.write_text(render(facts), encoding="utf-8")
    (out_dir / "diagnosis.json").write_text(json.dumps(facts.firing.get("diagnosis", {}), indent=2))
    return path
