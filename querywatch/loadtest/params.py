"""Parameters for a load test: read from a file, or sampled from the tables the statement reads.

A statement's ``$n`` placeholders are traced to what they are compared with (``lower(o.email) =
$1``, ``i.sku IN ($2, $3)``), assigned to (``SET qty = $1``, ``INSERT ... VALUES ($1)``) or limit
(``LIMIT $4``, ``OFFSET $5``, which get 10 and 0). Sampling then reads real values of those
expressions from their table, one query per table so that values from one row stay together.

>>> [(s.number, s.table, s.expression) for s in param_sources(
...     "SELECT * FROM shop.orders o WHERE lower(o.email) = $1 LIMIT $2")]
[(1, 'shop.orders', 'lower(o.email)'), (2, '', '10')]
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from psycopg import sql

from ..errors import InputError

SAMPLE_ROWS = 2000
LIMIT_DEFAULT = 10
OFFSET_DEFAULT = 0
RELTUPLES = "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = %s::regclass"


@dataclass(frozen=True)
class ParamSource:
    """Where values for ``$number`` come from: an expression over ``table AS alias``.

    For LIMIT and OFFSET, ``table`` is empty and ``expression`` is the constant used.
    """

    number: int
    table: str
    alias: str
    expression: str


# -- reading a file ---------------------------------------------------------------------------------
def read_params(path: Path) -> list[tuple[Any, ...]]:
    """Parameter rows from .json (a list of lists), .jsonl (a list per line) or .csv."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--params: cannot read {str(path)!r}: {exc.strerror}") from None
    rows = _parse_rows(path, text)
    if not rows:
        raise InputError(f"--params: {str(path)!r} holds no parameter rows")
    return rows


def _parse_rows(path: Path, text: str) -> list[tuple[Any, ...]]:
    try:
        if path.suffix == ".csv":
            return [tuple(r) for r in csv.reader(text.splitlines()) if r]
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except (json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"--params: {str(path)!r} is not valid: {exc}") from None
    if not isinstance(items, list):
        raise InputError(f"--params: {str(path)!r} must hold a list of parameter rows")
    return [tuple(i) if isinstance(i, list) else (i,) for i in items]


# -- tracing placeholders --------------------------------------------------------------------------
def param_sources(query: str) -> list[ParamSource]:
    """Where each ``$n`` of ``query`` takes its values from, ordered by number."""
    try:
        statements = parse_sql(query)
    except ParseError as exc:
        raise InputError(f"loadtest: the statement does not parse: {exc}") from None
    if len(statements) != 1:
        raise InputError(f"loadtest: give exactly one statement, not {len(statements)}")
    root: Any = statements[0].stmt
    tables = _tables(root)
    found: dict[int, ParamSource] = {}
    for number, expr in _bound(root):
        if number not in found:
            found[number] = _source(number, expr, tables)
    missing = sorted(set(_numbers(root)) - set(found))
    if missing:
        raise InputError(
            f"loadtest: cannot tell where ${missing[0]} takes its values from "
            "(fix: pass --params FILE)"
        )
    return [found[n] for n in sorted(found)]


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, list | tuple):
        yield from node
    elif isinstance(node, ast.Node):
        for name in getattr(type(node), "__slots__", ()):
            yield getattr(node, name)


def _walk(node: Any) -> Iterator[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
    for child in _children(node):
        if isinstance(child, ast.Node | list | tuple):
            yield from _walk(child)


def _numbers(root: Any) -> Iterator[int]:
    return (int(getattr(n, "number", 0)) for n in _walk(root) if isinstance(n, ast.ParamRef))


def _tables(root: Any) -> dict[str, tuple[str, str]]:
    """alias or name -> (qualified table, alias) of every table the statement names."""
    out: dict[str, tuple[str, str]] = {}
    node: Any
    for node in _walk(root):
        if isinstance(node, ast.RangeVar):
            name = ".".join(p for p in (node.schemaname, node.relname) if p)
            alias = str(node.alias.aliasname if node.alias else node.relname)
            out[alias] = (name, alias)
    return out


def _bound(root: Any) -> Iterator[tuple[int, Any]]:
    """(placeholder number, the expression or marker it is bound to)."""
    node: Any
    for node in _walk(root):
        if isinstance(node, ast.A_Expr):
            yield from _compared(node)
        elif isinstance(node, ast.SelectStmt):
            for clause, value in ((node.limitCount, "limit"), (node.limitOffset, "offset")):
                if _is_param(clause):
                    yield _number(clause), value
        elif isinstance(node, ast.InsertStmt):
            yield from _inserted(node)
        elif isinstance(node, ast.UpdateStmt):
            for target in node.targetList or ():
                if _is_param(target.val):
                    yield _number(target.val), _column(node.relation, target.name)


def _compared(node: Any) -> Iterator[tuple[int, Any]]:
    sides = [node.lexpr, node.rexpr]
    for mine, other in (sides, sides[::-1]):
        params = mine if isinstance(mine, list | tuple) else [mine]
        for p in params:
            if _is_param(p) and any(isinstance(n, ast.ColumnRef) for n in _walk(other)):
                yield _number(p), other


def _is_param(node: Any) -> bool:
    return isinstance(node, ast.ParamRef)


def _number(node: Any) -> int:
    return int(node.number)


def _inserted(node: Any) -> Iterator[tuple[int, Any]]:
    select = node.selectStmt
    if not isinstance(select, ast.SelectStmt) or not node.cols:
        return
    for row in select.valuesLists or ():
        for target, value in zip(node.cols, row, strict=False):
            if _is_param(value):
                yield _number(value), _column(node.relation, target.name)


def _column(relation: Any, name: str) -> Any:
    alias = relation.alias.aliasname if relation.alias else relation.relname
    return ast.ColumnRef(fields=(ast.String(sval=alias), ast.String(sval=name)))


def _source(number: int, expr: Any, tables: dict[str, tuple[str, str]]) -> ParamSource:
    if expr == "limit":
        return ParamSource(number, "", "", str(LIMIT_DEFAULT))
    if expr == "offset":
        return ParamSource(number, "", "", str(OFFSET_DEFAULT))
    refs: list[Any] = [n for n in _walk(expr) if isinstance(n, ast.ColumnRef)]
    qualifiers = {
        n.fields[0].sval for n in refs if len(n.fields) > 1 and isinstance(n.fields[0], ast.String)
    }
    if len(qualifiers) == 1 and (q := qualifiers.pop()) in tables:
        table, alias = tables[q]
    elif not qualifiers and len({t for t in tables.values()}) == 1:
        table, alias = next(iter(tables.values()))
    else:
        raise InputError(
            f"loadtest: cannot tell which table ${number} belongs to (fix: pass --params FILE)"
        )
    return ParamSource(number, table, alias, RawStream()(expr))


# -- sampling ---------------------------------------------------------------------------------------
def sample_params(
    conn: psycopg.Connection[Any], query: str, rows: int = SAMPLE_ROWS, seed: int = 1
) -> list[tuple[Any, ...]]:
    """Parameter rows built from real values of the statement's tables (read-only queries)."""
    sources = param_sources(query)
    if not sources:
        return [()]
    by_table: dict[tuple[str, str], list[ParamSource]] = {}
    for s in sources:
        by_table.setdefault((s.table, s.alias), []).append(s)
    columns: dict[int, list[Any]] = {}
    rng = random.Random(seed)
    samples: list[tuple[list[ParamSource], list[tuple[Any, ...]]]] = []
    for (table, alias), group in by_table.items():
        if not table:
            for s in group:
                columns[s.number] = [int(s.expression)]
            continue
        samples.append((group, _sample_table(conn, table, alias, group, rows)))
    result = []
    for _ in range(rows):
        values = dict((n, rng.choice(v)) for n, v in columns.items())
        for group, table_rows in samples:
            picked = rng.choice(table_rows)
            values.update((s.number, picked[k]) for k, s in enumerate(group))
        result.append(tuple(values[s.number] for s in sources))
    return result


def _sample_table(
    conn: psycopg.Connection[Any],
    table: str,
    alias: str,
    group: Sequence[ParamSource],
    rows: int,
) -> list[tuple[Any, ...]]:
    # The expressions are the statement's own, deparsed by pglast from the parsed tree; the table
    # and alias are identifiers. The query only reads (the transaction is read-only).
    exprs = sql.SQL(", ").join(sql.SQL(s.expression) for s in group)
    target = sql.SQL(".").join(sql.Identifier(p) for p in table.split("."))
    not_null = sql.SQL(" AND ").join(
        sql.SQL("({}) IS NOT NULL").format(sql.SQL(s.expression)) for s in group
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(RELTUPLES, (table,))
        reltuples = float((cur.fetchone() or (0.0,))[0])
        percent = min(100.0, max(0.001, 100.0 * rows * 2 / reltuples)) if reltuples else 100.0
        query = sql.SQL(
            "SELECT {exprs} FROM {target} AS {alias} TABLESAMPLE BERNOULLI ({percent}) "
            "WHERE {not_null} LIMIT {rows}"
        ).format(
            exprs=exprs,
            target=target,
            alias=sql.Identifier(alias),
            percent=sql.Literal(percent),
            not_null=not_null,
            rows=sql.Literal(rows),
        )
        found = cur.execute(query).fetchall()
        if not found:
            plain = sql.SQL("SELECT {exprs} FROM {target} AS {alias} WHERE {nn} LIMIT {rows}")
            found = cur.execute(
                plain.format(
                    exprs=exprs,
                    target=target,
                    alias=sql.Identifier(alias),
                    nn=not_null,
                    rows=sql.Literal(rows),
                )
            ).fetchall()
    if not found:
        raise InputError(f"loadtest: table {table!r} has no rows to sample parameters from")
    return [tuple(r) for r in found]
