"""The command line: each command parses, calls the library, prints. Errors become one line.

The shared options, consoles and openers are in :mod:`querywatch.clikit`; commands that belong to
a feature live in its ``commands.py`` and are added to ``app`` from :data:`FEATURES`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__, replication_commands
from .advise import commands as advise_commands
from .alerts.pagerduty import EVENTS_URL
from .audit import commands as audit_commands
from .clikit import (
    DsnOpt,
    DsnsOpt,
    Format,
    ServerOpt,
    SortBy,
    StoreOpt,
    err,
    load_settings,
    open_source,
    open_store,
    out,
    pick_server,
    setup_logging,
    stop_on_signals,
)
from .clikit import fleet as configured_servers
from .demo import commands as demo_commands
from .docs import INSTALL, check_link, configured_base, page_url, verdict_link
from .durations import human, iso, parse_duration, parse_time
from .errors import ConfigError, InputError, QuerywatchError, SourceError
from .gate import commands as gate_commands
from .loadtest import commands as loadtest_commands
from .logs import commands as logs_commands
from .settings import Settings, help_text
from .store import commands as store_commands
from .web import commands as web_commands

if TYPE_CHECKING:  # each command imports what it runs: `querywatch --help` loads none of these
    from . import check, top
    from .model import Diagnosis
    from .source.postgres import PostgresSource
    from .store.leases import Lease
    from .store.protocol import StoreProtocol

app = typer.Typer(
    help="Find the SQL query that is taking PostgreSQL down, say why, prove the fix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def collect(
    dsn: DsnOpt = None,
    store: StoreOpt = None,
    server: ServerOpt = None,
    interval: Annotated[
        str | None,
        typer.Option(help=help_text("interval", "seconds between snapshots, e.g. 10 or 10s")),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="store one interval and exit: the time since the last run's snapshot "
            "(for cron; a gap if the server restarted), or one interval on a first run",
        ),
    ] = False,
) -> None:
    """Collect pg_stat_statements deltas into the store (no detection, no alerts); one server
    (of a fleet: --server NAME; `watch` collects every server)."""
    from .service import LEASE_INTERVALS, OWNER
    from .watcher import Watcher

    cfg = load_settings(dsn=dsn, store=store, server_name=server, interval=interval)
    entries = configured_servers(cfg)
    if len(entries) > 1:
        names = ", ".join(e.name for e in entries)
        raise ConfigError(
            f"collect: {len(entries)} servers are configured ({names}); pass --server NAME "
            "for one, or run `querywatch watch` to collect them all"
        )
    name, dsn_of = entries[0].name, entries[0].dsn
    setup_logging()
    log = logging.getLogger("querywatch")
    with open_store(cfg) as st:
        lease = st.claim_server(name, OWNER, LEASE_INTERVALS * cfg.interval)  # one writer each
        watcher = Watcher(open_source(cfg, dsn_of), st, name, cfg.interval, cfg.activity_interval)
        try:
            with stop_on_signals(watcher.stop):
                watcher.on_interval = lambda *_: _renewed(st, lease)
                watcher.start()
                log.info("collecting %s every %s into %s", name, human(cfg.interval), cfg.store)
                watcher.run(once=once)
        finally:
            st.release(lease)
        watcher.source.close()
        log.info("stopped after %d intervals", watcher.status.intervals)


def _renewed(st: StoreProtocol, lease: Lease) -> None:
    """Renew in place: the lease object is replaced in the store, ours keeps its token."""
    st.renew(lease)


@app.command("top")
def top_command(
    since: Annotated[str, typer.Option(help="window length back from now, e.g. 15m, 2h")] = "15m",
    by: Annotated[SortBy, typer.Option(help="rank by")] = SortBy("time"),
    limit: Annotated[int, typer.Option(min=1, help="how many statements")] = 20,
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
    store: StoreOpt = None,
    server: ServerOpt = None,
    capacity: Annotated[
        bool,
        typer.Option(
            "--capacity",
            help="also the calls/s at which each statement alone would saturate the server's "
            "cores at its current cost per call, and its share of the cores now",
        ),
    ] = False,
    cpu_cores: Annotated[
        int | None,
        typer.Option(
            "--cpu-cores", min=1, help="with --capacity: the server's cores (default: as watched)"
        ),
    ] = None,
) -> None:
    """Rank statements by database time (or calls, mean, rows, io) over a recent window."""
    from . import headroom, top
    from .detect import settings_from_mapping

    cfg = load_settings(store=store, server_name=server)
    seconds = parse_duration(since, "--since")
    configured = cpu_cores or settings_from_mapping(cfg.sections.get("detect", {})).cpu_cores
    with open_store(cfg, create=False) as st:
        srv = pick_server(st, cfg)
        end = time.time()
        rows, covered = st.totals(srv.id, end - seconds, end)
        cores = headroom.cores_of(st, srv.name, configured) if capacity else None
    if capacity and cores is None:
        raise InputError(
            f"top --capacity: the CPU cores of {srv.name!r} are unknown (pass --cpu-cores N or "
            "set [detect] cpu_cores; `querywatch watch` reads them from the server)"
        )
    entries = [top.Entry(r.fingerprint, r.queryids, r.query, r.counters) for r in rows]
    ranked = top.rank(entries, covered, by.value, limit, cores.count if cores else None)
    if fmt is Format.json:
        doc = {
            "server": srv.name,
            "window": {"start": iso(end - seconds), "end": iso(end)},
            "seconds_covered": round(covered, 3),
            "by": by.value,
            **({"cores": {"count": cores.count, "how": cores.how}} if cores else {}),
            "statements": [r.as_dict() for r in ranked],
        }
        out.print_json(json.dumps(doc))
        return
    _print_top(ranked, srv.name, since, covered)


def _print_top(ranked: list[top.RankedStatement], server: str, since: str, covered: float) -> None:
    from rich.table import Table

    from .text import one_line

    cores = ranked[0].capacity.cores if ranked and ranked[0].capacity else None
    title = f"top statements on {server}, last {since} ({human(covered)} of data)"
    table = Table(title=title + (f", {cores} cores" if cores else ""))
    for name in ("#", "share", "calls/s", "mean ms", "rows/call"):
        table.add_column(name, justify="right")
    if cores:
        table.add_column("saturates at /s", justify="right")
        table.add_column("of cores", justify="right")
    table.add_column("query", justify="left")
    for r in ranked:
        cap = r.capacity
        table.add_row(
            str(r.rank),
            f"{r.share:.1%}",
            f"{r.calls_per_s:,.2f}",
            f"{r.mean_ms:,.3f}",
            f"{r.rows_per_call:,.1f}",
            *((_saturating(cap.saturating_calls_per_s), f"{cap.utilisation:.1%}") if cap else ()),
            one_line(r.query, 90),
        )
    if not ranked:
        out.print(f"no statements ran in the last {since}")
        return
    out.print(table)


def _saturating(calls_per_s: float) -> str:
    return f"{calls_per_s:,.0f}" if math.isfinite(calls_per_s) else "-"


@app.command("check")
def check_command(
    dsn: DsnsOpt = None,
    server: ServerOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
) -> None:
    """Preflight: version, pg_stat_statements, privileges and capacity, with the fix for each;
    every server of a fleet ([[servers]] or --dsn repeated), an unreachable one as a failure."""
    from concurrent.futures import ThreadPoolExecutor

    from . import check
    from .source.postgres import describe_dsn

    cfg = load_settings(dsn=dsn, server_name=server)
    entries = configured_servers(cfg)
    if len(entries) == 1 and not cfg.servers:  # one server: unreachable is an error, as ever
        results = _checks(cfg, cfg.dsn)
        if fmt is Format.json:
            base = configured_base(cfg)
            checks = [{**f.as_dict(), "docs_url": check_link(f.name, base)} for f in results]
            doc = {"server": describe_dsn(cfg.dsn), "checks": checks, "docs_url": _install_docs()}
            out.print_json(json.dumps(doc))
        else:
            _print_checks(results)
        if check.failed(results):
            raise typer.Exit(1)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:  # one slow, not all
        found = list(pool.map(lambda e: _fleet_checks(cfg, e.dsn), entries))
    if fmt is Format.json:
        docs = [check.server_doc(e.name, e.labels, r) for e, r in zip(entries, found, strict=True)]
        out.print_json(json.dumps({"servers": docs, "docs_url": _install_docs()}))
    else:
        for entry, results in zip(entries, found, strict=True):
            out.print(check.server_title(entry.name, entry.labels, results), markup=False)
            _print_checks(results)
    if any(check.failed(r) for r in found):
        raise typer.Exit(1)


def _checks(cfg: Settings, dsn: str) -> list[check.Finding]:
    from . import check

    source = open_source(cfg, dsn)
    caps = source.connect()
    usage = _usage(source)
    cpu = _cpu_cores(cfg, source)
    source.close()
    return check.findings(caps, usage, source.kcache_status, cpu)


def _fleet_checks(cfg: Settings, dsn: str) -> list[check.Finding]:
    """One server of a fleet: its findings, or one failed finding when it cannot be read."""
    from . import check

    try:
        return _checks(cfg, dsn)
    except SourceError as exc:
        return [check.unreachable(str(exc))]


def _cpu_cores(cfg: Settings, source: PostgresSource) -> check.CpuCores:
    from . import check
    from .detect import settings_from_mapping
    from .source.cores import server_cores

    configured = settings_from_mapping(cfg.sections.get("detect", {})).cpu_cores
    found = server_cores(source) if configured is None else None
    if found is None:
        return check.CpuCores(configured)
    return check.CpuCores(configured, found.count, found.how)


def _usage(source: PostgresSource) -> check.Usage | None:
    from . import check

    caps = source.capabilities
    if not (caps.preloaded and caps.pgss_version):
        return None
    try:
        snapshot = source.snapshot()
    except QuerywatchError:
        return None
    return check.Usage(len(snapshot.statements), snapshot.dealloc)


_MARKS = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}  # Level


def _print_checks(results: list[check.Finding]) -> None:
    from . import check

    for f in results:
        out.print(f"{_MARKS[f.level.value]} {f.name}: {f.message}")
        if f.fix and f.level is not check.Level.OK:
            out.print(f"      fix: {f.fix}")
        if f.level is not check.Level.OK:
            out.print(f"      docs: {check_link(f.name, configured_base())}", markup=False)


def _install_docs() -> str:
    """The install page: how to enable what `check` looks for, managed services included."""
    return page_url(INSTALL, configured_base())


@app.command()
def watch(
    dsn: DsnsOpt = None,
    store: StoreOpt = None,
    server: ServerOpt = None,
    interval: Annotated[
        str | None, typer.Option(help=help_text("interval", "seconds between snapshots"))
    ] = None,
    alert_webhook: Annotated[
        list[str] | None,
        typer.Option("--alert-webhook", help="POST the contract JSON here (repeatable)"),
    ] = None,
    slack_webhook: Annotated[
        list[str] | None,
        typer.Option("--slack-webhook", help="Slack incoming-webhook URL (repeatable)"),
    ] = None,
    pagerduty_routing_key: Annotated[
        list[str] | None,
        typer.Option(
            "--pagerduty-routing-key", help="PagerDuty Events v2 routing key (repeatable)"
        ),
    ] = None,
    pagerduty_url: Annotated[
        str, typer.Option("--pagerduty-url", help="PagerDuty Events API URL (override for tests)")
    ] = EVENTS_URL,
    alertmanager_url: Annotated[
        list[str] | None,
        typer.Option("--alertmanager-url", help="Alertmanager base URL (repeatable)"),
    ] = None,
    cpu_cores: Annotated[
        int | None,
        typer.Option("--cpu-cores", min=1, help="the server's cores, for the CPU-capacity rule"),
    ] = None,
    web: Annotated[
        bool,
        typer.Option("--web", help="also serve the dashboard, API and /metrics (--host, --port)"),
    ] = False,
    host: Annotated[str | None, typer.Option(help=help_text("host", "web server address"))] = None,
    port: Annotated[int | None, typer.Option(help=help_text("port", "web server port"))] = None,
    audit_before: Annotated[
        str, typer.Option("--audit-before", help="deploy audits: window before a deploy")
    ] = "30m",
    audit_after: Annotated[
        str, typer.Option("--audit-after", help="deploy audits: window after, then the audit runs")
    ] = "15m",
    log_files: Annotated[
        list[str] | None,
        typer.Option(
            "--log",
            help="also follow this server log ([NAME=]FILE, repeatable): auto_explain plans, "
            "lock waits, deadlocks, temp files and errors into the store",
        ),
    ] = None,
) -> None:
    """Collect, detect and alert until SIGINT/SIGTERM (then exit 0). Several servers: repeat
    --dsn, or list them as [[servers]] tables in querywatch.toml (one thread each)."""
    from .alerts import channels_from_settings
    from .logs.follower import log_pairs
    from .service import WatchOptions, run_watch

    cfg = load_settings(
        dsn=dsn, store=store, server_name=server, interval=interval, host=host, port=port
    )
    setup_logging()
    channels = channels_from_settings(
        alert_webhook or [],
        slack_webhook or [],
        pagerduty_routing_key or [],
        pagerduty_url,
        alertmanager_url or [],
    )
    options = WatchOptions(
        channels=channels,
        cpu_cores=cpu_cores,
        web=web,
        audit_before_s=parse_duration(audit_before, "--audit-before"),
        audit_after_s=parse_duration(audit_after, "--audit-after"),
        logs=log_pairs(log_files or [], [e.name for e in configured_servers(cfg)]),
    )
    stop = threading.Event()
    with stop_on_signals(stop.set):
        run_watch(cfg, options, stop)


@app.command()
def diagnose(
    since: Annotated[
        str | None, typer.Option(help="window back from now, e.g. 10m (default: 10m)")
    ] = None,
    start: Annotated[str | None, typer.Option(help="window start, ISO 8601")] = None,
    end: Annotated[str | None, typer.Option(help="window end, ISO 8601 (default: now)")] = None,
    baseline: Annotated[
        str, typer.Option(help="history before the window to compare with")
    ] = "30m",
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
    store: StoreOpt = None,
    server: ServerOpt = None,
    dsn: DsnOpt = None,
    now: Annotated[
        bool,
        typer.Option(
            "--now",
            help="no store needed: sample the server now and compare with the long-run "
            "averages pg_stat_statements holds",
        ),
    ] = False,
    sample: Annotated[str, typer.Option(help="with --now: how long to sample")] = "10s",
) -> None:
    """Which statements explain the database time of a window, and why."""
    if now:
        if since is not None or start is not None or end is not None:
            raise InputError("diagnose: --now samples the server now; drop --since/--start/--end")
        _print_diagnosis(_diagnose_now(dsn, parse_duration(sample, "--sample")), fmt)
        return
    if dsn is not None:
        raise InputError("diagnose: --dsn goes with --now (without it, diagnose reads the store)")
    cfg = load_settings(store=store, server_name=server)
    if since is not None and start is not None:
        raise InputError("diagnose: give either --since or --start/--end, not both")
    window_end = parse_time(end, "--end") if end else time.time()
    window_start = (
        parse_time(start, "--start")
        if start
        else window_end - parse_duration(since or "10m", "--since")
    )
    if window_start >= window_end:
        raise InputError("diagnose: the window must start before it ends")
    from .capacity import settings_from_mapping as capacity_settings
    from .detect import Detector
    from .monitor import Monitor

    with open_store(cfg, create=False) as st:
        srv = pick_server(st, cfg)
        monitor = Monitor(
            st,
            srv.id,
            srv.name,
            Detector(),
            baseline_s=parse_duration(baseline, "--baseline"),
            capacity=capacity_settings(cfg.sections.get("capacity", {})),
        )
        result = monitor.diagnose_window(window_start, window_end)
    _print_diagnosis(result, fmt)


def _diagnose_now(dsn: str | None, sample_s: float) -> Diagnosis:
    """One-shot: no store, no watcher; one connection for ``sample_s`` seconds."""
    from .detect import settings_from_mapping as detect_settings
    from .oneshot import diagnose_now
    from .source.postgres import describe_dsn

    cfg = load_settings(dsn=dsn)
    min_age_s = detect_settings(cfg.sections.get("detect", {})).long_run_min_age

    def connected() -> None:  # after connecting: a wrong DSN stays a one-line error
        note = f"sampling {describe_dsn(cfg.dsn)} for {human(sample_s)}..."
        err.print(note, markup=False, soft_wrap=True)

    return diagnose_now(open_source(cfg), sample_s, connected=connected, min_age_s=min_age_s)


def _print_diagnosis(result: Diagnosis, fmt: Format) -> None:
    from .report import diagnosis_to_json, diagnosis_to_text

    link = verdict_link(result.verdict.value, configured_base())  # what to do
    if fmt is Format.json:
        out.print_json(json.dumps({**diagnosis_to_json(result), "docs_url": link}))
    else:
        out.print(f"{diagnosis_to_text(result)}\ndocs: {link}", markup=False)


mark_app = typer.Typer(
    help="Record markers (deploys) that diagnosis and audits use.", no_args_is_help=True
)
app.add_typer(mark_app, name="mark")


@mark_app.command("deploy")
def mark_deploy(
    version: Annotated[str, typer.Argument(help="the version or commit deployed")],
    at: Annotated[str | None, typer.Option(help="when, ISO 8601 (default: now)")] = None,
    note: Annotated[str, typer.Option(help="what changed, e.g. a feature flag")] = "",
    store: StoreOpt = None,
) -> None:
    """Record a deploy marker."""
    cfg = load_settings(store=store)
    if not version.strip():
        raise InputError("mark deploy: VERSION must not be empty")
    when = parse_time(at, "--at") if at else time.time()
    with open_store(cfg) as st:
        deploy = st.add_deploy(version.strip(), when, note)
    out.print(f"deploy {deploy.version} recorded at {iso(deploy.at)}", markup=False)


@app.command()
def status(
    store: StoreOpt = None,
    server: ServerOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
) -> None:
    """Collector health, open incidents and alert channel delivery, from the store. Several
    servers: one line each, trouble first (--server NAME: that server in detail)."""
    from . import fleet
    from . import status as server_status
    from .alerts.outbox import summary_json, summary_line

    cfg = load_settings(store=store, server_name=server)
    now = time.time()
    with open_store(cfg, create=False) as st:
        srv = pick_server(st, cfg) if cfg.server_name else None
        only = srv.name if srv is not None else None
        servers = server_status.build(st, only)  # derived from the store, the same way every time
        state = server_status.consistent(st.status(), servers, only)
        incidents = [i for i in st.incidents(srv.id if srv is not None else None, limit=20)]
        pending = st.outbox_summary()  # alerts not yet delivered, per channel
        rows = fleet.summarize(server_status.facts(st, now), now) if srv is None else []
        names = {s.id: s.name for s in st.servers()}
    listed: list[dict[str, Any]] = [
        {
            "id": s.incident.id,
            "server": names.get(s.server_id, ""),
            "state": s.incident.state.value,
            "key": s.incident.key,
            "opened_at": iso(s.incident.opened_at),
            "fired_at": iso(s.incident.fired_at),
            "resolved_at": iso(s.incident.resolved_at),
            "summary": (s.diagnosis or {}).get("summary", ""),
        }
        for s in incidents
    ]
    if fmt is Format.json:
        outbox = [summary_json(s, now) for s in pending]
        derived = server_status.as_json(servers, now)
        doc = {"status": state, "servers": derived, "incidents": listed, "outbox": outbox}
        if srv is None:
            doc["fleet"] = fleet.as_doc(rows)
        out.print_json(json.dumps(doc))
        return
    # a fleet: one line per server, trouble first; --server NAME for one in detail
    shown = server_status.fleet_lines(rows) if len(rows) > 1 else server_status.lines(servers, now)
    for line in shown:
        out.print(line, markup=False)
    _print_status(state, listed)
    for s in pending:
        out.print(summary_line(s, now), markup=False)


def _print_status(state: dict[str, dict[str, Any]], incidents: list[dict[str, Any]]) -> None:
    for key, value in sorted(state.items()):  # collectors and detectors: querywatch.status
        if key == "alerts":
            for c in value.get("channels", []):
                health = f"last error: {c['last_error']}" if c.get("last_error") else "ok"
                out.print(
                    f"alert channel {c['name']} {c['target']}: sent {c['sent']}, "
                    f"failed {c['failed']}, {health}",
                    markup=False,
                )
    for i in incidents[:5]:
        out.print(
            f"incident {i['id']} on {i['server']} {i['state']} since {i['opened_at']}: "
            f"{i['summary']}",
            markup=False,
        )
    if not state and not incidents:
        out.print("nothing recorded yet (run `querywatch collect` or `querywatch watch`)")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"querywatch {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="print the version"
        ),
    ] = False,
) -> None:
    """querywatch: which query, since when, why, and the fix."""


def main() -> None:
    try:
        app()
    except QuerywatchError as exc:
        err.print(f"querywatch: error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("querywatch: interrupted", markup=False)
        sys.exit(130)


# Commands defined next to their concept: each feature's module adds its commands to `app`.
FEATURES: tuple[Callable[[typer.Typer], None], ...] = (
    demo_commands.register,
    audit_commands.register,
    loadtest_commands.register,
    gate_commands.register,
    advise_commands.register,
    web_commands.register,
    logs_commands.register,
    store_commands.register,
    replication_commands.register,
)
for register in FEATURES:
    register(app)
