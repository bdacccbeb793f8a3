"""Running audits from the store: one on demand (`querywatch audit`), or each one due in `watch`.

``run_audit`` reads the intervals around a deploy and hands them to the pure :func:`audit.audit`.
``AuditScheduler.on_interval(now)`` runs every audit whose after-window has passed (see
:func:`audit.due_audits`), logs the verdict, keeps it in the store's status, and sends a
regression to the alert dispatcher in the diagnosis contract shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..advise import nodes
from ..alerts import Dispatcher, Notification
from ..errors import InputError, QuerywatchError
from ..model import Deploy
from ..store.protocol import StoreProtocol
from ..store.sqlite import StoredPlan
from .core import AuditReport, AuditSettings, PlanChange, audit, due_audits, split
from .report import audit_to_alert, audit_to_json

log = logging.getLogger("querywatch.audit")

BEFORE_S = 1800.0
AFTER_S = 900.0


def find_deploy(store: StoreProtocol, version: str) -> Deploy:
    """The latest deploy marker of that version."""
    found = [d for d in store.deploys() if d.version == version]
    if not found:
        known = ", ".join(sorted({d.version for d in store.deploys()})[-10:]) or "none"
        raise InputError(
            f"audit: no deploy {version!r} in the store (known: {known}) "
            "(fix: `querywatch mark deploy VERSION`)"
        )
    return found[-1]


def plan_changes(
    store: StoreProtocol, server_id: int, deploy: Deploy, fingerprints: Sequence[str]
) -> dict[str, PlanChange] | None:
    """The plan each fingerprint used before the deploy and the new one after it, when the plan
    history (recorded by `querywatch advise`) shows one; None when no plan is recorded at all."""
    changes: dict[str, PlanChange] = {}
    any_plan = False
    for fp in fingerprints:
        plans = store.plans(fp, server_id)
        any_plan = any_plan or bool(plans)
        before = [p for p in plans if p.first_seen <= deploy.at]
        after = [p for p in plans if p.first_seen > deploy.at]
        if before and after:
            old, new = before[-1], after[-1]
            if old.plan_hash != new.plan_hash:
                changes[fp] = PlanChange(_describe(old), _describe(new))
    return changes if any_plan else None


def _describe(plan: StoredPlan) -> str:
    """The plan's first scan (or its top node) and its total cost."""
    try:
        found = list(nodes.nodes(nodes.document(plan.plan)))
    except (KeyError, TypeError, InputError):
        return f"plan {plan.plan_hash} (cost {plan.total_cost:,.0f})"
    scans = [n for n in found if n.get("Node Type") in nodes.SCANS] or found[:1]
    return f"{nodes.describe(scans[0])} (cost {plan.total_cost:,.0f})"


def run_audit(
    store: StoreProtocol,
    server_id: int,
    deploy: Deploy,
    before_s: float = BEFORE_S,
    after_s: float = AFTER_S,
    settings: AuditSettings | None = None,
) -> AuditReport:
    summaries = store.summaries(server_id, deploy.at - before_s, deploy.at + after_s)
    before, after = split(summaries, deploy.at, before_s, after_s)
    fingerprints = sorted({fp for s in [*before, *after] for fp in s.by_fingerprint})
    statements = store.statements(fingerprints)
    plans = plan_changes(store, server_id, deploy, fingerprints)
    return audit(deploy, before, after, statements, plans, settings or AuditSettings())


@dataclass
class AuditScheduler:
    """Audits each deploy once its after-window has passed; call ``on_interval`` every interval."""

    store: StoreProtocol
    server_id: int
    server_name: str
    dispatcher: Dispatcher | None = None
    before_s: float = BEFORE_S
    after_s: float = AFTER_S
    settings: AuditSettings = field(default_factory=AuditSettings)
    done: set[tuple[str, float]] = field(default_factory=set)
    reports: list[AuditReport] = field(default_factory=list)

    def on_interval(self, now: float) -> list[AuditReport]:
        deploys = self.store.deploys(now - self.after_s - 3600.0, now)
        self._remember_stored(deploys)
        ran = []
        for deploy in due_audits(deploys, now, self.after_s, self.done):
            self.done.add((deploy.version, deploy.at))
            report = self._run(deploy)
            if report is not None:
                ran.append(report)
        self.reports.extend(ran)
        return ran

    def _remember_stored(self, deploys: list[Deploy]) -> None:
        """Deploys audited by an earlier run of `watch` are not audited (nor alerted) again."""
        stored = self.store.status()
        for deploy in deploys:
            if f"audit:{self.server_name}:{deploy.version}" in stored:
                self.done.add((deploy.version, deploy.at))

    def _run(self, deploy: Deploy) -> AuditReport | None:
        try:
            report = run_audit(
                self.store, self.server_id, deploy, self.before_s, self.after_s, self.settings
            )
        except QuerywatchError as exc:
            log.warning("audit of deploy %s skipped: %s", deploy.version, exc)
            return None
        log.log(
            logging.WARNING if report.reasons else logging.INFO,
            "audit of deploy %s: %s%s",
            deploy.version,
            report.verdict.value,
            "".join(f"; {r.text}" for r in report.reasons),
        )
        self.store.set_status(f"audit:{self.server_name}:{deploy.version}", audit_to_json(report))
        if report.reasons and self.dispatcher is not None:
            self.dispatcher.notify(
                Notification(
                    status="firing",
                    incident=f"audit-{deploy.version}",
                    diagnosis=audit_to_alert(report),
                    at=report.after.end,
                    source=self.server_name,
                    started_at=deploy.at,
                )
            )
        return report
