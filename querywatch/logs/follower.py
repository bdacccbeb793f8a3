"""``watch --log FILE``: a thread per server that follows its log beside pg_stat_statements.

pg_stat_statements already gives the watcher the statement statistics, so the follower keeps
what it cannot: auto_explain plans (into the plan history), lock waits, deadlocks, temp files,
errors, checkpoints and autovacuum runs (``log_events``). Durations are not loaded (they would
count the statements twice). Where it stopped is kept in the store's status table, so a
restarted watch goes on from there when the file is the same one (else from the file's end: a
first start does not load old history; `querywatch logs --store` does that).

The thread never stops the watch: a failure is logged, and the follower tries again later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError, QuerywatchError
from ..store.protocol import StoreProtocol
from .load import Loader
from .parser import detect_format, parse
from .reader import CHUNK, Position, follow, open_log

log = logging.getLogger("querywatch.logs")

STATUS_KEY = "log_position:"  # + server name + ":" + absolute path
FLUSH_S = 1.0
RETRY_S = 10.0


def log_pairs(values: Iterable[str], servers: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--log FILE`` (one server watched) or ``--log NAME=FILE`` -> (server, file) pairs.

    >>> log_pairs(["/var/log/pg.log"], ["db1"])
    (('db1', '/var/log/pg.log'),)
    >>> log_pairs(["db2=/l/b.log", "db1=/l/a.log"], ["db1", "db2"])
    (('db2', '/l/b.log'), ('db1', '/l/a.log'))
    """
    servers = list(servers)
    out: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or name not in servers:
            if len(servers) != 1:
                known = ", ".join(servers)
                raise ConfigError(
                    f"--log {value!r}: say whose log it is as NAME=FILE (servers: {known})"
                )
            name, path = servers[0], value
        out.append((name, path))
    return tuple(out)


class LogFollower:
    """Follows one server's log into the store until ``stopping()`` is true."""

    def __init__(
        self,
        store: StoreProtocol,
        server_id: int,
        server: str,
        path: str,
        stopping: Callable[[], bool],
        poll_s: float = 0.5,
    ) -> None:
        self.store, self.server_id, self.server = store, server_id, server
        self.path = os.path.abspath(path)
        self.stopping = stopping
        self.poll_s = poll_s
        self.key = f"{STATUS_KEY}{server}:{self.path}"
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(
            target=self.run, name=f"querywatch-log-{self.server}", daemon=True
        )
        self.thread.start()
        return self.thread

    def run(self) -> None:
        while not self.stopping():
            try:
                self._follow()
            except Exception as exc:  # never stops the watch
                log.warning("log %s of %s: %s (retrying)", self.path, self.server, exc)
                _sleep_unless(self.stopping, RETRY_S)
            else:
                return

    def _follow(self) -> None:
        found = self._format()
        loader = Loader(self.store, self.server_id, durations=False)
        position = [self._start()]
        flushed = [time.monotonic()]

        def keep(p: Position) -> None:
            position[0] = p

        def idle() -> None:
            if time.monotonic() - flushed[0] >= FLUSH_S:
                loader.flush(final=True)
                self._save(position[0])
                flushed[0] = time.monotonic()

        chunks = follow(
            self.path, position[0], poll_s=self.poll_s, stop=self.stopping, on_position=keep
        )
        log.info("following the log %s of %s", self.path, self.server)
        for event in parse(_on_idle(chunks, idle), fmt=found[0], prefix=found[1]):
            loader.add(event)
        loader.close()
        self._save(position[0])

    def _format(self) -> tuple[str | None, str | None]:
        """The log's format from its first bytes (followed from its end, the parser sees none)."""
        try:
            with open_log(self.path) as handle:
                sample = handle.read(CHUNK // 4)
        except (OSError, QuerywatchError):
            return None, None
        if not sample:
            return None, None
        found = detect_format(sample)
        return found.name, found.prefix

    def _start(self) -> Position | None:
        """Where the last run stopped in this very file, else the file's end."""
        saved = self.store.status().get(self.key)
        try:
            stat = os.stat(self.path)
        except OSError:
            return None  # not there yet: read from its start once it appears
        if saved:
            try:
                p = Position(
                    self.path, int(saved["inode"]), int(saved["device"]), int(saved["offset"])
                )
            except (KeyError, TypeError, ValueError):
                p = None
            if p is not None and p.inode == stat.st_ino and p.offset <= stat.st_size:
                return p
        return Position(
            self.path, stat.st_ino, stat.st_dev, _line_start(Path(self.path), stat.st_size)
        )

    def _save(self, p: Position | None) -> None:
        if p is not None:
            self.store.set_status(self.key, {k: v for k, v in asdict(p).items() if k != "path"})


def _line_start(path: Path, size: int) -> int:
    """``size``, moved back to the start of a line being written."""
    if size == 0:
        return 0
    with path.open("rb") as handle:
        start = max(0, size - CHUNK)
        handle.seek(start)
        block = handle.read(size - start)
    cut = block.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else start


def _on_idle(chunks: Iterable[bytes], idle: Callable[[], None]) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        if not chunk:
            idle()


def _sleep_unless(stopping: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        time.sleep(0.2)


def start_followers(
    store: StoreProtocol,
    server_id: int,
    server: str,
    paths: Iterable[str],
    stopping: Callable[[], bool],
) -> list[LogFollower]:
    """One started follower per log file of the server."""
    followers = [LogFollower(store, server_id, server, p, stopping) for p in paths]
    for f in followers:
        f.start()
    return followers
