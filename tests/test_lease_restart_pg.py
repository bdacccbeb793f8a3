"""A single-server `watch` killed with kill -9 and restarted at once (systemd's Restart=) waits
out the dead watcher's lease and goes on collecting, while a live owner is still refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from workload import wait_until, watch_process

from querywatch.store import Store


def intervals(store: Path) -> int:
    with Store(str(store)) as st:
        return sum(st.interval_count(s.id) for s in st.servers())


def test_restart_after_kill_waits_out_the_dead_watchers_lease(pg_dsn: str, tmp_path: Path) -> None:
    store = tmp_path / "qw.db"
    argv = [sys.executable, "-m", "querywatch", "watch", "--dsn", pg_dsn, "--store", str(store)]
    with (tmp_path / "first.log").open("w") as out:
        # a 4 s interval gives the first watcher's lease 12 s: still live when the restart claims
        # it even on a loaded CI machine (a 1 s lease could lapse during the restart's start-up)
        first = subprocess.Popen([*argv, "--interval", "4s"], stdout=out, stderr=out)
    try:
        assert wait_until(lambda: intervals(store) >= 2, 60), "the first watcher stored nothing"
        # a second watcher while the first runs: refused, one line, non-zero exit
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert "is watched by" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    before = intervals(store)
    restarted_at = time.monotonic()
    with watch_process(pg_dsn, store) as again:
        assert wait_until(lambda: intervals(store) > before, 60), "the restart stored nothing"
        assert again.poll() is None, "the restarted watcher exited"
    took = time.monotonic() - restarted_at
    log = store.with_suffix(".log").read_text()
    assert "last watcher" in log and "is gone" in log, log
    assert "Traceback" not in log
    assert took < 45, took
