"""The watch loop as a library call: collect, detect, diagnose, alert, audit deploys and,
when asked, serve the dashboard, until a stop is requested.

``querywatch watch`` is this function plus flag parsing and signal handling; a test calls it
directly with a short interval and a ``stop_event``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .alerts import Dispatcher
from .alerts.dispatcher import outbox_settings
from .audit.run import AuditScheduler
from .clikit import open_source, open_store, server_name
from .detect import Detector, DetectSettings, settings_from_mapping
from .durations import human
from .monitor import Monitor
from .settings import Settings
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
            watcher.start()
            assert watcher.server_id is not None
            monitor = Monitor(st, watcher.server_id, name, Detector(detection), dispatcher)
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
