"""Pure: how much of a statement's time an index would save, and on what evidence.

The planner's estimate with a hypothetical index understates what an expression index saves (the
hypothetical index has no statistics, so the planner assumes 0.5% of the rows match) and a generic
plan hides the constants. Two more sources of evidence judge selectivity:

* pg_stat_statements: rows returned per call, out of the table's rows (when the plan reads one
  table and has no LIMIT or aggregate, so the rows returned are the rows matched);
* pg_stats: the distinct values of the equality columns (of the bare column for an expression).

An index lookup of ``r`` rows costs about ``random_page_cost x (descent pages + r)``.

>>> round(lookup_cost(1.0), 2)
16.01
>>> e = estimate(IndexCandidate(None, "t", (KeyPart("a", "a", "equality"),), ""),
...              Verification(True, True, 1000.0, 400.0), None, 100_000.0, {}, 1000.0, False)
>>> (e.saving, e.basis)
(0.6, 'planner')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import nodes
from .records import IndexCandidate, KeyPart, QueryStats, Verification

RANDOM_PAGE_COST = 4.0
DESCENT_PAGES = 3.0
CPU_TUPLE_COST = 0.01
MAX_SAVING = 0.999
_NOT_ROW_PRESERVING = frozenset({"Limit", "Aggregate", "WindowAgg", "SetOp", "Unique", "Group"})


@dataclass(frozen=True, slots=True)
class Estimate:
    saving: float
    basis: str  # planner | rows_per_call | pg_stats | none
    evidence: tuple[str, ...]


def lookup_cost(rows: float) -> float:
    return RANDOM_PAGE_COST * (DESCENT_PAGES + rows) + CPU_TUPLE_COST * rows


def rows_are_matches(doc: Mapping[str, object]) -> bool:
    """True when the rows a call returns are the rows its predicates matched in one table."""
    kinds = {str(n.get("Node Type")) for n in nodes.nodes(doc)}
    relations = {n.get("Relation Name") for n in nodes.nodes(doc) if "Relation Name" in n}
    return len(relations) == 1 and not kinds & _NOT_ROW_PRESERVING


def _saving(cost: float, before: float) -> float:
    return min(MAX_SAVING, max(0.0, 1.0 - cost / before)) if before > 0 else 0.0


def _from_rows(
    stats: QueryStats | None, table_rows: float, before: float, rows_match: bool
) -> tuple[float, str] | None:
    if stats is None or not stats.calls or not rows_match or table_rows <= 0:
        return None
    rows = stats.rows_per_call
    saving = _saving(lookup_cost(rows), before)
    return saving, (
        f"pg_stat_statements: {rows:,.2f} rows per call of {table_rows:,.0f} "
        f"(selectivity {rows / table_rows:.2g}): an index lookup costs ~{lookup_cost(rows):,.0f} "
        f"of {before:,.0f} (-{saving:.1%})"
    )


def _from_pg_stats(
    candidate: IndexCandidate,
    distinct: Mapping[tuple[str, str], float],
    table_rows: float,
    before: float,
) -> tuple[float, str] | None:
    equal = [k for k in candidate.keys if k.role == "equality"]
    counts = [distinct.get((candidate.table, k.column), 0.0) for k in equal]
    if not equal or not all(c > 0 for c in counts) or table_rows <= 0:
        return None
    rows = table_rows
    for c in counts:
        rows /= c
    saving = _saving(lookup_cost(rows), before)
    described = ", ".join(_distinct_text(k, c) for k, c in zip(equal, counts, strict=True))
    return saving, (
        f"pg_stats: {described}: ~{rows:,.1f} rows per lookup, ~{lookup_cost(rows):,.0f} "
        f"of {before:,.0f} (-{saving:.1%})"
    )


def _distinct_text(key: KeyPart, count: float) -> str:
    of = f" (of column {key.column}, assumed for {key.text})" if key.expression else ""
    return f"{key.column if key.expression else key.text} has ~{count:,.0f} distinct values{of}"


def estimate(
    candidate: IndexCandidate,
    verification: Verification,
    stats: QueryStats | None,
    table_rows: float,
    distinct: Mapping[tuple[str, str], float],
    cost_before: float,
    rows_match: bool,
) -> Estimate:
    """The saving (0..1): the planner's when it is the larger, else the selectivity evidence's."""
    evidence: list[str] = []
    best, basis = 0.0, "none"
    if verification.available:
        evidence.append(_planner_text(verification))
        if verification.used:
            best, basis = verification.cost_ratio, "planner"
    measured = [
        (name, found)
        for name, found in (
            ("rows_per_call", _from_rows(stats, table_rows, cost_before, rows_match)),
            ("pg_stats", _from_pg_stats(candidate, distinct, table_rows, cost_before)),
        )
        if found is not None
    ]
    evidence += [text for _, (_, text) in measured]
    planner_ok = verification.used or not verification.available
    if measured and planner_ok and measured[0][1][0] > best:  # measured rows first, then pg_stats
        best, basis = measured[0][1][0], measured[0][0]
    return Estimate(best, basis, tuple(evidence))


def _planner_text(v: Verification) -> str:
    if not v.used:
        return f"planner with a hypothetical index: not used (cost stays {v.cost_after:,.0f})"
    return (
        f"planner with a hypothetical index: cost {v.cost_before:,.0f} -> {v.cost_after:,.0f} "
        f"(-{v.cost_ratio:.0%})"
    )
