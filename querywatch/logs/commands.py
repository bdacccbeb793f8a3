"""`querywatch logs FILE... | -`: report on PostgreSQL server logs, load them into the store.

Each file is read (decompressed by its magic bytes), parsed into events, summarized for the report
and, with ``--store``, loaded into the history store as a second source
(:mod:`querywatch.logs.load`). ``--state FILE`` keeps where each file was read up to, so a repeated
run reads only what is new; ``--follow`` tails one file through rotation until SIGINT/SIGTERM,
writing to the store as it goes, and prints the report at the end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..clikit import DsnOpt, ServerOpt, err, load_settings, open_store, out, stop_on_signals
from ..durations import iso
from ..errors import InputError, QuerywatchError
from .reader import Position, follow, load_positions, read_chunks, save_positions
from .reader import _line_end as line_end
from .reader import _same_file as same_file

if TYPE_CHECKING:  # the parser, summary (pglast), report and store loader load when logs are read
    from ..store.protocol import StoreProtocol
    from . import report as rep
    from .load import Loader, LoadResult
    from .records import Plan
    from .summary import Summary

log = logging.getLogger("querywatch.logs")

IDLE_FLUSH_S = 1.0  # following: how often what was read is written to the store
EXPLAINED = 5  # --keep-params --dsn: the slowest executions explained with their values


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    html = "html"


@dataclass
class Run:
    """One `logs` invocation: what it reads, where events go."""

    files: list[str]
    log_format: str | None = None
    prefix: str | None = None
    keep_params: bool = False
    state: Path | None = None
    summary: Summary = field(default_factory=lambda: _summary())  # pglast loads when reading
    loader: Loader | None = None
    positions: dict[str, Position] = field(default_factory=dict)
    jobs: int = 1

    def consume(self, chunks: Iterable[bytes]) -> None:
        """Summarize (and load) one file's blocks; without a store nor --keep-params the
        summary's fast path reads the log without an event per statement."""
        from .parser import parse
        from .summary import summarize

        loader = self.loader
        if loader is None and not self.keep_params:
            summarize(chunks, fmt=self.log_format, prefix=self.prefix, summary=self.summary)
            return
        if loader is not None and not self.keep_params:  # --store: the fast path feeds both
            self.summary.on_line = loader.timed
            try:
                for event in parse(
                    chunks, fmt=self.log_format, prefix=self.prefix, on_timed=self.summary.timed
                ):
                    self.summary.add(event)
                    loader.add(event)
            finally:
                self.summary.on_line = None
            return
        add = self.summary.add
        events = parse(
            chunks, fmt=self.log_format, prefix=self.prefix, keep_params=self.keep_params
        )
        for event in events:
            add(event)
            if loader is not None:
                loader.add(event)

    def read_all(self) -> None:
        for path in self.files:
            key = _key(path)

            def keep(position: Position, key: str = key) -> None:
                self.positions[key] = position

            if self._splits(path) and self._parallel(path, key):
                continue
            chunks = read_chunks(path, self.positions.get(key), on_position=keep)
            self.consume(_guarded(path, chunks))
            if self.loader is not None:  # each file's span of time on its own: a gap between
                self.loader.flush()  # two files is not marked as loaded
        self.save_state()

    def _splits(self, path: str) -> bool:
        return self.jobs > 1 and self.loader is None and not self.keep_params and path != "-"

    def _parallel(self, path: str, key: str) -> bool:
        """The file read by `jobs` processes (a large plain stderr log); False: not split."""
        from .parallel import summarize_parallel

        try:
            stat = os.stat(path)
        except OSError:
            return False
        position = self.positions.get(key)
        start = position.offset if position is not None and same_file(position, stat) else 0
        done = summarize_parallel(
            path,
            self.jobs,
            fmt=self.log_format,
            prefix=self.prefix,
            start=start,
            summary=self.summary,
        )
        if done is None:
            return False
        self.positions[key] = Position(path, stat.st_ino, stat.st_dev, line_end(path, done[1]))
        return True

    def follow(self, stop: threading.Event) -> None:
        path = self.files[0]
        key = _key(path)
        last_flush = [time.monotonic()]

        def keep(position: Position) -> None:
            self.positions[key] = position

        def idle() -> None:  # caught up with the writer: store what was read, then the state
            if time.monotonic() - last_flush[0] >= IDLE_FLUSH_S:
                if self.loader is not None:
                    self.loader.flush(final=True)  # the current bucket too (upserted later)
                self.save_state()
                last_flush[0] = time.monotonic()

        chunks = follow(path, self.positions.get(key), stop=stop.is_set, on_position=keep)
        self.consume(_on_idle(chunks, idle))
        self.save_state()

    def save_state(self) -> None:
        if self.state is not None and self.positions:
            try:
                save_positions(self.state, self.positions)
            except OSError as exc:
                raise InputError(
                    f"logs --state: cannot write {str(self.state)!r}: {exc.strerror}"
                ) from None


def _summary() -> Summary:
    """An empty summary (its module, with pglast, loads when a run starts, not with --help)."""
    from .summary import Summary

    return Summary()


def _key(path: str) -> str:
    return path if path == "-" else os.path.abspath(path)


def _guarded(path: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The file's blocks; an OS error while reading becomes a one-line InputError."""
    try:
        yield from chunks
    except OSError as exc:
        raise InputError(f"logs: cannot read {path!r}: {exc.strerror or exc}") from None


def _on_idle(chunks: Iterable[bytes], idle: Callable[[], None]) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        if not chunk:  # the parser has given out what it held: the caller's events are in
            idle()


def check_files(files: list[str], follow_: bool) -> None:
    """Every file exists and can be read (``-`` is standard input); one-line errors."""
    if not files:
        raise InputError("logs: give at least one log file (or - for standard input)")
    if follow_ and (len(files) != 1 or files[0] == "-"):
        raise InputError("logs --follow: give exactly one log file (not -)")
    if files.count("-") > 1:
        raise InputError("logs: standard input (-) can be read once")
    for path in files:
        if path == "-":
            continue
        p = Path(path)
        if follow_ and not p.exists():
            continue  # followed: it may appear (rotation)
        if not p.exists():
            raise InputError(f"logs: no such file {path!r}")
        if p.is_dir():
            raise InputError(f"logs: {path!r} is a folder, not a log file")
        if not os.access(p, os.R_OK):
            raise InputError(f"logs: cannot read {path!r}: permission denied")


def logs_command(
    files: Annotated[
        list[str],
        typer.Argument(help="server log files (plain, gzip, bzip2, xz or zstd); - reads stdin"),
    ],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="report format: text, json or html")
    ] = ReportFormat.text,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="write the report to this file")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="stderr, csvlog, jsonlog, syslog, rds, cloudsql, cnpg or logplex "
            "(default: detected)",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="the server's log_line_prefix (default: detected)"),
    ] = None,
    follow_: Annotated[
        bool,
        typer.Option("--follow", help="tail the file through rotation until interrupted"),
    ] = False,
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help="resume file: where each log was read up to (reads only what is new)"
        ),
    ] = None,
    keep_params: Annotated[
        bool,
        typer.Option(
            "--keep-params",
            help="keep parameter values (with --dsn: EXPLAIN the slowest with their values)",
        ),
    ] = False,
    anonymize: Annotated[
        bool, typer.Option("--anonymize", help="mask literals in the report")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option("--store", help="load the events into this history store (a second source)"),
    ] = None,
    incidents: Annotated[
        bool,
        typer.Option(
            "--incidents",
            help="with --store: replay detection over what was loaded (a post-mortem: the "
            "incidents querywatch would have opened, shown by the dashboard and incident report)",
        ),
    ] = False,
    server: ServerOpt = None,
    dsn: DsnOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="statements per table")] = 20,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="processes reading a large plain stderr log (byte ranges, merged; "
            "not with --store, --keep-params or --follow)",
        ),
    ] = 1,
) -> None:
    """Report on PostgreSQL server logs; with --store, load them as a second source."""
    from ..source.postgres import server_label
    from . import report as rep
    from .load import Loader

    check_files(files, follow_)
    cfg = load_settings(store=store, server_name=server, dsn=dsn)
    if incidents and (store is None or follow_):
        raise InputError("logs --incidents: give --store (and no --follow: watch detects live)")
    if dsn is not None and not keep_params:
        raise InputError("logs: --dsn is used to EXPLAIN logged values: add --keep-params")
    run = Run(
        files=files,
        log_format=log_format,
        prefix=prefix,
        keep_params=keep_params,
        state=Path(state) if state else None,
        jobs=jobs,
    )
    if run.state is not None:
        run.positions = load_positions(run.state)
    name = cfg.server_name or (server_label(cfg.dsn) if dsn else "logs")
    st = open_store(cfg) if store is not None else None
    try:
        if st is not None:
            run.loader = Loader(st, st.server(name).id, keep_values=keep_params)
        if follow_:
            stop = threading.Event()
            with stop_on_signals(stop.set):
                run.follow(stop)
        else:
            run.read_all()
        loaded = run.loader.close() if run.loader is not None else None
        found = _replay(st, name, loaded) if incidents and st is not None else None
    finally:
        if st is not None:
            st.close()
    result = build_report(run.summary, files, top, loaded, name if loaded else None)
    if found is not None and result.loaded is not None:
        result = replace(result, loaded={**result.loaded, "incidents": found})
    if keep_params and dsn is not None:
        result = explain_slowest(result, cfg.dsn)
    if anonymize:
        result = result.anonymized()
    _emit(rep.RENDERERS[fmt.value](result), output)


def build_report(
    summary: Summary, files: list[str], top: int, loaded: LoadResult | None, server: str | None
) -> rep.Report:
    """The report's record from the summary (with the slowest plans, and what --store wrote)."""
    report = summary.report(tuple(files), top)
    report = replace(report, plans=tuple(_planned(p) for p in summary.plans()[:top]))
    if loaded is not None:
        doc = {"server": server, **loaded.as_dict()}
        report = replace(report, loaded=doc)
    return report


def _replay(st: StoreProtocol, server: str, loaded: LoadResult | None) -> list[dict[str, object]]:
    """The incidents detection opens over the span just loaded (``--incidents``)."""
    from .postmortem import replay

    if loaded is None or loaded.first_at is None or loaded.last_at is None:
        return []
    found = replay(st, st.server(server).id, server, loaded.first_at, loaded.last_at)
    return [
        {"id": f.id, "state": f.state, "opened_at": iso(f.opened_at), "summary": f.summary}
        for f in found
    ]


def _planned(p: Plan) -> rep.Execution:
    """An auto_explain plan as the execution it was logged for."""
    from . import report as rep

    return rep.Execution(
        at=p.at.isoformat(timespec="milliseconds") if p.at is not None else None,
        duration_ms=p.duration_ms,
        fingerprint=p.fingerprint,
        query=p.query,
        database=p.database,
        user=p.user,
        pid=p.pid,
        plan=p.plan,
        plan_format=p.format,
    )


def explain_slowest(report: rep.Report, dsn: str) -> rep.Report:
    """The slowest executions that have their text explained with their logged values."""
    from .explain import Explainer

    explainer = Explainer(dsn)
    try:
        done = 0
        slowest = []
        for e in report.slowest:
            if done < EXPLAINED and e.text:
                doc = explainer.explain(e.text, e.params)
                if doc is not None:
                    e = replace(e, explain=doc)
                    done += 1
            slowest.append(e)
    finally:
        explainer.close()
    return replace(report, slowest=tuple(slowest))


def _emit(text: str, output: str | None) -> None:
    if output is None:
        out.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    try:
        Path(output).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"logs --output: cannot write {output!r}: {exc.strerror}") from None
    err.print(f"report written to {output}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_command)


__all__ = ["QuerywatchError", "logs_command", "register"]
