"""Pure: what a test suite ran (statements, plans, calls per test) and the committed baseline file.

A capture and a baseline have the same shape; the baseline is a capture committed to the
repository together with the budget it is checked with::

    {"querywatch_gate": 1,
     "budget": {"amplification": 2.0, "slack": 2, "new_calls": 3, "large_rows": 10000, ...},
     "statements": {
       "<fingerprint>": {"query": "SELECT ... WHERE order_id = $1",
                         "plan_cost": 8.3,
                         "seq_scans": [{"relation": "public.orders", "rows": 20000}],
                         "calls": {"tests/test_shop.py::test_list_orders": 1}}}}

Queries are normalized (placeholders, never values); keys are sorted so diffs stay small.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InputError

FORMAT = 1


@dataclass(frozen=True)
class Budget:
    """How much a statement may change before the gate fails."""

    amplification: float = 2.0  # calls per test may grow to this factor of the baseline...
    slack: int = 2  # ...or by this many calls, whichever allows more
    new_calls: int = 3  # a statement new in a test may run this many times in it
    large_rows: int = 10_000  # a new statement must not scan a table this large sequentially
    cost_factor: float = 2.0  # plan cost may grow to this factor of the baseline...
    min_cost_delta: float = 50.0  # ...and smaller growths never count


@dataclass(frozen=True)
class SeqScan:
    relation: str
    rows: int  # rows counted up to Budget.large_rows


@dataclass(frozen=True)
class Plan:
    cost: float
    seq_scans: tuple[SeqScan, ...] = ()


@dataclass(frozen=True)
class StatementRecord:
    fingerprint: str
    query: str
    plan: Plan | None
    calls: Mapping[str, int]  # test id -> calls in that test


@dataclass(frozen=True)
class Capture:
    statements: Mapping[str, StatementRecord]
    budget: Budget = field(default_factory=Budget)

    def tests(self) -> list[str]:
        return sorted({t for s in self.statements.values() for t in s.calls})

    def calls_in(self, test: str) -> dict[str, int]:
        return {fp: s.calls[test] for fp, s in self.statements.items() if test in s.calls}


def to_json(c: Capture) -> dict[str, Any]:
    return {
        "querywatch_gate": FORMAT,
        "budget": asdict(c.budget),
        "statements": {fp: _record_json(c.statements[fp]) for fp in sorted(c.statements)},
    }


def _record_json(s: StatementRecord) -> dict[str, Any]:
    return {
        "query": s.query,
        "plan_cost": None if s.plan is None else round(s.plan.cost, 2),
        "seq_scans": [] if s.plan is None else [asdict(x) for x in s.plan.seq_scans],
        "calls": {t: s.calls[t] for t in sorted(s.calls)},
    }


def from_json(doc: Any, where: str = "baseline") -> Capture:
    if not isinstance(doc, dict) or doc.get("querywatch_gate") != FORMAT:
        raise InputError(f"{where}: not a querywatch gate file (format {FORMAT})")
    try:
        known = {f.name for f in fields(Budget)}
        budget = Budget(**{k: v for k, v in dict(doc.get("budget", {})).items() if k in known})
        statements = {fp: _record(fp, raw) for fp, raw in dict(doc["statements"]).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: malformed gate file ({exc})") from None
    return Capture(statements, budget)


def _record(fp: str, raw: Mapping[str, Any]) -> StatementRecord:
    cost = raw.get("plan_cost")
    scans = tuple(SeqScan(str(s["relation"]), int(s["rows"])) for s in raw.get("seq_scans", []))
    plan = None if cost is None else Plan(float(cost), scans)
    calls = {str(t): int(n) for t, n in dict(raw.get("calls", {})).items()}
    return StatementRecord(fp, str(raw.get("query", "")), plan, calls)


def save(c: Capture, path: Path) -> None:
    path.write_text(json.dumps(to_json(c), indent=2) + "\n", encoding="utf-8")


def load(path: Path) -> Capture:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"gate: no baseline {str(path)!r} (fix: run `querywatch gate record` and commit it)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"gate: cannot read {str(path)!r}: {exc}") from None
    return from_json(doc, str(path))
