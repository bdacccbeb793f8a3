"""Index advice: candidates from the parse tree, checked against the catalog, verified with hypopg.

A candidate is dropped when an existing index already starts with its keys, and a table the plan
already reads through an index gets none. With hypopg, each candidate becomes a hypothetical index
(``hypopg_create_index`` works inside the read-only transaction; the index lives in this backend's
memory only and is dropped right after), the statement is planned again, and the candidate is
kept only when the plan uses it and its cost falls by at least half. Without hypopg the advice
still appears, marked unverified. Advice is ranked by the database time it would save.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from ..errors import QuerywatchError
from . import candidates as cands
from . import catalog, derived, families, nodes, plans, savings
from .records import IndexAdvice, IndexCandidate, IndexFact, QueryStats, TableFact, Verification
from .session import Session

log = logging.getLogger("querywatch.advise")

MIN_COST_RATIO = 0.5
WRITE_HEAVY_MIN_WRITES = 1_000
HYPO_CREATE = "SELECT indexrelid, indexname FROM {}.hypopg_create_index(%s)"
HYPO_DROP = "SELECT {}.hypopg_drop_index(%s)"
MAX_PARTITIONS = 64  # hypothetical indexes per verification of a partitioned table
# Shows the partitions a generic plan removes at executor start (its costs are the same).
NO_PARTITION_PRUNING = "SET LOCAL enable_partition_pruning = off"


@dataclass(frozen=True)
class IndexReport:
    advice: tuple[IndexAdvice, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Context:
    tables: Mapping[str, TableFact]
    existing: Sequence[IndexFact]
    distinct: Mapping[tuple[str, str], float]
    stats: Mapping[tuple[str, str], families.ColumnStats] = field(default_factory=dict)
    views: Mapping[str, str] = field(default_factory=dict)  # name -> definition
    partitions: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


def _names(text: str, doc: Mapping[str, Any], views: Mapping[str, str] | None = None) -> list[str]:
    """Relation names the statement mentions (from the parse tree) and the plan reads."""
    found = {
        c.table if not c.schema else f"{c.schema}.{c.table}"
        for c in cands.candidates(text, views=views)
    }
    found |= {str(n["Relation Name"]) for n in nodes.nodes(doc) if "Relation Name" in n}
    return sorted(found)


def _context(session: Session, text: str, doc: Mapping[str, Any]) -> _Context:
    with session.readonly() as cur:
        views = catalog.view_definitions(cur, derived.mentioned(text), derived.view_names)
        names = _names(text, doc, views)
        partitions = catalog.leaf_partitions(cur, names)
        facts = catalog.tables(cur, names)
        existing = catalog.indexes(cur, names)
        stats = families.column_stats(cur, names)
        distinct = families.distinct_values(stats)
    return _Context(
        {f.table: f for f in facts}, existing, distinct, stats, views=views, partitions=partitions
    )


def _served_by(doc: Mapping[str, Any], table: str) -> str | None:
    """The index a plan reads ``table`` through, when it never scans it sequentially."""
    scans = [n for n in nodes.nodes(doc) if n.get("Relation Name") == table]
    if not scans or any(n.get("Node Type") == "Seq Scan" for n in scans):
        return None
    used = [str(n["Index Name"]) for n, _ in _index_nodes(doc, table) if "Index Name" in n]
    return used[0] if used else None


def _index_nodes(doc: Mapping[str, Any], table: str) -> list[tuple[Any, Any]]:
    found = []
    for node, parent in nodes.walk(nodes.top(doc)):
        on_table = node.get("Relation Name") == table or (
            parent is not None and parent.get("Relation Name") == table
        )
        if on_table and node.get("Node Type") in nodes.INDEX_SCANS:
            found.append((node, parent))
    return found


def _write_heavy(fact: TableFact | None) -> str | None:
    if fact is None or fact.writes < WRITE_HEAVY_MIN_WRITES:
        return None
    if fact.writes < fact.rows_read:
        return None
    return (
        f"write-heavy table: {fact.writes:,} rows written vs {fact.rows_read:,} rows read; "
        "every index slows each insert, update and delete"
    )


def _plain_ddl(candidate: IndexCandidate) -> str:
    return re.sub(r"^CREATE INDEX CONCURRENTLY \S+ ON", "CREATE INDEX ON", cands.ddl(candidate))


def verify(
    session: Session,
    text: str,
    candidate: IndexCandidate,
    cost_before: float,
    partitions: Sequence[tuple[str, str]] = (),
) -> Verification:
    """Plan the statement with ``candidate`` as a hypothetical index (hypopg).

    On a partitioned table, ``partitions`` are the (schema, name) of the partitions to put it on
    (hypopg cannot create one on the parent).
    """
    if session.hypopg is None or session.hypopg_schema is None:
        return Verification(False, detail=_hypopg_missing(session))
    if partitions:
        return _verify_on_partitions(session, text, candidate, cost_before, partitions)
    schema = sql.Identifier(session.hypopg_schema)
    created: Any = None
    try:
        with session.readonly() as cur:
            cur.execute(sql.SQL(HYPO_CREATE).format(schema), (_plain_ddl(candidate),))
            created = cur.fetchone()
            doc, _ = plans.explain_in(cur, session, text)
    except QuerywatchError as exc:
        return Verification(True, False, cost_before, cost_before, f"hypopg refused: {exc}")
    finally:
        if created is not None:
            _drop(session, schema, created["indexrelid"])
    used = created["indexname"] in nodes.used_indexes(doc)
    return Verification(True, used, cost_before, nodes.total_cost(doc), created["indexname"])


def _verify_on_partitions(
    session: Session,
    text: str,
    candidate: IndexCandidate,
    cost_before: float,
    partitions: Sequence[tuple[str, str]],
) -> Verification:
    """The candidate as a hypothetical index on each partition, the statement planned once."""
    assert session.hypopg_schema is not None
    schema = sql.Identifier(session.hypopg_schema)
    created: list[Any] = []
    try:
        with session.readonly() as cur:
            for part_schema, part in partitions:
                on_part = replace(candidate, schema=part_schema, table=part)
                cur.execute(sql.SQL(HYPO_CREATE).format(schema), (_plain_ddl(on_part),))
                created.append(cur.fetchone())
            doc, _ = plans.explain_in(cur, session, text)
            shown = doc
            if _all_pruned(doc, partitions):  # at executor start, with NULL parameters
                cur.execute(NO_PARTITION_PRUNING)
                shown, _ = plans.explain_in(cur, session, text)
    except QuerywatchError as exc:
        return Verification(True, False, cost_before, cost_before, f"hypopg refused: {exc}")
    finally:
        for row in created:
            if row is not None:
                _drop(session, schema, row["indexrelid"])
    names = [str(row["indexname"]) for row in created if row is not None]
    used = [n for n in names if n in nodes.used_indexes(shown)]
    detail = (
        f"on {len(used)} of the {len(names)} partitions the plan reads: "
        f"{', '.join(p for _, p in partitions[:5])}{', ...' if len(partitions) > 5 else ''} "
        f"({', '.join(used[:3] or names[:1])})"
    )
    if shown is not doc:
        detail += "; the generic plan prunes them at run time, shown without pruning"
    return Verification(True, bool(used), cost_before, nodes.total_cost(doc), detail)


def _all_pruned(doc: Mapping[str, Any], partitions: Sequence[tuple[str, str]]) -> bool:
    """True when the plan shows none of the partitions, all removed by run-time pruning (a
    generic plan's parameters are NULL there): which index the plan would use is not shown."""
    read = {n.get("Relation Name") for n in nodes.nodes(doc)}
    pruned = any(n.get("Subplans Removed") for n in nodes.nodes(doc))
    return pruned and not any(p in read for _, p in partitions)


def _touched(
    doc: Mapping[str, Any], ctx: _Context, candidate: IndexCandidate
) -> tuple[tuple[str, str], ...]:
    """The leaf partitions of a partitioned candidate table that the plan reads (all of them
    when the plan reads none: pruned at run time), at most MAX_PARTITIONS."""
    leaves = ctx.partitions.get(candidate.table, ())
    read = {str(n["Relation Name"]) for n in nodes.nodes(doc) if "Relation Name" in n}
    touched = [leaf for leaf in leaves if leaf[1] in read]
    return tuple((touched or list(leaves))[:MAX_PARTITIONS])


def _ordered_columns(ctx: _Context) -> dict[str, tuple[str, ...]]:
    """Each table's columns in table order (``SELECT * ... ORDER BY 1`` names the first)."""
    return {name: tuple(f.columns) for name, f in ctx.tables.items()}


def _ddl(candidate: IndexCandidate, name: str, ctx: _Context) -> str:
    """CREATE INDEX CONCURRENTLY, but on a partitioned table CREATE INDEX on the parent (one
    index per partition; PostgreSQL cannot build it concurrently there)."""
    text = cands.ddl(candidate, name)
    if candidate.table in ctx.partitions:
        return text.replace("CREATE INDEX CONCURRENTLY ", "CREATE INDEX ", 1)
    return text


def _partition_notes(candidate: IndexCandidate, ctx: _Context) -> list[str]:
    leaves = ctx.partitions.get(candidate.table)
    if not leaves:
        return []
    return [
        f"partitioned table: the index on {candidate.table} creates one on each of its "
        f"{len(leaves)} partitions and blocks writes while it builds (no CONCURRENTLY on a "
        "partitioned table); without the lock: CREATE INDEX ... ON ONLY the parent, CREATE "
        "INDEX CONCURRENTLY on each partition, then ALTER INDEX ... ATTACH PARTITION each"
    ]


def _through_flattened(
    session: Session,
    text: str,
    candidate: IndexCandidate,
    check: Verification,
    before: float,
    ctx: _Context,
) -> tuple[Verification, float]:
    """An expression index through a view, CTE or subquery, verified again on the statement
    as the planner flattens it: hypopg (1.3) matches a hypothetical expression index only when
    its table comes first in the query's range table, which a view's table never does."""
    if check.used or not check.available or not any(k.expression for k in candidate.keys):
        return check, before
    flat = derived.flattened(text, ctx.views, _ordered_columns(ctx))
    if flat is None:
        return check, before
    try:
        flat_before = nodes.total_cost(plans.explain(session, flat).document)
    except QuerywatchError as exc:
        log.debug("flattened statement not planned: %s", exc)
        return check, before
    again = verify(session, flat, candidate, flat_before)
    if not again.used:
        return check, before
    detail = f"{again.detail} (on the statement flattened as the planner does: {flat})"
    return replace(again, detail=detail), flat_before


def _without_views(
    session: Session, text: str, candidate: IndexCandidate, ctx: _Context
) -> tuple[str, float] | str:
    """The statement flattened as the planner does, and its cost, to verify a *partial*
    candidate: a partial hypothetical index planned through a view can crash the backend (hypopg
    issue #116, seen with PostgreSQL 18 and hypopg 1.4), and a crash restarts every session of the
    monitored server. Without a flattened form the candidate is not tried at all."""
    keys = ", ".join(candidate.key_texts)
    refused = f"({keys}) WHERE {candidate.predicate} on {candidate.table}: not verified"
    flat = derived.flattened(text, ctx.views, _ordered_columns(ctx))
    if flat is None:
        return f"{refused} (a partial index is never tried through a view: hypopg issue #116)"
    try:
        return flat, nodes.total_cost(plans.explain(session, flat).document)
    except QuerywatchError as exc:
        return f"{refused} (flattened statement not planned: {exc})"


def _drop(session: Session, schema: sql.Identifier, oid: int) -> None:
    try:
        with session.readonly() as cur:
            cur.execute(sql.SQL(HYPO_DROP).format(schema), (oid,))
    except (QuerywatchError, psycopg.Error) as exc:
        log.warning("could not drop hypothetical index %s: %s", oid, exc)


def _hypopg_missing(session: Session) -> str:
    if session.hypopg_available:
        return f"hypopg is installed but not created in {session.database!r} (fix: CREATE EXTENSION hypopg)"
    return (
        f"hypopg is not installed on the server (fix: apt-get install "
        f"postgresql-{session.major}-hypopg, then CREATE EXTENSION hypopg)"
    )


def advise(
    session: Session,
    text: str,
    doc: Mapping[str, Any],
    stats: QueryStats | None,
    db_ms_per_s: float,
) -> IndexReport:
    """Verified (or unverified, without hypopg) index advice for one statement, best first."""
    ctx = _context(session, text, doc)
    columns = {name: frozenset(f.columns) for name, f in ctx.tables.items()}
    notes: list[str] = []
    advice: list[IndexAdvice] = []
    taken = [i.name for i in ctx.existing]
    planned, refined = families.refine(
        text,
        cands.candidates(text, _ordered_columns(ctx), ctx.distinct, views=ctx.views),
        columns,
        ctx.stats,
        {name: f.rows for name, f in ctx.tables.items()},
        stats,
        savings.rows_are_matches(doc),
    )
    notes += refined
    for plan in planned:
        candidate = plan.candidate
        skip = _skip_reason(candidate, doc, ctx, verifiable=session.hypopg is not None)
        if skip:
            notes.append(skip)
            continue
        found = _advise_one(session, text, doc, candidate, stats, db_ms_per_s, ctx, taken, plan)
        if isinstance(found, str):
            notes.append(found)
        else:
            advice.append(found)
            taken.append(found.name)
    advice.sort(key=lambda a: (-a.saved_ms_per_s, -a.saving))
    return IndexReport(tuple(advice), tuple(notes))


def _skip_reason(
    candidate: IndexCandidate, doc: Mapping[str, Any], ctx: _Context, verifiable: bool = False
) -> str | None:
    """Why a candidate needs no verification. A table the plan reads through an index is no
    reason when hypopg can tell whether the candidate beats that (maybe weaker) index."""
    keys = ", ".join(candidate.key_texts)
    fact = ctx.tables.get(candidate.table)
    if families.system_catalog(candidate, fact):
        return f"({keys}) on {candidate.table}: a system catalog, not indexed by users"
    if fact is not None and 0 <= fact.rows < families.SMALL_TABLE_ROWS:
        return (
            f"({keys}) on {candidate.table}: small table ({fact.rows:,.0f} rows), "
            "a sequential scan is cheap"
        )
    if candidate.predicate:
        have = families.covered_partial(candidate, ctx.existing)
        if have is not None:
            return f"({keys}) WHERE {candidate.predicate} on {candidate.table}: {have} already serves it"
    elif cands.covered(candidate.key_texts, _keys_of(ctx.existing, candidate.table)):
        return f"({keys}) on {candidate.table}: an existing index already covers it"
    served = _served_by(doc, candidate.table)
    if served is not None and not verifiable:
        return f"({keys}) on {candidate.table}: the plan already reads it through {served}"
    return None


def _weaker(doc: Mapping[str, Any], candidate: IndexCandidate) -> tuple[str, ...]:
    served = _served_by(doc, candidate.table)
    if served is None:
        return ()
    return (
        f"the plan reads {candidate.table} through {served} now (cost "
        f"{nodes.total_cost(doc):,.0f}); this index is compared with that plan, not with a scan",
    )


def _keys_of(existing: Sequence[IndexFact], table: str) -> list[tuple[str, ...]]:
    return [i.keys for i in existing if i.table == table and i.valid and not i.partial]


def _advise_one(
    session: Session,
    text: str,
    doc: Mapping[str, Any],
    candidate: IndexCandidate,
    stats: QueryStats | None,
    db_ms_per_s: float,
    ctx: _Context,
    taken: Sequence[str],
    plan: families.Planned | None = None,
) -> IndexAdvice | str:
    before = nodes.total_cost(doc)
    plan_text = plan.plan_text if plan is not None else None
    reasons = (*_weaker(doc, candidate), *(plan.why if plan is not None else ()))
    if plan_text is not None:  # judged with a value a generic plan hides: compare like with like
        try:
            before = nodes.total_cost(plans.explain(session, plan_text).document)
        except QuerywatchError as exc:
            return f"({', '.join(candidate.key_texts)}) on {candidate.table}: {exc}"
    if candidate.predicate and ctx.views and plan_text is None:
        safe = _without_views(session, text, candidate, ctx)
        if isinstance(safe, str):
            return safe
        text, before = safe
    check = verify(session, plan_text or text, candidate, before, _touched(doc, ctx, candidate))
    if plan_text is None:
        check, before = _through_flattened(session, text, candidate, check, before, ctx)
    keys = ", ".join(candidate.key_texts)
    least = families.min_cost_ratio(candidate, MIN_COST_RATIO)
    if check.available and not (check.used and check.cost_ratio >= least):
        why = (
            check.detail
            if not check.used and check.detail.startswith("hypopg refused")
            else (f"plan uses it: {check.used}, cost {before:,.0f} -> {check.cost_after:,.0f}")
        )
        return f"({keys}) on {candidate.table}: rejected by hypopg ({why})"
    fact = ctx.tables.get(candidate.table)
    est = savings.estimate(
        candidate,
        check,
        stats,
        fact.rows if fact else 0.0,
        ctx.distinct,
        before,
        savings.rows_are_matches(doc),
    )
    if plan is not None and fact is not None:
        est = families.brin_estimate(candidate, plan, fact.pages, est)
    name = cands.index_name(candidate, taken)
    heavy = _write_heavy(fact)
    upkeep = families.upkeep_exceeds(candidate, fact, stats, est.saving) if heavy else None
    if upkeep is not None:
        return upkeep
    warnings = [w for w in (heavy, None if check.available else f"unverified: {check.detail}") if w]
    warnings += _partition_notes(candidate, ctx)
    return IndexAdvice(
        candidate=candidate,
        name=name,
        ddl=_ddl(candidate, name, ctx),
        verification=check,
        verified=check.available,
        saving=est.saving,
        saved_ms_per_s=est.saving * db_ms_per_s,
        basis=est.basis,
        evidence=(*reasons, *est.evidence),
        write_heavy=heavy is not None,
        warnings=tuple(warnings),
    )
