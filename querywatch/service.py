"""The watch loop as a library call: collect, detect, diagnose, alert, audit deploys and,
when asked, serve the dashboard, until a stop is requested.

``querywatch watch`` is this function plus flag parsing and signal handling; a test calls it
directly with a short interval and a ``stop_event``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .alerts import Dispatcher, Notification
from .alerts.dispatcher import outbox_settings
from .audit.run import AuditScheduler
from .clikit import open_source, open_store, server_name
from .detect import Detector, DetectSettings, settings_from_mapping
from .durations import human
from .monitor import Monitor
from .settings import Settings
from .source.cores import server_cores
from .source.postgres import PostgresSource
from .watcher import CollectorStatus, Watcher

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .alerts.channel import Channel
    from .web.server import WebServer

log = logging.getLogger("querywatch")

STOP_POLL_S = 0.2  # how often a stop_event is looked at
FLUSH_S = 10.0  # how long queued alerts may take to go out at the end


@dataclass(frozen=True)
class WatchOptions:
    """What ``watch`` takes beyond the settings: alert channels, detection overrides, audits."""

    channels: Sequence[Channel] = ()
    cpu_cores: int | None = None  # the server's cores, for the CPU-capacity rule
    web: bool = False  # also serve the dashboard, API and /metrics on cfg.host:cfg.port
    audit_before_s: float = 30 * 60.0
    audit_after_s: float = 15 * 60.0


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
    doc = {"summary": summary, "verdict": "store_unwritable", "error": why, "culprits": []}
    return Notification(status, ident, doc, time.time(), source=source, started_at=started)


def run_watch(
    cfg: Settings, options: WatchOptions, stop_event: threading.Event | None = None
) -> CollectorStatus:
    """Watch ``cfg.dsn`` into ``cfg.store`` until ``stop_event`` is set (or the watcher is
    stopped otherwise); returns the collector's final status."""
    detection = detect_settings(cfg, options)
    outbox = outbox_settings(cfg.sections.get("alerts", {}))  # max_age, max_backoff
    with open_store(cfg) as st, Dispatcher(options.channels, store=st, outbox=outbox) as dispatcher:
        name = server_name(cfg)
        watcher = Watcher(open_source(cfg), st, name, cfg.interval, cfg.activity_interval)
        with _stopped_by(stop_event, watcher):
            watcher.on_store_error, watcher.on_store_back = store_pages(dispatcher, name)
            watcher.start()
            assert watcher.server_id is not None
            detection = with_cores(detection, watcher.source)
            monitor = Monitor(st, watcher.server_id, name, Detector(detection), dispatcher)
            monitor.note_visibility(watcher.source.capabilities)  # a role seeing only its own
            monitor.audits = AuditScheduler(
                st,
                watcher.server_id,
                name,
                dispatcher,
                before_s=options.audit_before_s,
                after_s=options.audit_after_s,
            )
            warmed = monitor.warm_up(time.time(), detection.learning_intervals * cfg.interval * 30)
            monitor.use_long_run(watcher.source, cfg.interval)
            watcher.on_interval = monitor.on_interval
            dashboard = _dashboard(cfg) if options.web else None
            if dashboard is not None:
                log.info("dashboard on %s", dashboard.url)
            log.info(
                "watching %s every %s (%d alert channels, %d stored intervals reused)",
                name,
                human(cfg.interval),
                len(options.channels),
                warmed,
            )
            try:
                watcher.run()
            finally:
                if dashboard is not None:
                    dashboard.stop()
        watcher.source.close()
        dispatcher.flush(FLUSH_S)
    log.info("stopped after %d intervals", watcher.status.intervals)
    return watcher.status


@contextmanager
def _stopped_by(stop_event: threading.Event | None, watcher: Watcher) -> Iterator[None]:
    """Relay ``stop_event`` to ``watcher.stop()`` while the block runs."""
    if stop_event is None:
        yield
        return
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            if stop_event.wait(STOP_POLL_S):
                watcher.stop()
                return

    thread = threading.Thread(target=relay, name="querywatch-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _dashboard(cfg: Settings) -> WebServer:
    from .web import start_in_thread  # the web stack loads only when asked for

    return start_in_thread(cfg.store, cfg.host, cfg.port, cfg.token)
