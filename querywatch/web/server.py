"""Running the web app: the bind check, `querywatch serve`, and a server thread for `watch --web`."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ..errors import ConfigError
from ..store.sqlite import POOL_SIZE
from . import docsite
from .app import create_app

log = logging.getLogger("querywatch.web")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
START_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def check_bind(host: str, token: str) -> None:
    """Refuse a non-loopback address without a token, before anything listens."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"serve: {host!r} is not a loopback address, so the web server needs a token "
            "(fix: set QUERYWATCH_TOKEN or pass --token, or bind 127.0.0.1)"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGINT/SIGTERM end it cleanly (exit 0) instead of being re-raised."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _server(
    store_path: str | Path,
    host: str,
    token: str,
    docs_site: Path | None = None,
    pool_size: int = POOL_SIZE,
) -> uvicorn.Server:
    loopback = is_loopback(host)
    app = create_app(
        store_path,
        pool_size=pool_size,
        token=token,
        loopback=loopback,
        allowed_hosts=LOOPBACK_NAMES if loopback else None,  # DNS rebinding
        docs_site=docsite.SITE if docs_site is None else docs_site,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    return _Server(config)


def serve(
    store_path: str | Path, host: str, port: int, token: str, pool_size: int = POOL_SIZE
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles them and returns)."""
    check_bind(host, token)
    server = _server(store_path, host, token, pool_size=pool_size)
    sock = listen(host, port)
    log.info("serving %s on http://%s:%d/", store_path, _url_host(host), sock.getsockname()[1])
    server.run(sockets=[sock])


@dataclass
class WebServer:
    """A running server thread; ``stop()`` shuts it down and waits for the thread."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    store_path: str | Path,
    host: str,
    port: int,
    token: str,
    docs_site: Path | None = None,
    pool_size: int = POOL_SIZE,
) -> WebServer:
    """Start serving in a daemon thread (port 0 picks a free port); returns once it listens.
    ``docs_site``: a built documentation site to serve at /docs/ instead of the package's."""
    check_bind(host, token)
    server = _server(store_path, host, token, docs_site, pool_size)
    sock = listen(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="querywatch-web", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise ConfigError(f"serve: the web server did not start on {host}:{port}")
        time.sleep(0.01)
    handle = WebServer(server, thread, host, sock.getsockname()[1])
    log.info("dashboard on %s/", handle.url)
    return handle


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
