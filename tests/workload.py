"""Test helpers: a rate-driven SQL workload, a webhook receiver, and a `querywatch watch` process.

Everything talks to 127.0.0.1 only and stops by itself when the test ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg


@dataclass
class Statement:
    sql: str
    rate: float  # executions per second
    params: Callable[[random.Random], Sequence[Any]] = lambda rng: ()


class Load:
    """Runs statements at target rates on one connection until stopped (bounded by max_s)."""

    def __init__(
        self,
        dsn: str,
        statements: dict[str, Statement],
        *,
        jitter: float = 0.0,
        seed: int = 1,
        max_s: float = 300.0,
    ) -> None:
        self.dsn = dsn
        self.statements = statements
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.max_s = max_s
        self.executed: dict[str, int] = dict.fromkeys(statements, 0)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set_rate(self, name: str, rate: float) -> None:
        self.statements[name].rate = rate

    def scale(self, factor: float) -> None:
        for statement in self.statements.values():
            statement.rate *= factor

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        credit = dict.fromkeys(self.statements, 0.0)
        factors = dict.fromkeys(self.statements, 1.0)
        started = last = time.monotonic()
        next_jitter = started
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set() and time.monotonic() - started < self.max_s:
                now = time.monotonic()
                if self.jitter and now >= next_jitter:
                    factors = {n: 1 + self.rng.uniform(-self.jitter, self.jitter) for n in factors}
                    next_jitter = now + 1.0
                dt, last = now - last, now
                for name, st in list(self.statements.items()):
                    gained = st.rate * factors.get(name, 1.0) * dt
                    credit[name] = min(credit.get(name, 0.0) + gained, 50.0)
                    while credit[name] >= 1.0 and not self._stop.is_set():
                        credit[name] -= 1.0
                        self._execute(conn, name, st)
                self._stop.wait(0.005)

    def _execute(self, conn: psycopg.Connection[Any], name: str, st: Statement) -> None:
        try:
            conn.execute(st.sql, st.params(self.rng))  # type: ignore[arg-type]
            self.executed[name] = self.executed.get(name, 0) + 1
        except psycopg.Error as exc:
            self.errors.append(f"{name}: {exc}")


@dataclass
class Received:
    at: float
    path: str
    body: Any


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POSTed JSON body."""

    received: list[Received] = field(default_factory=list)
    status: int = 200

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                owner.received.append(Received(time.time(), self.path, body))
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str = "") -> list[Any]:
        return [r.body for r in self.received if r.path.startswith(path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def watch_process(
    dsn: str, store: Path, *args: str, interval: str = "1s"
) -> Iterator[subprocess.Popen[str]]:
    """`querywatch watch` in a subprocess; stopped with SIGTERM, which must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env["QUERYWATCH_ACTIVITY_INTERVAL"] = "0.25"
    log = store.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "querywatch",
                "watch",
                "--dsn",
                dsn,
                "--store",
                str(store),
                "--interval",
                interval,
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("watch did not stop within 30 s of SIGTERM") from None
    text = log.read_text()
    assert "Traceback" not in text, text
    assert code == 0, text


def wait_until(probe: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(step)
    return None


def learned(store: Path, timeout: float = 60.0) -> bool:
    """True once the watcher's detector has left its learning period."""
    from querywatch.errors import StoreError
    from querywatch.store import Store, store_exists

    def probe() -> bool:  # through the Store: also with QW_TEST_STORE=postgresql
        if not store_exists(store):
            return False
        try:
            with Store(store, create=False) as st:
                board = st.status()
        except StoreError:
            return False
        return any(not v["learning"] for k, v in board.items() if k.startswith("detector:"))

    return bool(wait_until(probe, timeout, 0.2))


def mark_deploy(store: Path, version: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "querywatch", "mark", "deploy", version, "--store", str(store)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def diagnose_json(store: Path, start: float, end: float) -> dict[str, Any]:
    from querywatch.durations import iso

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "querywatch",
            "diagnose",
            "--store",
            str(store),
            "--start",
            str(iso(start)),
            "--end",
            str(iso(end)),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))
