"""The watch loop as a library call: collect, detect, diagnose, alert, audit deploys and,
when asked, serve the dashboard, until a stop is requested.

``querywatch watch`` is this function plus flag parsing and signal handling; a test calls it
directly with a short interval and a ``stop_event``.

A fleet (``[[servers]]`` in querywatch.toml, or ``--dsn`` repeated) runs one
:class:`ServerWatch` per server, each in its own thread with its own connection, backoff,
baselines and incidents; they share the store (its writes are serialized), the alert dispatcher
(its own threads, one per channel) and the dashboard. One server is a fleet of one and runs in
the calling thread, as it always did.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .alerts import Dispatcher, Notification
from .alerts.dispatcher import outbox_settings
from .alerts.message import STORE_UNWRITABLE
from .audit.run import AuditScheduler
from .capacity import settings_from_mapping as capacity_settings
from .clikit import fleet, open_source, open_store
from .detect import Detector, DetectSettings, settings_from_mapping
from .docs import base_url
from .durations import human
from .errors import ServerLeased, SourceError, StoreError
from .logs.follower import start_followers
from .model import Interval
from .monitor import Monitor
from .replication import settings_from_sections as replication_settings
from .settings import ServerEntry, Settings
from .source.cores import server_cores
from .source.postgres import PostgresSource, describe_dsn
from .status import SERVER_INFO
from .store.leases import Lease
from .store.protocol import StoreProtocol
from .topology import TopologyMonitor
from .watcher import BACKOFF_MAX_S, BACKOFF_START_S, CollectorStatus, IntervalHook, Watcher

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .alerts.channel import Channel
    from .web.server import WebServer

log = logging.getLogger("querywatch")

STOP_POLL_S = 0.2  # how often a stop_event is looked at
THREAD_PREFIX = "qw:"  # a fleet's server threads are named qw:<server>
LEASE_INTERVALS = 3.0  # an owner lease lapses after this many intervals without renewal
LEASE_SLACK_S = 0.2  # past a dead watcher's lease expiry before claiming it
OWNER = f"querywatch watch (pid {os.getpid()})"  # who holds a lease, in a refusal
FLUSH_S = 10.0  # how long queued alerts may take to go out at the end


@dataclass(frozen=True)
class WatchOptions:
    """What ``watch`` takes beyond the settings: alert channels, detection overrides, audits."""

    channels: Sequence[Channel] = ()
    cpu_cores: int | None = None  # the server's cores, for the CPU-capacity rule
    web: bool = False  # also serve the dashboard, API and /metrics on cfg.host:cfg.port
    audit_before_s: float = 30 * 60.0
    audit_after_s: float = 15 * 60.0
    logs: tuple[tuple[str, str], ...] = ()  # --log: (server, log file) to follow


def detect_settings(cfg: Settings, options: WatchOptions) -> DetectSettings:
    """The ``[detect]`` table of the settings, with the options' overrides."""
    table = dict(cfg.sections.get("detect", {}))
    if options.cpu_cores is not None:
        table["cpu_cores"] = options.cpu_cores
    return settings_from_mapping(table)


def with_cores(detection: DetectSettings, source: PostgresSource) -> DetectSettings:
    """The server's core count read when it is not set, so the CPU rule is on by default."""
    if detection.cpu_cores is not None:
        return detection
    found = server_cores(source)
    if found is None:
        log.warning(
            "the server's CPU cores are unknown: the CPU saturation rule is off "
            "(fix: set [detect] cpu_cores in querywatch.toml or pass --cpu-cores)"
        )
        return detection
    log.info("the server has %d CPU cores (read from %s)", found.count, found.how)
    return dataclasses.replace(detection, cpu_cores=found.count)


def store_pages(
    dispatcher: Dispatcher, source: str
) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """The watcher's hooks for a store it cannot write (a full disk): a page through the
    dispatcher when it starts failing ("querywatch cannot write its store: disk full"), once
    per outage, and its resolve once the intervals kept in memory are written."""
    opened: list[tuple[str, float]] = []

    def failed(why: str) -> None:
        at = time.time()
        cause = "disk full" if "full" in why.lower() else why
        summary = (
            f"querywatch cannot write its store: {cause}; collection goes on in memory "
            "(up to 1 hour of intervals), written once space returns"
        )
        opened.append((f"store-{int(at)}", at))
        dispatcher.notify(_store_note("firing", opened[-1], summary, source, why))

    def back(why: str) -> None:
        if opened:
            summary = "querywatch writes its store again: the intervals kept in memory are stored"
            dispatcher.notify(_store_note("resolved", opened.pop(), summary, source, why))

    return failed, back


def _store_note(
    status: Literal["firing", "resolved"],
    incident: tuple[str, float],
    summary: str,
    source: str,
    why: str,
) -> Notification:
    ident, started = incident
    doc = {"summary": summary, "verdict": STORE_UNWRITABLE, "error": why, "culprits": []}
    return Notification(status, ident, doc, time.time(), source=source, started_at=started)


@dataclass
class ServerWatch:
    """One server of the fleet: its own connection, watcher (backoff, backlog), monitor
    (baselines, incidents) and thread, so that a slow or unreachable server never delays the
    others. ``hooks`` run after the monitor on each stored interval (per-server additions such
    as replication sampling append theirs); ``error`` is why its thread ended, if it failed."""

    entry: ServerEntry
    watcher: Watcher
    monitor: Monitor | None = None
    hooks: list[IntervalHook] = field(default_factory=list)
    error: BaseException | None = None
    lease: Lease | None = None  # this watcher's right to collect the server (store.leases)

    @property
    def name(self) -> str:
        return self.entry.name

    def on_interval(self, interval_id: int, interval: Interval) -> None:
        if self.monitor is not None:
            self.monitor.on_interval(interval_id, interval)
        for hook in self.hooks:
            hook(interval_id, interval)


@dataclass(frozen=True)
class _Shared:
    """What every server of one watch shares: settings, store, dispatcher, detection."""

    cfg: Settings
    options: WatchOptions
    store: StoreProtocol
    dispatcher: Dispatcher
    detection: DetectSettings


def run_watch(
    cfg: Settings, options: WatchOptions, stop_event: threading.Event | None = None
) -> CollectorStatus:
    """Watch every configured server (``[[servers]]``, repeated ``--dsn``, or ``cfg.dsn``: a
    fleet of one) into ``cfg.store`` until ``stop_event`` is set (or the watchers are stopped
    otherwise); returns the collectors' final status (summed over a fleet)."""
    entries = fleet(cfg)
    outbox = outbox_settings(cfg.sections.get("alerts", {}))  # max_age, max_backoff
    replication_settings(cfg.sections)  # a bad [replication] table: one line before any start
    docs_base = base_url(cfg.docs_url, cfg.host, cfg.port)  # alerts link to their page there
    with (
        open_store(cfg) as st,
        Dispatcher(options.channels, store=st, outbox=outbox, docs_base=docs_base) as dispatcher,
    ):
        shared = _Shared(cfg, options, st, dispatcher, detect_settings(cfg, options))
        units = [_unit(shared, e) for e in entries]
        with (
            _stopped_by(stop_event, [u.watcher for u in units]),
            _tagged(len(units) > 1),
            _leases_kept(shared, units),
        ):
            if len(units) == 1:  # a fleet of one: start errors are the user's to fix (bad DSN,
                _prepare(shared, units[0])  # its lease held by another watcher)
            dashboard = _dashboard(cfg) if options.web else None
            if dashboard is not None:
                log.info("dashboard on %s", dashboard.url)
            try:
                _run_units(shared, units)
            finally:
                if dashboard is not None:
                    dashboard.stop()
        for unit in units:
            unit.watcher.source.close()
        dispatcher.flush(FLUSH_S)
    if len(units) == 1 and isinstance(units[0].error, ServerLeased):
        raise units[0].error  # taken over by another watcher: said, and a non-zero exit
    total = _total([u.watcher.status for u in units])
    log.info("stopped after %d intervals", total.intervals)
    return total


def _unit(shared: _Shared, entry: ServerEntry) -> ServerWatch:
    cfg = shared.cfg
    source = open_source(cfg, entry.dsn)
    return ServerWatch(
        entry, Watcher(source, shared.store, entry.name, cfg.interval, cfg.activity_interval)
    )


def _claim(shared: _Shared, unit: ServerWatch) -> None:
    """Take the server's owner lease (ServerLeased while another watcher holds it), then say
    its labels, target and interval in the store, before anything else is written for it."""
    if unit.lease is not None:
        return
    ttl = LEASE_INTERVALS * shared.cfg.interval
    try:
        unit.lease = shared.store.claim_server(unit.name, OWNER, ttl)
    except ServerLeased:
        orphan = _orphaned(shared.store, unit.name)
        if orphan is None:
            raise
        wait = max(0.0, orphan.expires_at() - shared.store.clock())
        log.warning(
            "%s: its last watcher (pid %d on this host) is gone; its lease lapses in %s",
            unit.name,
            orphan.pid,
            human(wait),
        )
        unit.watcher.pause(wait + LEASE_SLACK_S)  # a restart after kill -9 (systemd, cron)
        unit.lease = shared.store.claim_server(unit.name, OWNER, ttl)
    _announce(shared, unit)


def _orphaned(store: StoreProtocol, name: str) -> Lease | None:
    """The live lease of ``name`` held by a watcher of this host that no longer runs (killed):
    waited out rather than refused, so a restart after a crash goes on collecting."""
    here = socket.gethostname()
    now = store.clock()
    for lease in store.leases():
        if lease.server_name == name and lease.host == here and lease.live(now):
            return None if _running(lease.pid) else lease
    return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _announce(shared: _Shared, unit: ServerWatch) -> None:
    """The server's labels, target and interval in the store (pages, metrics, ``status``)."""
    info = {
        "labels": dict(unit.entry.labels),
        "target": describe_dsn(unit.entry.dsn),
        "interval_s": shared.cfg.interval,
    }
    shared.store.set_status(f"{SERVER_INFO}{unit.name}", info)


def _prepare(shared: _Shared, unit: ServerWatch) -> None:
    """Connect the server's watcher and set up its monitor (detection, audits, warm-up)."""
    cfg, st, watcher, name = shared.cfg, shared.store, unit.watcher, unit.name
    _claim(shared, unit)
    watcher.on_store_error, watcher.on_store_back = store_pages(shared.dispatcher, name)
    watcher.start()
    assert watcher.server_id is not None
    detection = with_cores(shared.detection, watcher.source)
    monitor = Monitor(
        st,
        watcher.server_id,
        name,
        Detector(detection),
        shared.dispatcher,
        labels=unit.entry.labels,
        capacity=capacity_settings(cfg.sections.get("capacity", {})),  # replicas proposed
    )
    monitor.note_visibility(watcher.source.capabilities)  # a role seeing only its own
    monitor.audits = AuditScheduler(
        st,
        watcher.server_id,
        name,
        shared.dispatcher,
        before_s=shared.options.audit_before_s,
        after_s=shared.options.audit_after_s,
    )
    warmed = monitor.warm_up(time.time(), detection.learning_intervals * cfg.interval * 30)
    monitor.use_long_run(watcher.source, cfg.interval)
    unit.monitor = monitor
    watcher.on_interval = unit.on_interval
    topology = TopologyMonitor(  # replication state, failover and lag (querywatch.topology)
        st, watcher.server_id, name, watcher.source, replication_settings(cfg.sections)
    )
    topology.labels, topology.dispatcher = unit.entry.labels, shared.dispatcher
    unit.hooks.append(topology.on_interval)
    logs = [path for server, path in shared.options.logs if server == name]  # --log
    start_followers(st, watcher.server_id, name, logs, lambda: watcher.stopping)
    watcher.on_failure = topology.on_failure
    log.info(
        "watching %s every %s (%d alert channels, %d stored intervals reused)",
        name,
        human(cfg.interval),
        len(shared.options.channels),
        warmed,
    )


def _run_units(shared: _Shared, units: list[ServerWatch]) -> None:
    """A fleet of one runs here; a fleet, one thread per server until every one has stopped."""
    if len(units) == 1:
        units[0].watcher.run()
        return
    threads = [
        threading.Thread(target=_run_one, args=(shared, u), name=f"{THREAD_PREFIX}{u.name}")
        for u in units
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # short joins: signals reach the main thread meanwhile
            thread.join(STOP_POLL_S)


def _run_one(shared: _Shared, unit: ServerWatch) -> None:
    """One server's thread: start (retried with backoff while the server cannot be reached,
    its error in the store for ``status`` and /fleet), then collect until stopped."""
    watcher = unit.watcher
    delay = BACKOFF_START_S
    try:
        while unit.monitor is None and not watcher.stopping:
            try:
                _prepare(shared, unit)
            except ServerLeased as exc:  # another watcher collects it: taken once it lapses
                log.warning("not watched here: %s", exc)
                watcher.pause(LEASE_INTERVALS * shared.cfg.interval)
            except SourceError as exc:
                watcher.note_failure(exc)
                log.debug("cannot start, retrying in %s: %s", human(delay), exc)  # logged
                watcher.pause(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        if not watcher.stopping:
            watcher.run()
    except Exception as exc:  # one server's failure never stops the fleet
        unit.error = exc
        log.error("collection stopped: %s", exc, exc_info=True)


@contextmanager
def _leases_kept(shared: _Shared, units: Sequence[ServerWatch]) -> Iterator[None]:
    """Renew every lease held once per interval while the block runs (apart from collection,
    so a server being reconnected keeps its owner), and release them at the end so that
    another watcher may take the servers at once. A lease another watcher took over (this one
    stalled past its ttl) stops that server's collection here."""
    done = threading.Event()

    def keep() -> None:
        while not done.wait(shared.cfg.interval):
            for unit in units:
                _renew(shared.store, unit)

    thread = threading.Thread(target=keep, name="querywatch-leases", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        for unit in units:
            _release(shared.store, unit)


def _renew(store: StoreProtocol, unit: ServerWatch) -> None:
    lease = unit.lease
    if lease is None or unit.watcher.stopping:
        return
    try:
        unit.lease = store.renew(lease)
    except ServerLeased as exc:
        log.error("%s: stopped collecting it: %s", unit.name, exc)
        unit.error, unit.lease = exc, None
        unit.watcher.stop()
    except StoreError as exc:  # tried again next interval; the ttl spans several
        log.warning("%s: lease not renewed: %s", unit.name, exc)


def _release(store: StoreProtocol, unit: ServerWatch) -> None:
    lease, unit.lease = unit.lease, None
    if lease is None:
        return
    try:
        store.release(lease)
    except StoreError as exc:  # it lapses after its ttl instead
        log.warning("%s: lease not released: %s", unit.name, exc)


def _total(statuses: Sequence[CollectorStatus]) -> CollectorStatus:
    if len(statuses) == 1:
        return statuses[0]
    total = CollectorStatus()
    for s in statuses:
        total.intervals += s.intervals
        total.gaps += s.gaps
        total.dealloc += s.dealloc
        total.reconnects += s.reconnects
    return total


@contextmanager
def _stopped_by(stop_event: threading.Event | None, watchers: Sequence[Watcher]) -> Iterator[None]:
    """Relay ``stop_event`` to every watcher's ``stop()`` while the block runs."""
    if stop_event is None:
        yield
        return
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            if stop_event.wait(STOP_POLL_S):
                for watcher in watchers:
                    watcher.stop()
                return

    thread = threading.Thread(target=relay, name="querywatch-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def _tagged(on: bool) -> Iterator[None]:
    """While a fleet runs, what its server threads log starts with ``[server]``."""
    if not on:
        yield
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        thread = record.threadName or ""
        if thread.startswith(THREAD_PREFIX):
            name = thread[len(THREAD_PREFIX) :].replace("%", "%%")
            record.msg = f"[{name}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def _dashboard(cfg: Settings) -> WebServer:
    from .web import start_in_thread  # the web stack loads only when asked for

    return start_in_thread(cfg.store, cfg.host, cfg.port, cfg.token, pool_size=cfg.store_pool_size)
