"""A standalone HTML incident report: the incident page with its stylesheet inlined, one file.

Its links to the documentation (the dashboard's ``/docs/...``) point at ``docs_base`` instead (the
``docs_url`` setting), since a file has no server to serve them."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..docs import DEFAULT_BASE, DOCS_PATH
from ..errors import InputError
from ..store.protocol import StoreProtocol
from . import templates, views
from .app import STATIC

STYLESHEET_LINK = '<link rel="stylesheet" href="/static/querywatch.css">'
ICON_LINK = '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'


def render_incident_report(
    store: StoreProtocol,
    incident_id: str,
    clock: Callable[[], float] = time.time,
    docs_base: str = DEFAULT_BASE,
) -> str:
    """One self-contained HTML page (no external resource) for the incident ``incident_id``."""
    context = views.incident(views.Site(store, clock), incident_id)
    if context is None:
        raise InputError(f"incident report: no incident {incident_id!r} in the store")
    html = templates.render("incident", {**context, "servers": []})  # a file: no picker
    css = (STATIC / "querywatch.css").read_text(encoding="utf-8")
    html = html.replace(f'href="{DOCS_PATH}', f'href="{docs_base.rstrip("/")}/')
    return html.replace(ICON_LINK, "").replace(STYLESHEET_LINK, f"<style>{css}</style>")
