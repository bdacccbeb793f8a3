"""Pure: a capture checked against the baseline. Each rule names the test and the statement.

RULES, each ``rule(baseline, capture, test) -> list[Violation]`` for one test id:

* ``amplification``: a statement ran more often than the budget allows in a test (N+1);
* ``seq_scan``: a statement the baseline does not know scans a large table sequentially;
* ``plan_cost``: a known statement's plan cost grew past the budget.

A new statement or a plan is reported for the first test that ran it (run order in the pytest
plugin, test id order in a capture file).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..fingerprint import display
from .baseline import Capture, StatementRecord

UPDATE_HINT = "if intended, update the baseline with `querywatch gate record`"


class RuleName(enum.StrEnum):
    AMPLIFICATION = "amplification"
    SEQ_SCAN = "seq_scan"
    PLAN_COST = "plan_cost"


@dataclass(frozen=True)
class Violation:
    test: str
    rule: RuleName
    fingerprint: str
    query: str
    message: str

    def line(self) -> str:
        return f"{self.test}: {self.rule.value}: {self.message}: {display(self.query, 120)}"


Rule = Callable[[Capture, Capture, str], list[Violation]]


def amplification(baseline: Capture, capture: Capture, test: str) -> list[Violation]:
    budget = baseline.budget
    out = []
    for fp, calls in sorted(capture.calls_in(test).items()):
        known = baseline.statements.get(fp)
        before = known.calls.get(test) if known is not None else None
        if before is None:
            if calls > budget.new_calls:
                msg = (
                    f"ran {calls} times, a statement new in this test may run "
                    f"{budget.new_calls} times (N+1?)"
                )
                out.append(_violation(test, RuleName.AMPLIFICATION, capture, fp, msg))
            continue
        allowed = max(before * budget.amplification, before + budget.slack)
        if calls > allowed:
            msg = f"ran {calls} times, {before} in the baseline (budget {allowed:g}; N+1?)"
            out.append(_violation(test, RuleName.AMPLIFICATION, capture, fp, msg))
    return out


def seq_scan(baseline: Capture, capture: Capture, test: str) -> list[Violation]:
    budget = baseline.budget
    out = []
    for fp in _first_seen_in(capture, test):
        record = capture.statements[fp]
        if fp in baseline.statements or record.plan is None:
            continue
        large = [s for s in record.plan.seq_scans if s.rows >= budget.large_rows]
        for scan in large:
            msg = (
                f"new statement scans {scan.relation} sequentially "
                f"(>= {scan.rows:,} rows; budget {budget.large_rows:,})"
            )
            out.append(_violation(test, RuleName.SEQ_SCAN, capture, fp, msg))
    return out


def plan_cost(baseline: Capture, capture: Capture, test: str) -> list[Violation]:
    budget = baseline.budget
    out = []
    for fp in _first_seen_in(capture, test):
        now, known = capture.statements[fp].plan, baseline.statements.get(fp)
        if now is None or known is None or known.plan is None:
            continue
        before = known.plan.cost
        grew = now.cost - before
        if now.cost > before * budget.cost_factor and grew >= budget.min_cost_delta:
            msg = (
                f"plan cost {before:,.1f} -> {now.cost:,.1f} "
                f"(budget x{budget.cost_factor:g}, at least +{budget.min_cost_delta:g})"
            )
            out.append(_violation(test, RuleName.PLAN_COST, capture, fp, msg))
    return out


RULES: tuple[Rule, ...] = (amplification, seq_scan, plan_cost)


def check_test(baseline: Capture, capture: Capture, test: str) -> list[Violation]:
    return [v for rule in RULES for v in rule(baseline, capture, test)]


def check(baseline: Capture, capture: Capture) -> list[Violation]:
    """Every violation of every test of the capture, by test id."""
    return [v for test in capture.tests() for v in check_test(baseline, capture, test)]


def _first_seen_in(capture: Capture, test: str) -> list[str]:
    """Statements whose first test (in the order the capture lists them) is ``test``."""
    return sorted(fp for fp, s in capture.statements.items() if next(iter(s.calls), None) == test)


def _violation(test: str, rule: RuleName, capture: Capture, fp: str, message: str) -> Violation:
    record: StatementRecord | None = capture.statements.get(fp)
    return Violation(test, rule, fp, record.query if record else "", message)
