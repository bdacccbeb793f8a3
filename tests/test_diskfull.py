"""A full disk does not stop collection (issue 12, item 6).

The store lives on a small tmpfs (mounted here: root needed; without root the tests skip, and
under CI=true they fail instead). The filesystem is filled for real, so SQLite reports
"database or disk is full": the watcher keeps its intervals in memory (bounded), pages once
through the dispatcher, and writes them in order when space returns.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import under_ci
from workload import Load, Receiver, Statement, wait_until

from querywatch.source.postgres import PostgresSource
from querywatch.store import Store
from querywatch.watcher import Watcher

SIZE = "16m"  # the WAL of a busy store stays below this
INTERVAL = 1.0
DISK_FULL = "querywatch cannot write its store: disk full"
# a SQLite file on a full filesystem is what these tests are about: SQLite even under
# QW_TEST_STORE=postgresql (a PostgreSQL store's disk is its server's, not querywatch's)
pytestmark = pytest.mark.usefixtures("sqlite_only")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE mounted for the test, unmounted after it."""
    if os.geteuid() != 0:
        reason = "mounting a small tmpfs needs root"
        if under_ci():
            pytest.fail(f"{reason} (CI=true: run the tests as root)", pytrace=False)
        pytest.skip(reason)
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it (unlink to free)."""
    filler = where / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def intervals(store: Path) -> list[tuple[float, float]]:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT start, end FROM intervals ORDER BY start").fetchall()
    except sqlite3.Error:
        return []
    return [(float(a), float(b)) for a, b in rows]


def holes(found: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Stretches between consecutive intervals (each should start where the previous ended)."""
    return [(a[1], b[0]) for a, b in itertools.pairwise(found) if b[0] - a[1] > 1e-6]


# -- in-process: bounded backlog, order, one page -------------------------------------------------


def test_watcher_keeps_a_bounded_backlog_and_writes_it_in_order(
    pg_dsn: str, small_disk: Path
) -> None:
    store = Store(small_disk / "qw.db")
    source = PostgresSource(pg_dsn)
    errors: list[str] = []
    back: list[str] = []
    watcher = Watcher(source, store, "diskfull", interval_s=0.2, backlog_s=0.6)  # 3 intervals
    watcher.on_store_error, watcher.on_store_back = errors.append, back.append
    try:
        watcher.start()
        for _ in range(2):
            time.sleep(0.2)
            assert watcher.collect_once() is not None
        filler = fill(small_disk)
        kept = []
        for _ in range(5):  # 5 intervals while full: the 2 oldest are dropped
            time.sleep(0.2)
            assert watcher.collect_once() is None
            kept.append(watcher.backlog)
        assert kept == [1, 2, 3, 3, 3]
        assert len(errors) == 1 and "full" in errors[0], errors
        assert back == []
        filler.unlink()
        time.sleep(0.2)
        assert watcher.collect_once() is not None
        assert watcher.backlog == 0 and len(back) == 1
    finally:
        source.close()
        store.close()
    found = intervals(small_disk / "qw.db")
    assert len(found) == 2 + 3 + 1
    assert holes(found) == [(found[1][1], found[2][0])]  # the 2 dropped ones, nothing else
    with sqlite3.connect(small_disk / "qw.db") as db:
        gaps = db.execute("SELECT start, end, reason, detail FROM gaps").fetchall()
    assert len(gaps) == 1 and gaps[0][:3] == (found[1][1], found[2][0], "down"), gaps
    assert "could not be written" in gaps[0][3]


# -- acceptance: `querywatch watch` on a disk that fills up ---------------------------------------


def start_watch(dsn: str, store: Path, log: Path, url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    command = [sys.executable, "-m", "querywatch", "watch", "--dsn", dsn, "--store", str(store)]
    command += ["--interval", f"{INTERVAL:g}s", "--alert-webhook", url]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def store_notes(receiver: Receiver, status: str) -> list[dict[str, Any]]:
    return [
        b
        for b in receiver.bodies("/hook")
        if b["status"] == status and str(b["incident"]).startswith("store-")
    ]


def test_watch_on_a_full_disk_keeps_collecting_and_writes_when_space_returns(
    pg_dsn: str, small_disk: Path, tmp_path: Path
) -> None:
    store = small_disk / "qw.db"
    log = tmp_path / "watch.log"  # not on the small disk
    receiver = Receiver()
    load = {
        "tick": Statement("SELECT count(*) FROM pg_class WHERE relpages > %s", 20, lambda r: (0,))
    }
    proc = start_watch(pg_dsn, store, log, f"{receiver.url}/hook")
    try:
        with Load(pg_dsn, load):
            assert wait_until(lambda: len(intervals(store)) >= 3, 60), log.read_text()
            filler = fill(small_disk)
            full_at = time.time()
            assert wait_until(lambda: store_notes(receiver, "firing"), 30), log.read_text()
            time.sleep(8 * INTERVAL)  # collection goes on in memory meanwhile
            assert proc.poll() is None, log.read_text()
            stored_while_full = [i for i in intervals(store) if i[1] > full_at + 2 * INTERVAL]
            filler.unlink()
            freed_at = time.time()
            assert wait_until(lambda: store_notes(receiver, "resolved"), 30), log.read_text()
            assert wait_until(lambda: intervals(store)[-1][1] > freed_at + INTERVAL, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        receiver.close()
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert stored_while_full == []  # nothing could be written...
    found = intervals(store)
    during = [i for i in found if full_at + INTERVAL < i[1] < freed_at]
    outage = freed_at - full_at
    print(f"\ndisk full for {outage:.1f} s: {len(during)} intervals kept in memory, then written")
    assert len(during) >= outage / INTERVAL - 3  # ... but all were collected and written later
    assert holes(found) == [], holes(found)  # in order, each from where the previous ended
    firing = store_notes(receiver, "firing")
    assert len(firing) == 1, firing  # paged once
    assert DISK_FULL in firing[0]["diagnosis"]["summary"]
