"""Pure: statements through views, CTEs and subqueries in FROM, flattened as the planner does.

The planner pulls a simple view, an inlined CTE or a subquery in FROM up into the query that reads
it: its tables join the outer FROM, its WHERE joins the outer WHERE, and an outer predicate on one
of its columns becomes a predicate on the expression behind that column. :func:`blocks` does the
same on the parse tree, so that index candidates name base tables (hypopg refuses a view).

A body that is not pulled up (a ``MATERIALIZED`` CTE, a CTE read twice, a recursive one, a body
with aggregates, DISTINCT, LIMIT or a set operation) is a block of its own: the predicates inside
it are candidates, the outer predicates on its result are not (no index serves them).

``ORDER BY 1`` and ``ORDER BY alias`` are resolved to the expression of that output column,
``SELECT *`` through the table's columns in order (when they are known).

>>> from pglast import parse_sql
>>> from pglast.stream import RawStream
>>> stmt = parse_sql("WITH c AS (SELECT id AS k, created_at FROM t WHERE a = 1) "
...                  "SELECT * FROM c WHERE k = $1 ORDER BY 2 LIMIT 5")[0].stmt
>>> [RawStream()(b) for b in blocks(stmt, {}, {})]
['SELECT * FROM t AS "c.t" WHERE "c.t".id = $1 AND "c.t".a = 1 ORDER BY "c.t".created_at LIMIT 5']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import BoolExprType, CTEMaterialize, SetOperation
from pglast.parser import ParseError
from pglast.stream import RawStream

MAX_DEPTH = 8  # views on views on views ...
AGGREGATES = frozenset(
    {
        "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
        "every", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "bit_and",
        "bit_or", "xmlagg", "stddev", "variance", "percentile_cont", "percentile_disc", "mode",
    }
)  # fmt: skip
Columns = Mapping[str, object]  # table name -> its column names (a tuple keeps their order)


def relation_names(node: object) -> list[str]:
    """Every relation a parse tree names (``schema.name`` when qualified), CTE names included."""
    found: list[str] = []
    for r in _range_vars(node):
        name = f"{r.schemaname}.{r.relname}" if r.schemaname else str(r.relname)
        if name not in found:
            found.append(name)
    return found


def view_names(definitions: Mapping[str, str]) -> list[str]:
    """The relations the view definitions read (to look up the views among them in turn)."""
    found: list[str] = []
    for text in definitions.values():
        try:
            parsed = parse_sql(text)
        except ParseError:
            continue
        found += [n for n in relation_names(parsed) if n not in found]
    return found


def _range_vars(node: object) -> Iterator[ast.RangeVar]:
    if isinstance(node, ast.RangeVar):
        yield node
    elif isinstance(node, ast.Node):
        for name in node:
            yield from _range_vars(getattr(node, name))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _range_vars(item)


@dataclass
class _Env:
    views: Mapping[str, str]
    columns: Columns
    ctes: dict[str, ast.CommonTableExpr] = field(default_factory=dict)
    refs: dict[str, int] = field(default_factory=dict)  # CTE name -> times it is read
    depth: int = 0


def blocks(stmt: object, views: Mapping[str, str], columns: Columns) -> list[ast.Node]:
    """The statement flattened, then each body that could not be pulled up into it.

    ``views`` maps a view's name (as written in a statement, ``name`` or ``schema.name``) to its
    definition (pg_get_viewdef); ``columns`` a table's name to its columns.
    """
    if not isinstance(stmt, ast.Node):
        return []
    if not _needs_work(stmt, views):
        return [stmt]
    return _blocks(stmt, _Env(views, columns))


def _needs_work(stmt: ast.Node, views: Mapping[str, str]) -> bool:
    if getattr(stmt, "withClause", None) is not None:
        return True
    if isinstance(stmt, ast.SelectStmt):
        if stmt.op != SetOperation.SETOP_NONE:
            return True
        if any(isinstance(s, ast.SortBy) and _sort_alias(s, stmt) for s in stmt.sortClause or ()):
            return True
        if any(isinstance(n, ast.RangeSubselect) for n in _nodes(stmt.fromClause, into=True)):
            return True
    relations = [getattr(stmt, "relation", None), getattr(stmt, "fromClause", None)]
    relations.append(getattr(stmt, "usingClause", None))
    return any(_view_key(r) in views for r in _range_vars(relations))


def _sort_alias(item: ast.SortBy, stmt: ast.SelectStmt) -> bool:
    """True when a sort key is an ordinal or an output column's alias."""
    node = item.node
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        return True
    names = {t.name for t in stmt.targetList or () if isinstance(t, ast.ResTarget) and t.name}
    return isinstance(node, ast.ColumnRef) and len(node.fields or ()) == 1 and _last(node) in names


def _view_key(r: ast.RangeVar) -> str:
    return f"{r.schemaname}.{r.relname}" if r.schemaname else str(r.relname)


def _with(stmt: ast.Node, env: _Env) -> _Env:
    clause = getattr(stmt, "withClause", None)
    if clause is None:
        return env
    ctes = dict(env.ctes)
    refs = dict(env.refs)
    for cte in clause.ctes or ():
        ctes[str(cte.ctename)] = cte
        refs[str(cte.ctename)] = 0
    for r in _range_vars(stmt):
        if r.schemaname is None and str(r.relname) in refs:
            refs[str(r.relname)] += 1
    return _Env(env.views, env.columns, ctes, refs, env.depth)


def _blocks(stmt: object, env: _Env) -> list[ast.Node]:
    if env.depth > MAX_DEPTH or not isinstance(stmt, ast.Node):
        return []
    env = _with(stmt, env)
    if isinstance(stmt, ast.SelectStmt) and stmt.op != SetOperation.SETOP_NONE:
        inner = _Env(env.views, env.columns, env.ctes, env.refs, env.depth + 1)
        return [*_blocks(stmt.larg, inner), *_blocks(stmt.rarg, inner)]
    if isinstance(stmt, ast.SelectStmt):
        flat, extra = _flatten(stmt, env)
        return [flat, *extra]
    # UPDATE / DELETE / INSERT: the statement as it is (or, through a view, the rows it
    # reads as a SELECT), and its CTEs' bodies
    extra = []
    reads = _write_through_view(stmt, env)
    if reads is not None:
        flat, extra = _flatten(reads, env)
        stmt = flat
    for cte in getattr(getattr(stmt, "withClause", None), "ctes", None) or ():
        extra += _blocks(
            cte.ctequery, _Env(env.views, env.columns, env.ctes, env.refs, env.depth + 1)
        )
    return [stmt, *extra]


def _write_through_view(stmt: ast.Node, env: _Env) -> ast.SelectStmt | None:
    """An UPDATE or DELETE of an updatable view, as the SELECT of the rows it changes."""
    if isinstance(stmt, ast.UpdateStmt):
        others = stmt.fromClause or ()
    elif isinstance(stmt, ast.DeleteStmt):
        others = stmt.usingClause or ()
    else:
        return None
    if stmt.relation is None or _view_key(stmt.relation) not in env.views:
        return None
    star: dict[str, Any] = {"val": ast.ColumnRef(fields=(ast.A_Star(),))}
    fields: dict[str, Any] = {
        "targetList": (ast.ResTarget(**star),),
        "fromClause": (stmt.relation, *others),
        "whereClause": stmt.whereClause,
        "op": SetOperation.SETOP_NONE,
    }
    return ast.SelectStmt(**fields)


@dataclass
class _Pulled:
    """A relation pulled up: its output columns by name (to substitute outer references)."""

    outputs: dict[str, Any]
    star: str | None  # the one inner alias that a name not in outputs belongs to (SELECT *)
    order: list[str]  # output names in order (for ORDER BY 1 over SELECT *)


@dataclass
class _Flat:
    items: list[object] = field(default_factory=list)
    quals: list[object] = field(default_factory=list)
    pulled: dict[str, _Pulled] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # alias -> table name
    extra: list[ast.Node] = field(default_factory=list)


def _flatten(stmt: ast.SelectStmt, env: _Env) -> tuple[ast.SelectStmt, list[ast.Node]]:
    flat = _Flat()
    for item in stmt.fromClause or ():
        new = _item(item, env, flat)
        if new is not None:
            flat.items.append(new)
    sort = [_resolve_sort(s, stmt, flat, env) for s in stmt.sortClause or ()]

    def outer(ref: ast.ColumnRef) -> ast.Node | None:
        return _substitute(ref, flat, env)

    targets = [_named(t) for t in stmt.targetList or ()]
    quals = [_rewrite(stmt.whereClause, outer)] if stmt.whereClause is not None else []
    items = [_rewrite(i, outer) if isinstance(i, ast.JoinExpr) else i for i in flat.items]
    where = _and([*quals, *flat.quals])
    fields: dict[str, Any] = {
        "targetList": _rewrite(tuple(targets), outer),
        "fromClause": tuple(items),
        "whereClause": where,
        "sortClause": tuple(_rewrite(s, outer) for s in sort) or None,
        "limitCount": stmt.limitCount,
        "limitOffset": stmt.limitOffset,
        "limitOption": stmt.limitOption,
        "op": SetOperation.SETOP_NONE,
    }
    return ast.SelectStmt(**fields), flat.extra


def _named(target: object) -> object:
    """A bare column's output keeps its name once the column is replaced by what it stands for."""
    if (
        isinstance(target, ast.ResTarget)
        and not target.name
        and isinstance(target.val, ast.ColumnRef)
    ):
        name = _last(target.val)
        if name is not None:
            return ast.ResTarget(name=name, val=target.val, indirection=target.indirection)
    return target


def _and(quals: Sequence[object]) -> object:
    quals = [q for q in quals if q is not None]
    if not quals:
        return None
    if len(quals) == 1:
        return quals[0]
    return ast.BoolExpr(boolop=BoolExprType.AND_EXPR, args=tuple(quals))


def _item(item: object, env: _Env, flat: _Flat) -> object | None:
    """The FROM item as the flattened statement keeps it; None when it is an opaque result."""
    if isinstance(item, ast.JoinExpr):
        left = _item(item.larg, env, flat)
        right = _item(item.rarg, env, flat)
        return _join(left, right, item.quals, item.jointype)
    alias: str
    body: ast.Node | None = None
    pullable = True
    if isinstance(item, ast.RangeSubselect):
        if item.alias is None or item.lateral:
            flat.extra += _blocks(item.subquery, _deeper(env))
            return None
        alias, body = str(item.alias.aliasname), item.subquery
    elif isinstance(item, ast.RangeVar):
        alias = str(item.alias.aliasname) if item.alias else str(item.relname)
        name = str(item.relname)
        if item.schemaname is None and name in env.ctes:
            cte = env.ctes[name]
            body = cte.ctequery
            pullable = not cte.cterecursive and (
                cte.ctematerialized == CTEMaterialize.CTEMaterializeNever
                or (
                    cte.ctematerialized == CTEMaterialize.CTEMaterializeDefault
                    and env.refs.get(name, 0) <= 1
                )
            )
        elif (key := _view_key(item)) in env.views:
            try:
                parsed = parse_sql(env.views[key])
            except ParseError:
                return item
            if len(parsed) != 1:
                return item
            body = parsed[0].stmt
        else:
            flat.bases[alias] = name
            return item
    else:
        return item
    if body is None:
        return None
    return _pull(alias, body, pullable, env, flat)


def _deeper(env: _Env) -> _Env:
    return _Env(env.views, env.columns, env.ctes, env.refs, env.depth + 1)


def _pull(alias: str, body: ast.Node, pullable: bool, env: _Env, flat: _Flat) -> object | None:
    found = _blocks(body, _deeper(env))
    if not found:
        return None
    inner, rest = found[0], found[1:]
    flat.extra += rest
    if not (pullable and isinstance(inner, ast.SelectStmt) and _simple(inner)):
        flat.extra.append(inner)
        return None
    bases: dict[str, str] = {}
    _collect_bases(inner.fromClause or (), bases)
    if not bases or len(bases) != len(_aliases(inner.fromClause or ())):
        flat.extra.append(inner)
        return None
    renamed = {a: f"{alias}.{a}" for a in bases}
    only = next(iter(renamed.values())) if len(renamed) == 1 else None

    def rename(ref: ast.ColumnRef) -> ast.Node | None:
        names = _names(ref)
        if names is None:
            return None
        if len(names) >= 2 and names[-2] in renamed:
            return _ref(renamed[names[-2]], names[-1])
        if len(names) == 1 and only is not None:
            return _ref(only, names[0])
        return None

    items = [_rename_item(i, renamed, rename) for i in inner.fromClause or ()]
    if inner.whereClause is not None:
        flat.quals.append(_rewrite(inner.whereClause, rename))
    outputs: dict[str, Any] = {}
    order: list[str] = []
    star: str | None = None
    for target in inner.targetList or ():
        if not isinstance(target, ast.ResTarget):
            continue
        value = target.val
        if isinstance(value, ast.ColumnRef) and isinstance((value.fields or ())[-1], ast.A_Star):
            star = only
            if only is not None:
                table = bases[next(iter(bases))]
                order += [str(c) for c in _ordered(env.columns.get(table))]
            continue
        name = target.name or (_last(value) if isinstance(value, ast.ColumnRef) else None)
        if name is None:
            continue
        outputs[name] = _rewrite(value, rename)
        order.append(name)
    flat.pulled[alias] = _Pulled(outputs, star, order)
    joined: object = items[0]
    for other in items[1:]:
        joined = _join(joined, other)
    return joined


def _join(left: object, right: object, quals: object = None, kind: object = None) -> ast.JoinExpr:
    fields: dict[str, Any] = {"larg": left, "rarg": right, "quals": quals, "isNatural": False}
    if kind is not None:
        fields["jointype"] = kind
    return ast.JoinExpr(**fields)


def _ordered(names: object) -> list[str]:
    return [str(n) for n in names] if isinstance(names, tuple | list) else []


def _collect_bases(items: Sequence[object], bases: dict[str, str]) -> None:
    for item in items:
        if isinstance(item, ast.RangeVar):
            bases[str(item.alias.aliasname) if item.alias else str(item.relname)] = str(
                item.relname
            )
        elif isinstance(item, ast.JoinExpr):
            _collect_bases([item.larg, item.rarg], bases)


def _aliases(items: Sequence[object]) -> list[object]:
    """Every leaf FROM item (to tell a body made of base tables only)."""
    found: list[object] = []
    for item in items:
        if isinstance(item, ast.JoinExpr):
            found += _aliases([item.larg, item.rarg])
        else:
            found.append(item)
    return found


def _rename_item(
    item: object, renamed: Mapping[str, str], rename: Callable[[ast.ColumnRef], ast.Node | None]
) -> object:
    if isinstance(item, ast.RangeVar):
        old = str(item.alias.aliasname) if item.alias else str(item.relname)
        return ast.RangeVar(
            schemaname=item.schemaname,
            relname=item.relname,
            inh=item.inh,
            relpersistence=item.relpersistence,
            alias=ast.Alias(aliasname=renamed[old]),
        )
    if isinstance(item, ast.JoinExpr):
        return _join(
            _rename_item(item.larg, renamed, rename),
            _rename_item(item.rarg, renamed, rename),
            _rewrite(item.quals, rename),
            item.jointype,
        )
    return item


def _simple(stmt: ast.SelectStmt) -> bool:
    """A body the planner pulls up: no grouping, DISTINCT, LIMIT, window or aggregate."""
    if any(
        getattr(stmt, name)
        for name in (
            "distinctClause", "groupClause", "havingClause", "windowClause", "limitCount",
            "limitOffset", "valuesLists", "lockingClause",
        )
    ):  # fmt: skip
        return False
    return not any(_aggregate(n) for n in _nodes(stmt.targetList))


def _aggregate(node: object) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    name = str(node.funcname[-1].sval) if node.funcname else ""
    return bool(node.agg_star or node.agg_distinct or node.over or name.lower() in AGGREGATES)


def _nodes(node: object, into: bool = False) -> Iterator[object]:
    """Every node of a tree; subqueries too when ``into``."""
    if not into and isinstance(node, ast.SubLink | ast.SelectStmt):
        return
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _nodes(getattr(node, name), into)
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _nodes(item, into)


def _names(ref: ast.ColumnRef) -> list[str] | None:
    fields = ref.fields or ()
    names = [str(f.sval) for f in fields if isinstance(f, ast.String)]
    return names if names and len(names) == len(fields) else None


def _last(ref: ast.ColumnRef) -> str | None:
    names = _names(ref)
    return names[-1] if names else None


def _ref(alias: str, column: str) -> ast.ColumnRef:
    return ast.ColumnRef(fields=(ast.String(sval=alias), ast.String(sval=column)))


def _rewrite(node: object, fn: Callable[[ast.ColumnRef], ast.Node | None]) -> object:
    """A copy of ``node`` with each column reference replaced by ``fn`` (when it gives one).

    Subqueries are left alone: they are scopes of their own.
    """
    if isinstance(node, ast.ColumnRef):
        found = fn(node)
        return node if found is None else found
    if isinstance(node, ast.SubLink | ast.SelectStmt | ast.RangeSubselect):
        return node
    if isinstance(node, ast.Node):
        fields: dict[str, Any] = {name: _rewrite(getattr(node, name), fn) for name in node}
        return type(node)(**fields)
    if isinstance(node, tuple | list):
        return tuple(_rewrite(item, fn) for item in node)
    return node


def _substitute(ref: ast.ColumnRef, flat: _Flat, env: _Env) -> ast.Node | None:
    """An outer reference to a pulled-up relation's column: the expression behind it."""
    names = _names(ref)
    if names is None:
        return None
    if len(names) >= 2:
        pulled = flat.pulled.get(names[-2])
        return _output(pulled, names[-1]) if pulled is not None else None
    column = names[0]
    if any(column in _members(env.columns.get(t)) for t in flat.bases.values()):
        return None  # a column of a base table of the outer query
    owners = [p for p in flat.pulled.values() if column in p.outputs or p.star is not None]
    return _output(owners[0], column) if len(owners) == 1 else None


def _members(names: object) -> frozenset[str]:
    return (
        frozenset(str(n) for n in names)
        if isinstance(names, tuple | list | frozenset)
        else frozenset()
    )


def _output(pulled: _Pulled, column: str) -> ast.Node | None:
    if column in pulled.outputs:
        found: ast.Node = pulled.outputs[column]
        return found
    return _ref(pulled.star, column) if pulled.star is not None else None


def _resolve_sort(item: object, stmt: ast.SelectStmt, flat: _Flat, env: _Env) -> object:
    """``ORDER BY 1`` / ``ORDER BY alias``: the sort key as the expression it names."""
    if not isinstance(item, ast.SortBy):
        return item
    targets = [t for t in stmt.targetList or () if isinstance(t, ast.ResTarget)]
    node = item.node
    value: object | None = None
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        value = _nth_output(targets, int(node.val.ival or 0), flat, env)
    elif isinstance(node, ast.ColumnRef) and len(node.fields or ()) == 1:
        named = [t.val for t in targets if t.name and t.name == _last(node)]
        value = named[0] if len(named) == 1 else None
    if value is None:
        return item
    fields: dict[str, Any] = {
        "node": value,
        "sortby_dir": item.sortby_dir,
        "sortby_nulls": item.sortby_nulls,
        "useOp": item.useOp,
    }
    return ast.SortBy(**fields)


def _nth_output(targets: Sequence[ast.ResTarget], n: int, flat: _Flat, env: _Env) -> object | None:
    """The expression of output column ``n`` (1-based), expanding ``*`` when it is the only one."""
    stars = [
        t for t in targets
        if isinstance(t.val, ast.ColumnRef) and isinstance((t.val.fields or ())[-1], ast.A_Star)
    ]  # fmt: skip
    if not stars:
        return targets[n - 1].val if 0 < n <= len(targets) else None
    if len(targets) != 1 or len(flat.items) != 1:
        return None
    if flat.pulled:
        alias, pulled = next(iter(flat.pulled.items()))
        names = pulled.order
    else:
        alias, table = next(iter(flat.bases.items()))
        names = _ordered(env.columns.get(table))
    return _ref(alias, names[n - 1]) if 0 < n <= len(names) else None


def mentioned(text: str) -> list[str]:
    """The relations a statement's text names ([] when it does not parse)."""
    try:
        return relation_names(parse_sql(text))
    except ParseError:
        return []


def flattened(text: str, views: Mapping[str, str], columns: Columns) -> str | None:
    """The statement as the planner flattens it, as SQL; None when there is nothing to flatten."""
    try:
        parsed = parse_sql(text)
    except ParseError:
        return None
    stmt = parsed[0].stmt if len(parsed) == 1 else None
    if not isinstance(stmt, ast.Node) or not _needs_work(stmt, views):
        return None
    found = _blocks(stmt, _Env(views, columns))
    if not found or not isinstance(found[0], ast.SelectStmt):
        return None
    return str(RawStream()(found[0]))
