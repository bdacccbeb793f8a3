"""Pure: index candidates from a statement's parse tree (pglast), their names and their DDL.

Equality predicates and join keys come first, most selective column first (distinct values from
pg_stats), then one range predicate; a second candidate serves ORDER BY (after the equality keys).
A function or cast over one column (``lower(email)``) becomes an expression key.

>>> [c.key_texts for c in candidates("SELECT id FROM users WHERE lower(email) = $1")]
[('lower(email)',)]
>>> ddl(candidates("SELECT * FROM orders WHERE status = $1 ORDER BY created_at LIMIT 5")[1])
'CREATE INDEX CONCURRENTLY orders_status_created_at_idx ON orders (status, created_at);'
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, SortByDir
from pglast.parser import ParseError
from pglast.stream import RawStream
from pglast.stream import maybe_double_quote_name as quote_ident

from . import derived
from .records import IndexCandidate, KeyPart

MAX_EQUALITY_KEYS = 3
NAME_LIMIT = 63  # NAMEDATALEN - 1
_RANGE_OPS = frozenset({"<", ">", "<=", ">="})
_NAME_JUNK = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Table:
    schema: str | None
    name: str


@dataclass(frozen=True, slots=True)
class Term:
    """A column, or an expression over exactly one column, as one side of a predicate."""

    qualifier: str | None
    column: str
    text: str
    expression: bool


def _column_refs(node: object) -> Iterator[ast.ColumnRef]:
    if isinstance(node, ast.ColumnRef):
        yield node
    elif isinstance(node, ast.Node):
        for name in node:
            yield from _column_refs(getattr(node, name))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _column_refs(item)


def _ref_parts(ref: ast.ColumnRef) -> tuple[str | None, str] | None:
    fields = ref.fields or ()
    names = [str(f.sval) for f in fields if isinstance(f, ast.String)]
    if len(names) != len(fields) or not names:
        return None
    return (names[-2] if len(names) > 1 else None), names[-1]


def _term(node: object) -> Term | None:
    """The column (and expression) a predicate side stands for, None if not one column."""
    refs = list(_column_refs(node))
    if len(refs) != 1 or (parts := _ref_parts(refs[0])) is None:
        return None
    qualifier, column = parts
    if isinstance(node, ast.ColumnRef):
        return Term(qualifier, column, quote_ident(column), False)
    if not isinstance(node, ast.FuncCall | ast.TypeCast):
        return None
    if isinstance(node, ast.TypeCast) and isinstance(node.arg, ast.ColumnRef):
        text = f"({quote_ident(column)})::{RawStream()(node.typeName or ())}"
    else:
        text = RawStream()(node)
    if qualifier:
        text = re.sub(rf'(?<![\w"]){re.escape(quote_ident(qualifier))}\.', "", text)
    return Term(qualifier, column, text, True)


def _is_value(node: object) -> bool:
    """A parameter, a constant, or an expression without columns (now(), $1::int, ...)."""
    if isinstance(node, ast.ParamRef | ast.A_Const):
        return True
    if isinstance(node, ast.SubLink):
        return False
    return isinstance(node, ast.Node | tuple) and not list(_column_refs(node))


def _conjuncts(node: object) -> Iterator[object]:
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        for arg in node.args or ():
            yield from _conjuncts(arg)
    elif node is not None:
        yield node


@dataclass
class _Scope:
    tables: dict[str, Table]  # alias (or name) -> table
    quals: list[object]


def _from_items(items: Sequence[object] | None, scope: _Scope) -> None:
    for item in items or ():
        if isinstance(item, ast.RangeVar):
            name = str(item.relname)
            alias = str(item.alias.aliasname) if item.alias else name
            scope.tables[alias] = Table(item.schemaname, name)
        elif isinstance(item, ast.JoinExpr):
            _from_items([item.larg, item.rarg], scope)
            scope.quals.extend(_conjuncts(item.quals))


def _scope(stmt: object) -> tuple[_Scope, Sequence[object]]:
    """Tables, predicates and ORDER BY of a SELECT, UPDATE or DELETE (top level only)."""
    scope = _Scope({}, [])
    sort: Sequence[object] = ()
    if isinstance(stmt, ast.SelectStmt):
        _from_items(stmt.fromClause, scope)
        sort = stmt.sortClause or ()
    elif isinstance(stmt, ast.UpdateStmt):
        _from_items([stmt.relation, *(stmt.fromClause or ())], scope)
    elif isinstance(stmt, ast.DeleteStmt):
        _from_items([stmt.relation, *(stmt.usingClause or ())], scope)
    else:
        return scope, ()
    scope.quals.extend(_conjuncts(stmt.whereClause))
    return scope, sort


def _resolve(term: Term, scope: _Scope, columns: Mapping[str, Collection[str]]) -> str | None:
    """The alias of the table ``term`` belongs to, or None when it cannot be told."""
    if term.qualifier is not None:
        return term.qualifier if term.qualifier in scope.tables else None
    if len(scope.tables) == 1:
        return next(iter(scope.tables))
    owners = [a for a, t in scope.tables.items() if term.column in columns.get(t.name, ())]
    return owners[0] if len(owners) == 1 else None


def _operator(node: ast.A_Expr) -> str:
    return node.name[-1].sval if node.name else ""


def _parts(
    qual: object, scope: _Scope, columns: Mapping[str, Collection[str]]
) -> Iterator[tuple[str, KeyPart]]:
    """(alias, key part) pairs a predicate offers."""
    if not isinstance(qual, ast.A_Expr):
        return
    op = _operator(qual)
    sides: tuple[object, object] = (qual.lexpr, qual.rexpr)
    roles: list[tuple[str, object]]
    if qual.kind == A_Expr_Kind.AEXPR_IN and op == "=":
        roles = [("equality", qual.lexpr)] if _is_value(qual.rexpr) else []
    elif qual.kind == A_Expr_Kind.AEXPR_BETWEEN:
        roles = [("range", qual.lexpr)]
    elif qual.kind == A_Expr_Kind.AEXPR_OP and op in _RANGE_OPS | {"="}:
        role = "equality" if op == "=" else "range"
        if all(isinstance(s, ast.ColumnRef) for s in sides) and op == "=":
            roles = [("join", qual.lexpr), ("join", qual.rexpr)]
        else:
            roles = [(role, a) for a, b in (sides, sides[::-1]) if _is_value(b)]
    else:
        return
    found = []
    for role, side in roles:
        term = _term(side)
        if term is not None and (alias := _resolve(term, scope, columns)) is not None:
            found.append((alias, KeyPart(term.text, term.column, role, term.expression)))
    if any(p.role == "join" for _, p in found) and len({a for a, _ in found}) < 2:
        return  # a column compared with another of the same table: no lookup key
    yield from found


def _order_parts(
    sort: Sequence[object], scope: _Scope, columns: Mapping[str, Collection[str]]
) -> tuple[str, list[KeyPart]] | None:
    """The ORDER BY keys when they all belong to one table."""
    found: list[tuple[str, KeyPart]] = []
    directions = {s.sortby_dir == SortByDir.SORTBY_DESC for s in sort if isinstance(s, ast.SortBy)}
    for item in sort:
        if not isinstance(item, ast.SortBy) or (term := _term(item.node)) is None:
            return None
        if (alias := _resolve(term, scope, columns)) is None:
            return None
        desc = len(directions) > 1 and item.sortby_dir == SortByDir.SORTBY_DESC
        text = term.text + (" DESC" if desc else "")
        found.append((alias, KeyPart(text, term.column, "order", term.expression)))
    aliases = {a for a, _ in found}
    return (aliases.pop(), [p for _, p in found]) if len(aliases) == 1 else None


def _unique(parts: Sequence[KeyPart]) -> list[KeyPart]:
    first: dict[str, KeyPart] = {}
    for part in parts:
        first.setdefault(part.text, part)
    return list(first.values())


def _by_selectivity(
    parts: Sequence[KeyPart], table: str, distinct: Mapping[tuple[str, str], float]
) -> list[KeyPart]:
    """Most distinct values (most selective) first; equality before join keys on ties."""
    return sorted(
        parts, key=lambda p: (-distinct.get((table, p.column), 0.0), p.role != "equality")
    )


def _describe(parts: Sequence[KeyPart]) -> str:
    roles: dict[str, list[str]] = {}
    for p in parts:
        roles.setdefault(p.role, []).append(p.text)
    return "; ".join(f"{role} on {', '.join(texts)}" for role, texts in roles.items())


def candidates(
    text: str,
    columns: Mapping[str, Collection[str]] | None = None,
    distinct: Mapping[tuple[str, str], float] | None = None,
    views: Mapping[str, str] | None = None,
) -> list[IndexCandidate]:
    """Index candidates for one statement; [] when it does not parse or offers no predicate.

    ``columns`` maps a table name to its column names (to place unqualified columns in joins;
    a tuple in table order also resolves ``SELECT * ... ORDER BY 1``);
    ``distinct`` maps (table, column) to its number of distinct values (to order the keys);
    ``views`` maps a view's name to its definition: views, CTEs and subqueries in FROM are
    flattened as the planner does (:mod:`querywatch.advise.derived`), so keys name base tables.
    """
    columns = columns or {}
    distinct = distinct or {}
    try:
        statements = parse_sql(text)
    except ParseError:
        return []
    if len(statements) != 1:
        return []
    found: dict[tuple[str | None, str, tuple[str, ...]], IndexCandidate] = {}
    for block in derived.blocks(statements[0].stmt, views or {}, columns):
        for candidate in _block_candidates(block, columns, distinct):
            found.setdefault((candidate.schema, candidate.table, candidate.key_texts), candidate)
    return list(found.values())


def _block_candidates(
    stmt: object,
    columns: Mapping[str, Collection[str]],
    distinct: Mapping[tuple[str, str], float],
) -> list[IndexCandidate]:
    """Candidates of one flattened SELECT, UPDATE or DELETE."""
    scope, sort = _scope(stmt)
    by_alias: dict[str, list[KeyPart]] = {}
    for qual in scope.quals:
        for alias, part in _parts(qual, scope, columns):
            by_alias.setdefault(alias, []).append(part)
    order = _order_parts(sort, scope, columns) if sort else None
    found: list[IndexCandidate] = []
    for alias, table in scope.tables.items():
        found += _for_table(table, by_alias.get(alias, []), order, alias, distinct)
    return found


def _for_table(
    table: Table,
    parts: list[KeyPart],
    order: tuple[str, list[KeyPart]] | None,
    alias: str,
    distinct: Mapping[tuple[str, str], float],
) -> list[IndexCandidate]:
    equal = _by_selectivity(
        _unique([p for p in parts if p.role == "equality"]), table.name, distinct
    )[:MAX_EQUALITY_KEYS]
    joins = _unique([p for p in parts if p.role == "join"])[:1]
    ranges = _unique([p for p in parts if p.role == "range"])[:1]
    options: list[tuple[KeyPart, ...]] = []
    if equal or ranges:
        options.append((*equal, *ranges))
    if joins:
        options.append((*joins, *equal))
    if order is not None and order[0] == alias:
        options.append(tuple(_unique([*equal, *order[1]])))
    unique = {tuple(k.text for k in keys): keys for keys in reversed(options)}
    return [
        IndexCandidate(table.schema, table.name, keys, _describe(keys))
        for keys in reversed(unique.values())
    ]


def normalize_key(text: str) -> str:
    """A key's text for comparison with the catalog's (pg_get_indexdef) spelling."""
    return re.sub(r'[\s"()]', "", text).lower()


def covered(keys: Sequence[str], existing: Sequence[Sequence[str]]) -> bool:
    """True when an existing index already starts with these keys (in any order of equalities)."""
    wanted = [normalize_key(k) for k in keys]
    for index in existing:
        have = [normalize_key(k) for k in index]
        if have[: len(wanted)] == wanted or sorted(have[: len(wanted)]) == sorted(wanted):
            return True
    return False


def index_name(candidate: IndexCandidate, taken: Sequence[str] = ()) -> str:
    """``<table>_<keys>_idx``, at most 63 characters, not one of ``taken``."""
    keys = "_".join(_NAME_JUNK.sub("_", k.lower()).strip("_") for k in candidate.key_texts)
    keys += "_partial" if candidate.predicate else ""
    keys += f"_{candidate.method}" if candidate.method != "btree" else ""
    base = f"{candidate.table}_{keys}"[: NAME_LIMIT - 4].rstrip("_")
    name, n = f"{base}_idx", 1
    while name in taken:
        n += 1
        name = f"{base[: NAME_LIMIT - 4 - len(str(n))]}{n}_idx"
    return name


def _key_sql(part: KeyPart) -> str:
    if not part.expression:
        return part.text
    bare = part.text.removesuffix(" DESC")
    wrapped = bare if re.fullmatch(r"\w+\([^()]*\)", bare) else f"({bare})"
    return wrapped + part.text[len(bare) :]


def ddl(candidate: IndexCandidate, name: str | None = None) -> str:
    """The CREATE INDEX CONCURRENTLY statement for a candidate.

    Identifiers are quoted only when they must be, by pglast's rule (the one its printer applies
    to the key expressions): psycopg's ``sql.Identifier`` always quotes, and DDL that people read
    and paste is clearer as ``ON orders (status)``. Keywords are quoted: ``ON "user" (id)``.

    >>> ddl(IndexCandidate(None, "user", (KeyPart("id", "id", "equality"),), ""), "Order Lines")
    'CREATE INDEX CONCURRENTLY "Order Lines" ON "user" (id);'
    """
    table = quote_ident(candidate.table)
    if candidate.schema:
        table = f"{quote_ident(candidate.schema)}.{table}"
    keys = ", ".join(_key_sql(k) for k in candidate.keys)
    using = f" USING {candidate.method}" if candidate.method != "btree" else ""
    where = f" WHERE {candidate.predicate}" if candidate.predicate else ""
    name = quote_ident(name or index_name(candidate))
    return f"CREATE INDEX CONCURRENTLY {name} ON {table}{using} ({keys}){where};"
