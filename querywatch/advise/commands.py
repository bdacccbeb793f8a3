"""`querywatch advise` and `querywatch explain`: parse, call the advisor, print (Rich text,
Markdown or JSON). Added to the CLI's app by :func:`register`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..clikit import (
    DsnOpt,
    Format,
    ServerOpt,
    StoreOpt,
    load_settings,
    open_store,
    out,
    server_name,
)
from ..docs import configured_base
from ..durations import iso, parse_duration
from ..errors import InputError

if TYPE_CHECKING:  # the advisor, its session (psycopg) and pglast load when a command runs
    from rich.console import Console

    from ..model import Statement
    from ..settings import Settings
    from ..store.protocol import StoreProtocol
    from .records import Advice, Review
    from .session import Session


class ReportFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


def advise_command(
    dsn: DsnOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="how many statements")] = 10,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="text, markdown or json")
    ] = ReportFormat.text,
    since: Annotated[
        str, typer.Option(help="window back from now, from the store when it has data")
    ] = "1h",
    store: StoreOpt = None,
    server: ServerOpt = None,
) -> None:
    """Review the most resource-intensive statements: findings, plans, verified index fixes."""
    from .session import Session

    cfg = load_settings(dsn=dsn, store=store, server_name=server)
    seconds = parse_duration(since, "--since")
    with Session.open(cfg.dsn, timeout_ms=cfg.statement_timeout_ms) as session:
        review = _review(cfg, session, top, seconds)
    _print_review(out, review, fmt, configured_base(cfg))


def explain_command(
    statement: Annotated[str, typer.Argument(help="a fingerprint or a queryid")],
    dsn: DsnOpt = None,
    analyze: Annotated[
        bool, typer.Option("--analyze", help="EXPLAIN ANALYZE (SELECT without parameters)")
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
    store: StoreOpt = None,
    server: ServerOpt = None,
) -> None:
    """The plan, findings and index advice of one statement, and its plan history."""
    from . import advisor, report
    from .session import Session

    cfg = load_settings(dsn=dsn, store=store, server_name=server)
    with Session.open(cfg.dsn, timeout_ms=cfg.statement_timeout_ms) as session:
        found = _lookup(cfg, session, statement)
        advice = advisor.advise_with(session, found, None, 0.0, analyze)
    history = _remember(cfg, [advice], found.fingerprint)
    if fmt is Format.json:
        doc = report.advice_to_json(advice, docs_base=configured_base(cfg))
        doc["plan_document"] = advice.plan
        doc["plan_history"] = history
        out.print_json(json.dumps(doc))
        return
    _print_advice(out, 1, advice, configured_base(cfg))
    _print_history(out, history)


def register(app: typer.Typer) -> None:
    """Add `advise` and `explain` to the CLI."""
    app.command("advise")(advise_command)
    # a queryid may be negative: "-4444..." is the statement, not an unknown option
    app.command("explain", context_settings={"ignore_unknown_options": True})(explain_command)


def _open_store(cfg: Settings) -> StoreProtocol | None:
    """The configured store when its file exists (advise works without one)."""
    from ..store import store_exists

    return open_store(cfg, create=False) if store_exists(cfg.store) else None


def _review(cfg: Settings, session: Session, top: int, seconds: float) -> Review:
    """From the store when it holds the window for this server, else from pg_stat_statements."""
    from . import advisor

    end = time.time()
    name = server_name(cfg)
    st = _open_store(cfg)
    workload: list[advisor.Workload] = []
    if st is not None:
        with st:
            srv = next((s for s in st.servers() if s.name == name), None)
            if srv is not None:
                workload = advisor.store_workload(st, srv.id, end - seconds, end, top)
    if workload:
        window: tuple[float | None, float] = (end - seconds, end)
        source = "store"
    else:
        workload, since, end = advisor.server_workload(session, top)
        window, source = (since, end), "pg_stat_statements"
    result = advisor.review(session, workload, server=name, window=window, stats_source=source)
    _remember(cfg, result.statements, None)
    return result


def _remember(
    cfg: Settings, advice: Sequence[Advice], fingerprint: str | None
) -> list[dict[str, Any]]:
    """Store the plans when a store exists; the plan history of ``fingerprint``."""
    from . import advisor

    st = _open_store(cfg)
    if st is None:
        return []
    with st:
        srv = st.server(server_name(cfg))
        advisor.remember(st, srv.id, advice)
        if fingerprint is None:
            return []
        return [
            {
                "plan_hash": p.plan_hash,
                "first_seen": iso(p.first_seen),
                "last_seen": iso(p.last_seen),
                "total_cost": p.total_cost,
            }
            for p in st.plans(fingerprint, srv.id)
        ]


LOOKUP_QUERYID = """
SELECT query, calls, rows, total_exec_time AS total_ms FROM {schema}.pg_stat_statements
WHERE queryid = %(queryid)s LIMIT 1
"""


def _lookup(cfg: Settings, session: Session, wanted: str) -> Statement:
    """The statement of a fingerprint (from the store) or a queryid (store, then the server)."""
    from ..model import Statement
    from . import advisor

    queryid = int(wanted) if wanted.lstrip("-").isdigit() else None
    st = _open_store(cfg)
    if st is not None:
        with st:
            for s in st.statements().values():
                if s.query and (s.fingerprint == wanted or queryid in s.queryids):
                    return s
    if queryid is not None:
        for w in advisor.server_workload(session, 10_000)[0]:
            if queryid in w.queryids:
                return Statement(w.fingerprint, w.query, w.queryids)
    raise InputError(
        f"explain: no statement with fingerprint or queryid {wanted!r} "
        "(fix: run `querywatch top` to list them)"
    )


def _print_review(out: Console, review: Review, fmt: ReportFormat, docs_base: str) -> None:
    from rich.table import Table

    from ..fingerprint import display
    from . import report
    from .records import QueryStats

    if fmt is ReportFormat.json:
        out.print_json(json.dumps(report.review_to_json(review, docs_base)))
        return
    if fmt is ReportFormat.markdown:
        out.print(report.review_to_markdown(review, docs_base), markup=False, highlight=False)
        return
    start = iso(review.window_start) or "statistics start"
    out.print(
        f"[bold]review of {review.server}[/] (PostgreSQL {review.version}), "
        f"{review.stats_source} {start} to {iso(review.window_end)}, hypopg: {review.hypopg}"
    )
    table = Table()
    for col in ("#", "ms/s", "calls/s", "mean ms", "findings", "fixes", "query"):
        table.add_column(col, justify="left" if col in {"findings", "query"} else "right")
    for rank, a in enumerate(review.statements, 1):
        s = a.stats or QueryStats(0, 0, 0, 1)
        table.add_row(
            str(rank),
            f"{a.db_ms_per_s:,.1f}",
            f"{s.calls_per_s:,.2f}",
            f"{s.mean_ms:,.2f}",
            ", ".join(f.rule for f in a.findings) or ("error" if a.error else "-"),
            str(len(a.indexes)),
            display(a.query, 70),
        )
    out.print(table)
    for rank, a in enumerate(review.statements, 1):
        if a.findings or a.indexes or a.error:
            _print_advice(out, rank, a, docs_base)
    for h in review.health:
        out.print(f"health {h.severity.value} {h.check} {h.subject}: {h.message}", markup=False)
        out.print(f"        docs: {report.health_docs(h, docs_base)}", markup=False)


def _print_advice(out: Console, rank: int, a: Advice, docs_base: str) -> None:
    from ..fingerprint import display
    from . import report

    out.print(f"\n[bold]{rank}. {display(a.query, 110)}[/]", markup=True, highlight=False)
    if a.error:
        out.print(f"   no plan: {a.error}", markup=False)
        return
    if a.summary is not None:
        kind = "analyzed" if a.summary.analyzed else "generic"
        out.print(
            f"   plan ({kind}, {a.summary.plan_hash}, cost {a.summary.total_cost:,.0f}): "
            + " -> ".join(a.summary.nodes),
            markup=False,
        )
    for f in a.findings:
        out.print(f"   {f.severity.value:<4} {f.rule}: {f.message}", markup=False)
        for e in f.evidence:
            out.print(f"        {e}", markup=False)
        out.print(f"        docs: {report.finding_docs(f, docs_base)}", markup=False)
    for i in a.indexes:
        mark = "verified" if i.verified else "UNVERIFIED"
        out.print(f"   fix [{mark}] {i.ddl}", markup=False)
        out.print(
            f"        saves ~{i.saving:.0%} (~{i.saved_ms_per_s:,.1f} ms/s), from {i.basis}",
            markup=False,
        )
        for e in (*i.evidence, *i.warnings):
            out.print(f"        {e}", markup=False)
    for n in a.notes:
        out.print(f"   note: {n}", markup=False)
    if a.plan is not None and a.summary is not None and len(a.summary.nodes) > 1:
        out.print("   " + "\n   ".join(_tree(a.plan)), markup=False)


def _tree(doc: Any) -> list[str]:
    from . import nodes

    lines: list[str] = []

    def visit(node: Any, depth: int) -> None:
        lines.append(f"{'  ' * depth}-> {nodes.describe(node)} (cost {node.get('Total Cost')})")
        for child in node.get("Plans", ()):
            visit(child, depth + 1)

    visit(nodes.top(doc), 0)
    return lines


def _print_history(out: Console, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    out.print(f"\nplan history ({len(history)} shapes):", markup=False)
    for h in history:
        out.print(
            f"   {h['plan_hash']} first {h['first_seen']} last {h['last_seen']} "
            f"cost {h['total_cost']:,.0f}",
            markup=False,
        )
    if len(history) > 1:
        out.print(f"   the plan changed {len(history) - 1} times", markup=False)


__all__ = ["ReportFormat", "register"]
