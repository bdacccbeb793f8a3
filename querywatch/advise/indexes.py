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
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..errors import QuerywatchError
from . import candidates as cands
from . import catalog, families, nodes, plans, savings
from .records import IndexAdvice, IndexCandidate, IndexFact, QueryStats, TableFact, Verification
from .session import Session

log = logging.getLogger("querywatch.advise")

MIN_COST_RATIO = 0.5
WRITE_HEAVY_MIN_WRITES = 1_000
HYPO_CREATE = "SELECT indexrelid, indexname FROM {}.hypopg_create_index(%s)"
HYPO_DROP = "SELECT {}.hypopg_drop_index(%s)"


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


def _names(text: str, doc: Mapping[str, Any]) -> list[str]:
    """Relation names the statement mentions (from the parse tree) and the plan reads."""
    found = {c.table if not c.schema else f"{c.schema}.{c.table}" for c in cands.candidates(text)}
    found |= {str(n["Relation Name"]) for n in nodes.nodes(doc) if "Relation Name" in n}
    return sorted(found)


def _context(session: Session, text: str, doc: Mapping[str, Any]) -> _Context:
    names = _names(text, doc)
    with session.readonly() as cur:
        facts = catalog.tables(cur, names)
        existing = catalog.indexes(cur, names)
        distinct = catalog.distinct_values(cur, names)
        stats = families.column_stats(cur, names)
    return _Context({f.table: f for f in facts}, existing, distinct, stats)


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
    session: Session, text: str, candidate: IndexCandidate, cost_before: float
) -> Verification:
    """Plan the statement with ``candidate`` as a hypothetical index (hypopg)."""
    if session.hypopg is None or session.hypopg_schema is None:
        return Verification(False, detail=_hypopg_missing(session))
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
        cands.candidates(text, columns, ctx.distinct),
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
    check = verify(session, plan_text or text, candidate, before)
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
    return IndexAdvice(
        candidate=candidate,
        name=name,
        ddl=cands.ddl(candidate, name),
        verification=check,
        verified=check.available,
        saving=est.saving,
        saved_ms_per_s=est.saving * db_ms_per_s,
        basis=est.basis,
        evidence=(*reasons, *est.evidence),
        write_heavy=heavy is not None,
        warnings=tuple(warnings),
    )
