"""The documentation site at ``/docs/``: the MkDocs build shipped in the package, served offline.

``make install`` builds the site (``mkdocs build``) into :data:`SITE`, package data that git
ignores. When it was not built, every ``/docs/`` URL answers a page that says how to build it.
The site's pages run Material's scripts (search, navigation): its own Content-Security-Policy
allows scripts from the site itself and the inline ones it ships, by their sha256 hashes, read
from the built pages.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, MutableMapping
from html import escape
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from ..docs import DOCS_PATH
from .templates.layout import page

SITE = Path(__file__).parent / "docs_site"
PREFIX = DOCS_PATH.rstrip("/")  # /docs
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def serves(path: str) -> bool:
    """True for a URL path of the documentation site."""
    return path == PREFIX or path.startswith(DOCS_PATH)


def built(site: Path) -> bool:
    return (site / "index.html").is_file()


def inline_hashes(site: Path) -> tuple[str, ...]:
    """CSP sources (``'sha256-...'``) of every inline script of the built pages."""
    found = set()
    for html in site.rglob("*.html"):
        for body in _INLINE_SCRIPT.findall(html.read_text(encoding="utf-8", errors="replace")):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            found.add(f"'sha256-{digest}'")
    return tuple(sorted(found))


def security_headers(hashes: tuple[str, ...]) -> dict[str, str]:
    """The dashboard's headers, with a policy that lets the site's own scripts run."""
    scripts = " ".join(("'self'", *hashes))
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {scripts}; worker-src 'self'; connect-src 'self'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
            "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def not_built(site: Path) -> str:
    """The page every /docs/ URL answers when the site is missing."""
    return page(
        "Documentation not built",
        "docs",
        "<h1>The documentation site was not built</h1>"
        f"<p>querywatch serves its documentation from <code>{escape(str(site))}</code>, which "
        "holds no built site. Build it from a checkout with <code>make install</code> (or "
        f"<code>mkdocs build --site-dir {escape(str(site))}</code>), then reload this page. "
        "The same pages are in the repository's <code>docs/</code> folder as Markdown.</p>",
    )


class DocsApp:
    """ASGI app of ``/docs``: the built site's files (``index.html`` for a directory URL), or
    the "not built" page. The site is looked for on every request, so building it while the
    server runs is enough."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self._files = StaticFiles(directory=site, html=True, check_dir=False)
        self._hashes: tuple[float, tuple[str, ...]] = (-1.0, ())

    def headers(self) -> dict[str, str]:
        index = self.site / "index.html"
        stamp = index.stat().st_mtime if index.is_file() else 0.0
        if stamp != self._hashes[0]:
            self._hashes = (stamp, inline_hashes(self.site) if stamp else ())
        return security_headers(self._hashes[1])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not built(self.site):
            response = HTMLResponse(not_built(self.site), status_code=404)
            await response(scope, receive, send)
            return
        await self._files(scope, receive, send)


def add_docs(app: FastAPI, site: Path = SITE) -> DocsApp:
    """Serve ``site`` at /docs/ (and redirect /docs there)."""
    docs = DocsApp(site)

    @app.get(PREFIX, include_in_schema=False)
    def docs_root() -> RedirectResponse:
        return RedirectResponse(DOCS_PATH, status_code=308)

    app.mount(PREFIX, docs, name="docs")
    return docs
