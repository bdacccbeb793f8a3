"""Pure: plan findings as a tuple of small rules over EXPLAIN JSON.

Each rule is ``rule(doc, stats) -> list[Finding]``: ``doc`` is a plan document (see
:mod:`querywatch.advise.nodes` for querywatch's ``Relations`` and ``Query Text`` annotations),
``stats`` what pg_stat_statements says about the statement, or None. Rules never mutate ``doc``.
Every rule has a fixture plan that triggers it and one that does not (tests/fixtures/plans).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from . import nodes
from .nodes import Node
from .records import Finding, QueryStats, Severity

Rule = Callable[[Mapping[str, Any], QueryStats | None], list[Finding]]

LARGE_RELATION_ROWS = 10_000  # a sequential scan of fewer rows is cheap enough
HUGE_RELATION_ROWS = 100_000
SELECTIVE_FRACTION = 0.05  # a filter keeping at most 5% of the rows is selective
NESTED_LOOP_WORK = 1_000_000  # outer rows x inner rows visited
NESTED_LOOP_MIN_LOOPS = 10
N_PLUS_ONE_CALLS = 1_000
N_PLUS_ONE_RATE = 10.0  # calls per second
N_PLUS_ONE_PER_XACT = 5.0  # calls per transaction of the database: a loop, not one call each
WIDE_COLUMNS = 10
WIDE_BYTES = 400
MISESTIMATE_FACTOR = 10.0
MISESTIMATE_MIN_ROWS = 100

_FUNCTION_ON_COLUMN = re.compile(
    r"(?P<expr>\b(?P<fn>[a-z_][a-z0-9_]*)\((?P<col>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)\))"
    r"\s*(?:=|<>|<=|>=|<|>|~~\*?|!~~)",
    re.IGNORECASE,
)
_CAST_ON_COLUMN = re.compile(
    r"(?P<expr>\((?P<col>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)\)::(?P<type>[a-z_][a-z0-9_ ]*?))"
    r"\s*(?:=|<>|<=|>=|<|>)",
    re.IGNORECASE,
)
_HARMLESS_CASTS = frozenset({"text", "character varying", "bpchar", "name", "varchar"})
_NOT_FUNCTIONS = frozenset({"any", "all", "array", "row", "in"})


def _rows(n: float) -> str:
    return f"{n:,.0f}"


def _output_rows(node: Node, parent: Node | None) -> float:
    """Rows a scan returns in total (a parallel scan's estimate is per process)."""
    if "Actual Rows" in node:
        return nodes.actual_total_rows(node)
    if node.get("Parallel Aware") and parent and parent.get("Node Type", "").startswith("Gather"):
        return float(parent.get("Plan Rows", 0.0))
    return float(node.get("Plan Rows", 0.0))


def _table_rows(doc: Mapping[str, Any], node: Node) -> float:
    known = nodes.relation_rows(doc, node)
    if known or "Rows Removed by Filter" not in node:
        return known
    loops = float(node.get("Actual Loops", 1.0))
    return (float(node.get("Actual Rows", 0.0)) + float(node["Rows Removed by Filter"])) * loops


def seq_scan_selective(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """A sequential scan of a large relation whose filter keeps few of its rows."""
    found = []
    for node, parent in nodes.walk(nodes.top(doc)):
        if node.get("Node Type") != "Seq Scan" or "Filter" not in node:
            continue
        table = _table_rows(doc, node)
        kept = _output_rows(node, parent)
        if table < LARGE_RELATION_ROWS or kept > table * SELECTIVE_FRACTION:
            continue
        evidence = [
            f"Seq Scan on {node['Relation Name']} reads ~{_rows(table)} rows to keep "
            f"~{_rows(kept)} ({kept / table:.2%})",
            f"filter: {node['Filter']}",
        ]
        if stats is not None and stats.calls:
            evidence.append(f"pg_stat_statements: {stats.rows_per_call:,.1f} rows per call")
        found.append(
            Finding(
                "seq_scan_selective",
                Severity.HIGH if table >= HUGE_RELATION_ROWS else Severity.WARN,
                f"sequential scan of {node['Relation Name']} ({_rows(table)} rows) "
                "for a selective filter",
                tuple(evidence),
                nodes.relation_key(node),
                "an index on the filtered columns (see the index advice)",
            )
        )
    return found


def _blocking_expressions(text: str) -> list[str]:
    found = [
        m["expr"]
        for m in _FUNCTION_ON_COLUMN.finditer(text)
        if m["fn"].lower() not in _NOT_FUNCTIONS
    ]
    found += [
        m["expr"]
        for m in _CAST_ON_COLUMN.finditer(text)
        if m["type"].strip().lower() not in _HARMLESS_CASTS
    ]
    return found


def function_on_column(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """A function or cast applied to a column in a filter: a plain index on it cannot be used."""
    found = []
    for node in nodes.nodes(doc):
        if node.get("Node Type") not in nodes.SCANS or "Filter" not in node:
            continue
        rows = _table_rows(doc, node)
        if rows and rows < LARGE_RELATION_ROWS:
            continue
        for expr in _blocking_expressions(str(node["Filter"])):
            found.append(
                Finding(
                    "function_on_column",
                    Severity.WARN,
                    f"{expr} on {node.get('Relation Name')} cannot use an index on the bare column",
                    (f"filter: {node['Filter']}",),
                    nodes.relation_key(node),
                    f"index the expression: CREATE INDEX ... ({expr}), or compare the bare column",
                )
            )
    return found


def _spill(node: Node) -> str | None:
    kind = node.get("Node Type")
    if kind in {"Sort", "Incremental Sort"} and (
        node.get("Sort Space Type") == "Disk" or "external" in str(node.get("Sort Method", ""))
    ):
        return f"{kind} on {node.get('Sort Key')}: {node.get('Sort Method')}, " + (
            f"{node.get('Sort Space Used', '?')} kB on disk"
        )
    if (
        kind == "Hash"
        and max(node.get("Hash Batches", 1), node.get("Original Hash Batches", 1)) > 1
    ):
        return f"Hash in {node.get('Hash Batches')} batches (peak memory {node.get('Peak Memory Usage')} kB)"
    if kind == "Aggregate" and (
        node.get("HashAgg Batches", 0) > 1 or node.get("Disk Usage", 0) > 0
    ):
        return f"HashAggregate in {node.get('HashAgg Batches')} batches, {node.get('Disk Usage')} kB on disk"
    return None


def spill_to_disk(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """A sort, hash or hash aggregate that did not fit in work_mem and went to temp files."""
    evidence = [s for n in nodes.nodes(doc) if (s := _spill(n))]
    sorts = any(n.get("Node Type") in {"Sort", "Hash", "Aggregate"} for n in nodes.nodes(doc))
    if stats is not None and stats.temp_blks_written and sorts:
        per_call = stats.temp_blks_written / max(stats.calls, 1)
        evidence.append(f"pg_stat_statements: {per_call:,.0f} temp blocks written per call")
    if not evidence:
        return []
    return [
        Finding(
            "spill_to_disk",
            Severity.WARN,
            "sort or hash spills to disk",
            tuple(evidence),
            None,
            "raise work_mem for this statement (SET LOCAL work_mem), sort fewer rows, or serve "
            "the order from an index",
        )
    ]


def _children(node: Node) -> dict[str, Node]:
    return {str(c.get("Parent Relationship")): c for c in node.get("Plans", ())}


def _rows_per_loop(node: Node) -> float:
    return float(node.get("Actual Rows", node.get("Plan Rows", 0.0)))


def _inner_visits(doc: Mapping[str, Any], inner: Node) -> tuple[float, str]:
    """Rows the inner side touches on each loop, and what it is."""
    scan = inner
    while scan.get("Node Type") == "Materialize" and scan.get("Plans"):
        scan = scan["Plans"][0]
    if scan.get("Node Type") == "Seq Scan":
        return max(_table_rows(doc, scan), _rows_per_loop(inner)), nodes.describe(scan)
    return _rows_per_loop(inner), nodes.describe(scan)


def nested_loop_large_inner(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """A nested loop that walks a large inner side once per outer row."""
    found = []
    for node in nodes.nodes(doc):
        if node.get("Node Type") != "Nested Loop":
            continue
        sides = _children(node)
        if "Outer" not in sides or "Inner" not in sides:
            continue
        loops = (
            nodes.actual_total_rows(sides["Outer"])
            if "Actual Rows" in sides["Outer"]
            else float(sides["Outer"].get("Plan Rows", 0.0))
        )
        visits, what = _inner_visits(doc, sides["Inner"])
        if loops < NESTED_LOOP_MIN_LOOPS or loops * visits < NESTED_LOOP_WORK:
            continue
        found.append(
            Finding(
                "nested_loop_large_inner",
                Severity.HIGH,
                f"nested loop repeats {what} for each of ~{_rows(loops)} outer rows",
                (f"~{_rows(loops)} loops x ~{_rows(visits)} inner rows = {_rows(loops * visits)}",),
                nodes.relation_key(sides["Inner"]),
                "index the inner side's join key, or make the join an equality the planner can hash",
            )
        )
    return found


def _sort_under_limit(node: Node) -> Node | None:
    child = node
    while child.get("Plans"):
        child = child["Plans"][0]
        kind = child.get("Node Type")
        if kind in {"Sort", "Incremental Sort"}:
            return dict(child)
        if kind not in {"Gather Merge", "Gather", "Result"}:
            return None
    return None


def _largest_scan(doc: Mapping[str, Any], node: Node) -> tuple[float, Node | None]:
    best: tuple[float, Node | None] = (0.0, None)
    for n, _ in nodes.walk(node):
        if n.get("Node Type") == "Seq Scan":
            rows = _table_rows(doc, n)
            if rows > best[0]:
                best = (rows, n)
    return best


def order_limit_without_index(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """ORDER BY ... LIMIT answered by sorting a whole large table: no index gives the order."""
    found = []
    for node in nodes.nodes(doc):
        if node.get("Node Type") != "Limit":
            continue
        sort = _sort_under_limit(node)
        if sort is None:
            continue
        rows, scan = _largest_scan(doc, sort)
        if scan is None or rows < LARGE_RELATION_ROWS:
            continue
        keys = ", ".join(sort.get("Sort Key", ()))
        found.append(
            Finding(
                "order_limit_without_index",
                Severity.WARN,
                f"ORDER BY {keys} LIMIT sorts ~{_rows(rows)} rows of {scan['Relation Name']}",
                (f"Limit over {nodes.describe(sort)} over {nodes.describe(scan)}",),
                nodes.relation_key(scan),
                f"an index on ({keys}) returns the first rows in order without a sort",
            )
        )
    return found


def n_plus_one(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """Very many calls returning one row each, many per transaction: a loop in the application.

    A high rate of one-row statements alone is no N+1 (pgbench's TPC-B runs each once per
    transaction): when the window's transactions are known, at least ``N_PLUS_ONE_PER_XACT`` calls
    per transaction are required.
    """
    if stats is None or stats.calls < N_PLUS_ONE_CALLS or stats.calls_per_s < N_PLUS_ONE_RATE:
        return []
    if not 0 < stats.rows_per_call <= 1.0:
        return []
    per_xact = stats.calls_per_xact
    if per_xact is not None and per_xact < N_PLUS_ONE_PER_XACT:
        return []  # a busy one-row statement run once or twice per transaction is no loop
    loop = (
        f"pg_stat_database: {per_xact:,.1f} calls per transaction ({stats.xacts:,.0f} transactions)"
        if per_xact is not None
        else "calls per transaction unknown (no pg_stat_database figures for the window)"
    )
    return [
        Finding(
            "n_plus_one",
            Severity.WARN,
            f"{stats.calls_per_s:,.0f} calls/s returning {stats.rows_per_call:.2f} rows each: "
            "the signature of N+1 queries",
            (
                f"pg_stat_statements: {stats.calls:,.0f} calls, {stats.rows:,.0f} rows, "
                f"{stats.mean_ms:.3f} ms mean",
                loop,
            ),
            None,
            "fetch the rows in one statement (WHERE id = ANY($1) or a JOIN) instead of one per row",
        )
    ]


def _selects_star(text: str) -> bool:
    try:
        statements = parse_sql(text)
    except ParseError:
        return False
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        return False
    targets = statements[0].stmt.targetList or ()
    return any(
        isinstance(t.val, ast.ColumnRef) and isinstance((t.val.fields or (None,))[-1], ast.A_Star)
        for t in targets
    )


def wide_select_star(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """SELECT * of a wide relation: every column travels, index-only scans are impossible."""
    text = str(doc.get("Query Text", ""))
    if not text or not _selects_star(text):
        return []
    width = int(nodes.top(doc).get("Plan Width", 0))
    columns = max(
        (int(nodes.relation_facts(doc, n).get("columns", 0)) for n in nodes.nodes(doc)), default=0
    )
    if width < WIDE_BYTES and columns < WIDE_COLUMNS:
        return []
    return [
        Finding(
            "wide_select_star",
            Severity.INFO,
            f"SELECT * returns {columns or '?'} columns, ~{width} bytes per row",
            (f"plan width {width} bytes", f"widest relation: {columns} columns"),
            None,
            "name the columns the code uses",
        )
    ]


def row_misestimate(doc: Mapping[str, Any], stats: QueryStats | None) -> list[Finding]:
    """An ANALYZE plan whose row estimates are off by 10x or more (stale or missing statistics)."""
    worst: list[tuple[float, Node]] = []
    for node in nodes.nodes(doc):
        if "Actual Rows" not in node or not node.get("Actual Loops"):
            continue
        est, act = float(node.get("Plan Rows", 0.0)), float(node["Actual Rows"])
        if max(est, act) < MISESTIMATE_MIN_ROWS:
            continue
        factor = max(est, act) / max(min(est, act), 1.0)
        if factor >= MISESTIMATE_FACTOR:
            worst.append((factor, node))
    worst.sort(key=lambda pair: -pair[0])
    return [
        Finding(
            "row_misestimate",
            Severity.WARN,
            f"{nodes.describe(node)}: estimated {_rows(float(node['Plan Rows']))} rows, "
            f"got {_rows(float(node['Actual Rows']))} ({factor:,.0f}x off)",
            (f"rows per loop, {node.get('Actual Loops')} loops",),
            nodes.relation_key(node),
            "ANALYZE the table; for correlated columns CREATE STATISTICS",
        )
        for factor, node in worst[:3]
    ]


RULES: tuple[Rule, ...] = (
    seq_scan_selective,
    function_on_column,
    spill_to_disk,
    nested_loop_large_inner,
    order_limit_without_index,
    n_plus_one,
    wide_select_star,
    row_misestimate,
)


def find(doc: Mapping[str, Any], stats: QueryStats | None = None) -> list[Finding]:
    """Every rule's findings, the most severe first."""
    order = {Severity.HIGH: 0, Severity.WARN: 1, Severity.INFO: 2}
    found = [f for rule in RULES for f in rule(doc, stats)]
    return sorted(found, key=lambda f: order[f.severity])
