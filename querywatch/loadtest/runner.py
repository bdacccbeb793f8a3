"""`run_loadtest`: one statement at a fixed arrival rate against a server, measured end to end.

The statement uses PostgreSQL's ``$n`` placeholders (pg_stat_statements' normalized form works as
is); parameter rows come from a list (``--params FILE``) or are sampled from the tables the
statement reads (``--sample-params``). Each worker connection runs requests round-robin over the
rows; psycopg prepares the statement after a few executions, as an application would.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ..errors import ConnectError, InputError
from ..fingerprint import fingerprint
from .dbtime import DbTime, DbTimeProbe
from .engine import EngineResult, OpenModel, Progress
from .params import sample_params
from .result import Latency, LoadResult

log = logging.getLogger("querywatch.loadtest")

APPLICATION_NAME = "querywatch-loadtest"
Conn = psycopg.Connection[Any]


def connect(dsn: str, raw: bool = True) -> Conn:
    """An autocommit connection; ``raw`` ones take ``$n`` placeholders (psycopg.RawCursor)."""
    conninfo = make_conninfo(dsn, application_name=APPLICATION_NAME)
    factory = psycopg.RawCursor if raw else psycopg.Cursor
    try:
        return psycopg.connect(conninfo, autocommit=True, cursor_factory=factory)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectError(f"loadtest: cannot connect: {first}") from None


def _max_param(query: str) -> int:
    return max((int(n) for n in re.findall(r"\$(\d+)", query)), default=0)


def parameter_rows(
    dsn: str, query: str, params: Sequence[tuple[Any, ...]] | None, sample: bool, seed: int
) -> list[tuple[Any, ...]]:
    if params is not None:
        return list(params)
    if sample:
        with connect(dsn, raw=False) as conn:
            return sample_params(conn, query, seed=seed)
    needed = _max_param(query)
    if needed:
        raise InputError(
            f"loadtest: the statement has {needed} placeholders "
            "(fix: pass --params FILE or --sample-params)"
        )
    return [()]


def run_loadtest(
    dsn: str,
    query: str,
    rate: float,
    duration_s: float,
    concurrency: int = 4,
    params: Sequence[tuple[Any, ...]] | None = None,
    sample: bool = False,
    drain_s: float = 5.0,
    progress: Callable[[Progress], None] | None = None,
    measure_db: bool = True,
    seed: int = 1,
) -> LoadResult:
    """Run ``query`` at ``rate`` per second for ``duration_s``; the demo calls this to prove a fix."""
    if rate <= 0 or duration_s <= 0 or concurrency < 1:
        raise InputError("loadtest: rate and duration must be above zero, concurrency at least 1")
    rows = parameter_rows(dsn, query, params, sample, seed)
    random.Random(seed).shuffle(rows)
    model = OpenModel[Conn](
        connect=lambda: connect(dsn),
        execute=_executor(query, rows),
        close=lambda c: c.close(),
        broken=lambda c: c.broken or c.closed,
        recoverable=(psycopg.Error,),
    )
    probe = DbTimeProbe(dsn) if measure_db else None
    if probe is not None:
        probe.start()
    run = model.run(rate, duration_s, concurrency, drain_s, progress)
    fp = fingerprint(query)
    db = probe.finish(fp) if probe is not None else None
    note = probe.note if probe is not None else "not measured (measure_db=False)"
    return _result(query, fp, rate, duration_s, concurrency, run, db, note)


def _executor(query: str, rows: list[tuple[Any, ...]]) -> Callable[[Conn, int], None]:
    def execute(conn: Conn, i: int) -> None:
        values = rows[i % len(rows)]
        with conn.cursor() as cur:
            cur.execute(query, values or None)
            if cur.description is not None:
                cur.fetchall()

    return execute


def _result(
    query: str,
    fp: str,
    rate: float,
    duration_s: float,
    concurrency: int,
    run: EngineResult,
    db: DbTime | None,
    note: str,
) -> LoadResult:
    h = run.histogram

    def ms(percentile: float) -> float:
        return float(h.get_value_at_percentile(percentile)) / 1000.0

    latency = Latency(
        p50_ms=ms(50),
        p95_ms=ms(95),
        p99_ms=ms(99),
        max_ms=float(h.get_max_value()) / 1000.0,
        mean_ms=float(h.get_mean_value()) / 1000.0,
    )
    return LoadResult(
        query=query,
        fingerprint=fp,
        target_rate=rate,
        duration_s=duration_s,
        concurrency=concurrency,
        due=run.due,
        completed=run.completed,
        completed_in_window=run.completed_in_window,
        errors=run.errors,
        unfinished=run.unfinished,
        achieved_rate=run.completed_in_window / duration_s,
        latency=latency,
        db_calls=db.calls if db is not None else None,
        db_exec_ms=db.exec_ms if db is not None else None,
        server_exec_ms=db.server_exec_ms if db is not None else None,
        db_note=note,
        error_samples=tuple(run.error_samples),
        started_at=run.started_at,
        histogram=h.encode().decode("ascii") if h.get_total_count() else "",
    )
