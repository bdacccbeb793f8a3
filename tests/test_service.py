"""The watch loop called as a library function (querywatch.service.run_watch) on a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from querywatch.service import WatchOptions, run_watch
from querywatch.settings import Settings
from querywatch.store import Store
from querywatch.watcher import CollectorStatus

NAME = "service-test"


def stored_intervals(path: Path) -> int:
    with Store(path, create=False) as st:
        server = next((s for s in st.servers() if s.name == NAME), None)
        return 0 if server is None else st.interval_count(server.id)


def test_run_watch_stores_intervals_until_stopped(pg_dsn: str, conn: Any, tmp_path: Path) -> None:
    path = tmp_path / "qw.db"
    cfg = Settings(
        dsn=pg_dsn, store=str(path), server_name=NAME, interval=0.5, activity_interval=0.1
    )
    Store(path).close()  # created here, so that reading it while the watch runs never races it
    stop = threading.Event()
    result: list[CollectorStatus] = []
    thread = threading.Thread(target=lambda: result.append(run_watch(cfg, WatchOptions(), stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while stored_intervals(path) < 3 and time.monotonic() < deadline and thread.is_alive():
            conn.execute("SELECT pg_sleep(0.01)")
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "run_watch did not return after the stop event"
    assert result, "run_watch raised (see the captured log)"
    count = stored_intervals(path)
    assert count >= 3
    assert result[0].intervals == count
    with Store(path, create=False) as st:
        server = next(s for s in st.servers() if s.name == NAME)
        rows, covered = st.totals(server.id, 0, time.time())
        state = st.status()
    assert covered > 0
    assert any(r.query == "SELECT pg_sleep($1)" for r in rows)
    assert f"detector:{NAME}" in state  # the monitor judged the intervals, not only the watcher


def test_run_watch_returns_at_once_when_already_stopped(pg_dsn: str, tmp_path: Path) -> None:
    cfg = Settings(dsn=pg_dsn, store=str(tmp_path / "qw.db"), server_name=NAME, interval=60.0)
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    status = run_watch(cfg, WatchOptions(), stop)
    assert status.intervals == 0
    assert time.monotonic() - started < 30  # not one 60 s interval
