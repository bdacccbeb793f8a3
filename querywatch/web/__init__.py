"""The web dashboard, its JSON twins and API, and Prometheus /metrics.

- ``create_app(store, token=..., loopback=...)``: the ASGI app (FastAPI);
- ``start_in_thread(store_path, host, port, token)``: serve in a thread (``watch --web``);
- ``render_incident_report(store, incident_id)``: one standalone HTML page for an incident.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from querywatch.lazy import exports

if TYPE_CHECKING:
    from .app import create_app
    from .report import render_incident_report
    from .server import WebServer, check_bind, serve, start_in_thread

__all__ = [
    "WebServer",
    "check_bind",
    "create_app",
    "render_incident_report",
    "serve",
    "start_in_thread",
]

# name -> its module: the web stack (FastAPI, uvicorn) loads on first use of one of these, not
# when the CLI imports querywatch.web.commands
_LAZY = {
    "WebServer": "server",
    "check_bind": "server",
    "create_app": "app",
    "render_incident_report": "report",
    "serve": "server",
    "start_in_thread": "server",
}


__getattr__ = exports(__name__, _LAZY)
