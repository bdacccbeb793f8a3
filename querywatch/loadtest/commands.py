"""`querywatch loadtest`: run one statement at a fixed rate, report, save, compare."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..clikit import DsnOpt, StoreOpt, err, load_settings, open_store, out
from ..durations import parse_duration
from ..errors import InputError

if TYPE_CHECKING:  # the engine (psycopg) and Rich's progress bar load when a test runs
    from rich.console import Console

    from ..store.protocol import StoreProtocol
    from .engine import Progress as LoadProgress
    from .result import LoadResult


class LoadFormat(StrEnum):
    text = "text"
    json = "json"


def statement_text(store: StoreProtocol, fp: str) -> str:
    """The normalized text (``$n`` placeholders) of a fingerprint recorded in the store."""
    found = store.statements([fp]).get(fp)
    if found is None or not found.query:
        raise InputError(f"--fingerprint: {fp!r} is not in the store (fix: see `querywatch top`)")
    return found.query


def read_sql(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip().rstrip(";").strip()
    except OSError as exc:
        raise InputError(f"--sql: cannot read {str(path)!r}: {exc.strerror}") from None
    if not text:
        raise InputError(f"--sql: {str(path)!r} is empty")
    return text


def _with_progress(console: Console, run: Any) -> LoadResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]loadtest"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("run", total=1.0, detail="")

        def update(p: LoadProgress) -> None:
            detail = f"{p.completed} done, {p.errors} errors"
            bar.update(task, completed=p.elapsed_s / p.duration_s, detail=detail)

        result: LoadResult = run(update)
        return result


def loadtest_command(
    rate: Annotated[float, typer.Option(help="arrivals per second (open model)")],
    duration: Annotated[str, typer.Option(help="how long, e.g. 10s, 2m")],
    dsn: DsnOpt = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="a statement recorded in the store")
    ] = None,
    sql_file: Annotated[
        Path | None, typer.Option("--sql", help="file with one statement ($n placeholders)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="connections")] = 4,
    params: Annotated[
        Path | None, typer.Option("--params", help="parameter rows: .json, .jsonl or .csv")
    ] = None,
    sample_params: Annotated[
        bool, typer.Option("--sample-params", help="sample parameters from the tables")
    ] = False,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="a saved result to compare with")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="save the result as JSON")
    ] = None,
    fmt: Annotated[LoadFormat, typer.Option("--format", help="text or json")] = (LoadFormat.text),
    store: StoreOpt = None,
) -> None:
    """Open-model load test of one statement: latency percentiles, rate, errors, DB time."""
    from .params import read_params
    from .result import compare_text, load_file, to_json, to_text
    from .runner import run_loadtest

    cfg = load_settings(dsn=dsn, store=store)
    if (fingerprint is None) == (sql_file is None):
        raise InputError("loadtest: give exactly one of --fingerprint or --sql")
    if params is not None and sample_params:
        raise InputError("loadtest: give --params or --sample-params, not both")
    seconds = parse_duration(duration, "--duration")
    before = load_file(str(compare)) if compare is not None else None
    if sql_file is not None:
        query = read_sql(sql_file)
    else:
        with open_store(cfg, create=False) as st:
            query = statement_text(st, fingerprint or "")
    rows = read_params(params) if params is not None else None
    result = _with_progress(
        err,
        lambda cb: run_loadtest(
            cfg.dsn, query, rate, seconds, concurrency, rows, sample_params, progress=cb
        ),
    )
    if output is not None:
        output.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    if fmt is LoadFormat.json:
        doc = to_json(result)
        if before is not None:
            doc = {"before": to_json(before), "after": doc}
        out.print_json(json.dumps(doc))
        return
    out.print(to_text(result), markup=False)
    if before is not None:
        out.print(compare_text(before, result), markup=False)


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest_command)
