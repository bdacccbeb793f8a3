"""Index candidates that column statistics shape: IS NULL and rare values (partial or plain
indexes), append-only time columns (BRIN or B-tree), with the reason for each choice.

:func:`refine` takes the parse tree's candidates (:mod:`querywatch.advise.candidates`) and the
columns' statistics (pg_stats: null fraction, most common values and their frequencies,
correlation) and returns what to verify:

* ``col IS NULL`` on a column whose null fraction is rare becomes a partial index
  ``... WHERE col IS NULL`` (only those rows are indexed); a common one is no candidate at all;
* ``col = 'value'`` written as a constant, a rare most common value: a partial index on it;
* ``col = $1`` on a skewed column: a generic plan assumes ``1 / n_distinct`` of the rows and hides
  the value. When pg_stat_statements' rows per call say the values queried are rare, the plain
  index is verified with the most common value of that frequency in place of ``$1``;
* a lone range on a column stored in its order (correlation near 1) of a large table becomes a
  BRIN index; otherwise, and for ORDER BY (BRIN gives no order), B-tree, and the advice says why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, NullTestType
from pglast.parser import ParseError
from pglast.stream import maybe_double_quote_name as quote_ident

from . import candidates as cands
from . import savings
from .records import IndexCandidate, IndexFact, KeyPart, QueryStats, TableFact

RARE_FRACTION = 0.05  # a value (or NULL) held by at most 5% of the rows is rare
SMALL_TABLE_ROWS = 10_000  # a sequential scan of fewer rows is cheap: no index for them
BRIN_MIN_ROWS = 100_000
BRIN_MIN_CORRELATION = 0.9
BRIN_PAGES_PER_RANGE = 128  # the default pages_per_range
# PostgreSQL prices a bitmap heap scan by the Mackert-Lohman formula, as if the matching rows were
# scattered over the table: even a real BRIN index on an append-only column is priced at about half
# a sequential scan (measured: 2,827 vs 5,435 for 1% of 200,000 rows). A BRIN candidate the plan
# uses must remove a quarter of the cost; its saving comes from the block ranges it reads.
BRIN_MIN_COST_RATIO = 0.25
# Measured on this project's machine: each B-tree index adds ~0.011-0.014 ms to each row inserted or
# updated (200,000 rows, int and text keys); BRIN indexes are summarized per block range.
INDEX_WRITE_MS = 0.012
BRIN_WRITE_MS = 0.001
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
RECENT_SHARE = 0.01  # the newest 1% of the rows, when pg_stat_statements gives no rows per call

# pg_stats filters every column of the database by privilege before any join: naming the wanted
# relations in its own WHERE lets the planner look them up by name (4x faster on a small schema).
COLUMN_STATS = """
WITH wanted AS MATERIALIZED (
    SELECT n.nspname, c.relname, c.reltuples::float8 AS rows
    FROM unnest(%(names)s::text[]) AS w(name)
    JOIN pg_class c ON c.oid = to_regclass(w.name)
    JOIN pg_namespace n ON n.oid = c.relnamespace
)
SELECT s.tablename AS table, s.attname AS column, s.null_frac::float8 AS null_frac,
       s.n_distinct::float8 AS n_distinct, s.correlation::float8 AS correlation,
       s.most_common_vals::text AS mcv, s.most_common_freqs::float8[] AS freqs,
       s.histogram_bounds::text AS bounds, w.rows
FROM pg_stats s
JOIN wanted w ON w.nspname = s.schemaname AND w.relname = s.tablename
WHERE s.tablename = ANY(ARRAY(SELECT relname FROM wanted))
"""


@dataclass(frozen=True, slots=True)
class ColumnStats:
    """One column's pg_stats figures."""

    null_frac: float
    n_distinct: float  # as pg_stats has it: negative is a fraction of the rows
    correlation: float | None
    values: tuple[str, ...] = ()  # most common values, as text
    freqs: tuple[float, ...] = ()
    bounds: tuple[str, ...] = ()  # histogram bounds, as text
    table_rows: float = 0.0  # reltuples of its table


@dataclass(frozen=True, slots=True)
class Planned:
    """A candidate to verify, the statement text to plan it with, and why it has this shape."""

    candidate: IndexCandidate
    plan_text: str | None = None  # None: the statement itself
    why: tuple[str, ...] = ()
    share: float | None = None  # a BRIN range's share of the rows, as verified


def _array_items(text: str | None) -> tuple[str, ...]:
    """The items of an array's text form ({a,"b c",NULL}) as text."""
    if not text or len(text) < 2:
        return ()
    items = re.findall(r'"((?:[^"\\]|\\.)*)"|([^,{}]+)', text[1:-1])
    return tuple(re.sub(r"\\(.)", r"\1", q) if q else plain for q, plain in items)


def column_stats(
    cur: psycopg.Cursor[Any], names: Sequence[str]
) -> dict[tuple[str, str], ColumnStats]:
    """(table, column) -> its pg_stats figures, for the named tables."""
    if not names:
        return {}
    cur.execute(COLUMN_STATS, {"names": list(names)})
    return {
        (r["table"], r["column"]): ColumnStats(
            float(r["null_frac"] or 0.0),
            float(r["n_distinct"] or 0.0),
            None if r["correlation"] is None else float(r["correlation"]),
            _array_items(r["mcv"]),
            tuple(float(f) for f in r["freqs"] or ()),
            _array_items(r["bounds"]),
            max(float(r["rows"]), 0.0),
        )
        for r in cur.fetchall()
    }


def distinct_values(stats: Mapping[tuple[str, str], ColumnStats]) -> dict[tuple[str, str], float]:
    """(table, column) -> estimated number of distinct values (as catalog.distinct_values)."""
    return {key: _distinct(col, col.table_rows) for key, col in stats.items()}


# -- what the statement says ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Facts:
    nulls: dict[str, list[str]]  # table -> columns tested IS NULL
    params: dict[tuple[str, str], int]  # (table, column) -> the $n it is compared with
    consts: dict[tuple[str, str], str]  # (table, column) -> the constant it equals
    # (table, column) -> (lower | upper, $n) of its range predicates against parameters
    ranges: dict[tuple[str, str], list[tuple[str, int]]]


def _facts(text: str, columns: Mapping[str, frozenset[str]]) -> _Facts | None:
    try:
        statements = parse_sql(text)
    except ParseError:
        return None
    if len(statements) != 1:
        return None
    scope, _ = cands._scope(statements[0].stmt)
    facts = _Facts({}, {}, {}, {})
    for qual in scope.quals:
        for table, column, side, number in _range_params(qual, scope, columns):
            facts.ranges.setdefault((table, column), []).append((side, number))
        for table, column, kind, value in _predicates(qual, scope, columns):
            if kind == "null":
                facts.nulls.setdefault(table, []).append(column)
            elif kind == "param":
                facts.params[(table, column)] = int(value)
            else:
                facts.consts[(table, column)] = value
    return facts


def _predicates(
    qual: object, scope: cands._Scope, columns: Mapping[str, frozenset[str]]
) -> Iterator[tuple[str, str, str, str]]:
    """(table, column, null | param | const, $n or the constant) of one conjunct."""
    side: object = None
    kind, value = "", ""
    if isinstance(qual, ast.NullTest) and qual.nulltesttype == NullTestType.IS_NULL:
        side, kind = qual.arg, "null"
    elif (
        isinstance(qual, ast.A_Expr)
        and qual.kind == A_Expr_Kind.AEXPR_OP
        and cands._operator(qual) == "="
    ):
        for col, other in ((qual.lexpr, qual.rexpr), (qual.rexpr, qual.lexpr)):
            if not isinstance(col, ast.ColumnRef):
                continue
            if isinstance(other, ast.ParamRef):
                side, kind, value = col, "param", str(other.number)
            elif isinstance(other, ast.A_Const) and isinstance(other.val, ast.String):
                side, kind, value = col, "const", str(other.val.sval)
            elif isinstance(other, ast.A_Const) and isinstance(other.val, ast.Integer):
                side, kind, value = col, "const", str(other.val.ival)
    if not isinstance(side, ast.ColumnRef) or (term := cands._term(side)) is None:
        return
    alias = cands._resolve(term, scope, columns)
    if alias is not None:
        yield scope.tables[alias].name, term.column, kind, value


def _param(node: object) -> int | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return int(node.number or 0) if isinstance(node, ast.ParamRef) else None


_LOWER = {">": "lower", ">=": "lower", "<": "upper", "<=": "upper"}
_FLIP = {"lower": "upper", "upper": "lower"}


def _range_params(
    qual: object, scope: cands._Scope, columns: Mapping[str, frozenset[str]]
) -> Iterator[tuple[str, str, str, int]]:
    """(table, column, lower | upper, $n) of a range predicate comparing a column and a parameter."""
    if not isinstance(qual, ast.A_Expr):
        return
    found: list[tuple[object, str, int]] = []
    if qual.kind == A_Expr_Kind.AEXPR_BETWEEN and isinstance(qual.rexpr, tuple | list):
        low, high = (_param(v) for v in qual.rexpr)
        found += [(qual.lexpr, "lower", low)] if low else []
        found += [(qual.lexpr, "upper", high)] if high else []
    elif qual.kind == A_Expr_Kind.AEXPR_OP and cands._operator(qual) in _LOWER:
        side = _LOWER[cands._operator(qual)]
        if (n := _param(qual.rexpr)) is not None:
            found.append((qual.lexpr, side, n))
        elif (n := _param(qual.lexpr)) is not None:
            found.append((qual.rexpr, _FLIP[side], n))
    for node, side, number in found:
        if not isinstance(node, ast.ColumnRef) or (term := cands._term(node)) is None:
            continue
        alias = cands._resolve(term, scope, columns)
        if alias is not None:
            yield scope.tables[alias].name, term.column, side, number


# -- the families ---------------------------------------------------------------------------------
def refine(
    text: str,
    found: Sequence[IndexCandidate],
    columns: Mapping[str, frozenset[str]],
    stats: Mapping[tuple[str, str], ColumnStats],
    rows: Mapping[str, float],
    query: QueryStats | None,
    rows_match: bool,
) -> tuple[list[Planned], list[str]]:
    """The candidates to verify (partial, BRIN, rare-value ones in place of plain ones) and notes."""
    facts = _facts(text, columns) or _Facts({}, {}, {}, {})
    notes: list[str] = []
    planned: list[Planned] = []
    tables = {c.table for c in found}
    for candidate in found:
        planned.append(_one(text, candidate, facts, stats, rows, query, rows_match, notes))
    for table, nulls in facts.nulls.items():
        if table in tables:
            continue
        rare = [c for c in nulls if (s := stats.get((table, c))) and s.null_frac <= RARE_FRACTION]
        col = rare[0] if rare else nulls[0]
        seed = IndexCandidate(
            None, table, (KeyPart(quote_ident(col), col, "equality"),), f"IS NULL on {col}"
        )
        partial = _null_partial(seed, nulls, stats, rows, notes)
        if partial is not None:
            planned.append(partial)
    return planned, notes


def _one(
    text: str,
    candidate: IndexCandidate,
    facts: _Facts,
    stats: Mapping[tuple[str, str], ColumnStats],
    rows: Mapping[str, float],
    query: QueryStats | None,
    rows_match: bool,
    notes: list[str],
) -> Planned:
    table = candidate.table
    if facts.nulls.get(table):
        partial = _null_partial(candidate, facts.nulls[table], stats, rows, notes)
        if partial is not None:
            return partial
    for key in candidate.keys:
        if key.role != "equality" or key.expression:
            continue
        if (table, key.column) in facts.consts:
            partial = _const_partial(candidate, key, facts.consts[(table, key.column)], stats)
            if partial is not None:
                return partial
        if (table, key.column) in facts.params:
            rare = _rare_param(
                text,
                candidate,
                key,
                facts.params[(table, key.column)],
                stats,
                rows,
                query,
                rows_match,
            )
            if rare is not None:
                return rare
    return _time_column(text, candidate, facts, stats, rows, query, rows_match)


def _null_partial(
    candidate: IndexCandidate,
    nulls: Sequence[str],
    stats: Mapping[tuple[str, str], ColumnStats],
    rows: Mapping[str, float],
    notes: list[str],
) -> Planned | None:
    rare = [
        c for c in nulls if (s := stats.get((candidate.table, c))) and s.null_frac <= RARE_FRACTION
    ]
    common = [c for c in nulls if c not in rare and (candidate.table, c) in stats]
    for c in common:
        notes.append(
            f"{c} IS NULL on {candidate.table}: {stats[(candidate.table, c)].null_frac:.0%} of the "
            "rows are NULL, too many for an index to help"
        )
    if not rare:
        return None
    predicate = " AND ".join(f"{quote_ident(c)} IS NULL" for c in rare)
    why = tuple(
        f"pg_stats: {c} is NULL in {stats[(candidate.table, c)].null_frac:.2%} of "
        f"{rows.get(candidate.table, 0.0):,.0f} rows: a partial index holds only those rows"
        for c in rare
    )
    return Planned(
        replace(candidate, predicate=predicate, reason=f"{candidate.reason}; {predicate}"),
        None,
        why,
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _const_partial(
    candidate: IndexCandidate,
    key: KeyPart,
    value: str,
    stats: Mapping[tuple[str, str], ColumnStats],
) -> Planned | None:
    """``col = 'value'`` (a constant) with a rare most common value: index only those rows."""
    col = stats.get((candidate.table, key.column))
    if col is None or value not in col.values:
        return None
    freq = col.freqs[col.values.index(value)]
    if freq > RARE_FRACTION:
        return None
    rest = tuple(k for k in candidate.keys if k is not key) or (key,)
    predicate = f"{key.text} = {_literal(value)}"
    why = (
        f"pg_stats: {key.column} = {_literal(value)} holds {freq:.2%} of the rows: a partial index "
        "holds only those rows",
    )
    return Planned(
        replace(
            candidate, keys=rest, predicate=predicate, reason=f"{candidate.reason}; {predicate}"
        ),
        None,
        why,
    )


def _distinct(col: ColumnStats, rows: float) -> float:
    return -col.n_distinct * rows if col.n_distinct < 0 else col.n_distinct


def _rare_param(
    text: str,
    candidate: IndexCandidate,
    key: KeyPart,
    number: int,
    stats: Mapping[tuple[str, str], ColumnStats],
    rows: Mapping[str, float],
    query: QueryStats | None,
    rows_match: bool,
) -> Planned | None:
    """``col = $n`` on a skewed column whose queried values are rare (rows per call say so)."""
    col = stats.get((candidate.table, key.column))
    total = rows.get(candidate.table, 0.0)
    if col is None or not col.values or query is None or not query.calls or total <= 0:
        return None
    if not rows_match:
        return None
    queried = query.rows_per_call / total
    distinct = _distinct(col, total)
    if queried > RARE_FRACTION or distinct <= 0 or 1.0 / distinct <= RARE_FRACTION:
        return None  # values queried are common, or the generic plan already sees them as rare
    rare = [(v, f) for v, f in zip(col.values, col.freqs, strict=False) if f <= RARE_FRACTION]
    if not rare:
        return None
    target = max(queried, 1.0 / total)
    value, freq = min(rare, key=lambda vf: abs(math.log(vf[1] / target)))
    why = (
        f"pg_stat_statements: {query.rows_per_call:,.1f} rows per call of {total:,.0f} "
        f"({queried:.2%}): the values queried for {key.column} are rare, while a generic plan "
        f"assumes 1/{distinct:,.0f} of the rows",
        f"pg_stats: {key.column} = {_literal(value)} holds {freq:.2%} of the rows; verified with "
        f"that value in place of ${number}",
    )
    return Planned(candidate, substitute(text, number, _literal(value)), why)


def substitute(text: str, number: int, literal: str) -> str:
    """``text`` with ``$number`` replaced by ``literal`` and the later parameters renumbered."""

    def swap(m: re.Match[str]) -> str:
        n = int(m[1])
        if n == number:
            return literal
        return f"${n - 1}" if n > number else m[0]

    return re.sub(r"\$(\d+)\b", swap, text)


def _time_column(
    text: str,
    candidate: IndexCandidate,
    facts: _Facts,
    stats: Mapping[tuple[str, str], ColumnStats],
    rows: Mapping[str, float],
    query: QueryStats | None,
    rows_match: bool,
) -> Planned:
    """BRIN for a lone range on a column stored in its order of a large table, else B-tree."""
    if len(candidate.keys) != 1 or candidate.keys[0].expression:
        return Planned(candidate)
    key = candidate.keys[0]
    col = stats.get((candidate.table, key.column))
    if col is None or col.correlation is None:
        return Planned(candidate)
    total = rows.get(candidate.table, 0.0)
    corr = abs(col.correlation)
    if key.role == "order":
        if corr < BRIN_MIN_CORRELATION:
            return Planned(candidate)
        return Planned(
            candidate,
            None,
            (
                f"B-tree: ORDER BY {key.text} needs the rows in order, which a BRIN index cannot give",
            ),
        )
    if key.role != "range":
        return Planned(candidate)
    if corr >= BRIN_MIN_CORRELATION and total >= BRIN_MIN_ROWS:
        planned, share, how = _recent_range(
            text, candidate, key, facts, col, total, query, rows_match
        )
        return Planned(
            replace(candidate, method="brin"),
            planned,
            (
                f"BRIN: pg_stats correlation of {key.column} is {col.correlation:.2f} on "
                f"{total:,.0f} rows: the table is stored in {key.column} order (append-only), so "
                "block ranges prune the scan and the index is a few pages instead of a B-tree's "
                "thousands",
                *how,
            ),
            share,
        )
    reason = (
        f"correlation {col.correlation:.2f} < {BRIN_MIN_CORRELATION}: rows are not stored in "
        f"{key.column} order, BRIN would prune no block"
        if corr < BRIN_MIN_CORRELATION
        else f"{total:,.0f} rows < {BRIN_MIN_ROWS:,}: too small for BRIN to pay off"
    )
    return Planned(candidate, None, (f"B-tree: {reason}",))


# -- equivalence with existing indexes ------------------------------------------------------------
def _normal_predicate(text: str) -> str:
    return re.sub(r'::[a-z ]+|[\s"()]', "", text.lower())


def _predicate_columns(predicate: str) -> list[str]:
    try:
        [stmt] = parse_sql(f"SELECT 1 WHERE {predicate}")
    except (ParseError, ValueError):
        return []
    return [p[1] for r in cands._column_refs(stmt.stmt) if (p := cands._ref_parts(r))]


def covered_partial(candidate: IndexCandidate, existing: Sequence[IndexFact]) -> str | None:
    """The existing index that already serves a partial candidate, if any."""
    keys = candidate.key_texts
    wanted = _normal_predicate(candidate.predicate)
    mine = [i for i in existing if i.table == candidate.table and i.valid]
    for index in mine:
        same = index.partial and _normal_predicate(index.predicate) == wanted
        if same and cands.covered(keys, [index.keys]):
            return index.name
    extra = [quote_ident(c) for c in _predicate_columns(candidate.predicate)]
    full = tuple(dict.fromkeys([*keys, *extra]))
    for index in mine:
        if not index.partial and cands.covered(full, [index.keys]):
            return index.name
    return None


def _recent_range(
    text: str,
    candidate: IndexCandidate,
    key: KeyPart,
    facts: _Facts,
    col: ColumnStats,
    total: float,
    query: QueryStats | None,
    rows_match: bool,
) -> tuple[str | None, float, tuple[str, ...]]:
    """The statement with its range parameters set to the newest rows it reads (rows per call, or
    1%), and how: a generic plan assumes a fixed share of the rows for ``col >= $1`` and prices a
    BRIN scan as if it read most of the table."""
    params = facts.ranges.get((candidate.table, key.column), [])
    bounds = col.bounds
    if not params or len(bounds) < 3:
        return None, RECENT_SHARE, ()
    share, source = RECENT_SHARE, f"{RECENT_SHARE:.0%} of the rows (no rows per call known)"
    if query is not None and query.calls and rows_match and total > 0:
        share = min(max(query.rows_per_call / total, 1.0 / total), 1.0)
        source = f"{share:.2%} of the rows, as pg_stat_statements' rows per call say"
    buckets = len(bounds) - 1
    width = min(max(1, round(share * buckets)), buckets)
    sides = {side for side, _ in params}
    low, high = (
        (bounds[0], bounds[width]) if sides == {"upper"} else (bounds[-1 - width], bounds[-1])
    )
    planned = text
    for side, number in sorted(params, key=lambda p: -p[1]):
        planned = substitute(planned, number, _literal(low if side == "lower" else high))
    how = f"verified with {key.column} from {low} to {high} in place of the parameters: {source}"
    return planned, width / buckets, (how,)


def min_cost_ratio(candidate: IndexCandidate, default: float) -> float:
    """The planner cost a hypothetical index must remove to be proposed (BRIN: see below)."""
    return BRIN_MIN_COST_RATIO if candidate.method == "brin" else default


def brin_estimate(
    candidate: IndexCandidate, plan: Planned, pages: int, est: savings.Estimate
) -> savings.Estimate:
    """A BRIN index's saving from the pages it reads: the share of the rows asked for, rounded up
    to whole block ranges, of a table stored in that column's order."""
    if candidate.method != "brin" or plan.share is None or pages <= 0:
        return est
    ranges = max(1, math.ceil(plan.share * pages / BRIN_PAGES_PER_RANGE))
    read = min(pages, ranges * BRIN_PAGES_PER_RANGE)
    saving = max(0.0, min(savings.MAX_SAVING, 1.0 - read / pages))
    text = (
        f"block ranges: {plan.share:.2%} of {pages:,} pages in {ranges} range(s) of "
        f"{BRIN_PAGES_PER_RANGE} pages: reads ~{read:,} pages instead of {pages:,} (-{saving:.1%}); "
        "the planner prices a bitmap heap scan as if the rows were scattered (it ignores "
        f"correlation there), so a BRIN index needs -{BRIN_MIN_COST_RATIO:.0%} of its cost, not -50%"
    )
    if saving <= est.saving:
        return replace(est, evidence=(*est.evidence, text))
    return savings.Estimate(saving, "brin_pages", (*est.evidence, text))


def system_catalog(candidate: IndexCandidate, fact: TableFact | None) -> bool:
    schema = fact.schema if fact is not None else candidate.schema
    return schema in SYSTEM_SCHEMAS or (schema is None and candidate.table.startswith("pg_"))


def upkeep_exceeds(
    candidate: IndexCandidate, fact: TableFact | None, stats: QueryStats | None, saving: float
) -> str | None:
    """Why an index on a write-heavy table would cost more than it saves, or None.

    The upkeep is the rows written to the table (pg_stat_all_tables) times what an index adds to
    each; the saving is the statement's time (pg_stat_statements) times the fraction saved. Without
    the statement's figures nothing can be weighed: the advice stands, with its write-heavy warning.
    """
    if fact is None or stats is None or stats.total_ms <= 0 or fact.writes <= 0:
        return None
    per_row = BRIN_WRITE_MS if candidate.method == "brin" else INDEX_WRITE_MS
    upkeep = fact.writes * per_row
    saved = stats.total_ms * saving
    if upkeep <= saved:
        return None
    return (
        f"({', '.join(candidate.key_texts)}) on {candidate.table}: would cost more than it saves: "
        f"{fact.writes:,} rows written x ~{per_row} ms of index upkeep = ~{upkeep:,.0f} ms, vs "
        f"~{saved:,.0f} ms saved on this statement ({stats.calls:,.0f} calls, "
        f"{stats.total_ms:,.0f} ms, -{saving:.0%})"
    )
