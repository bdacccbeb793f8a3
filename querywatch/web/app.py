"""The web application: dashboard pages, their .json twins, the JSON API and /metrics.

The routes are in ``routes`` (pages and twins from one table); this module assembles the app,
its security and its error pages. Security: when a token is set, every POST needs it
(``Authorization: Bearer TOKEN``, or HTTP Basic with the token as password so browsers can log
in), compared in constant time; on a non-loopback bind every request but /healthz needs it.
Without a token (loopback only) POSTs are accepted from the local machine. Pages load nothing
from outside: no CDN, no inline script.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import QuerywatchError, StoreError
from ..store import Store
from ..store.protocol import StoreProtocol
from ..store.sqlite import POOL_SIZE
from . import docsite, routes, templates, views

log = logging.getLogger("querywatch.web")

STATIC = Path(__file__).parent / "static"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(
    store: StoreProtocol | str | Path,
    *,
    token: str = "",
    loopback: bool = True,
    clock: Callable[[], float] = time.time,
    advice: views.AdviceProvider | None = None,
    allowed_hosts: Sequence[str] | None = None,
    docs_site: Path = docsite.SITE,
    pool_size: int = POOL_SIZE,
) -> FastAPI:
    """The ASGI app over ``store`` (a Store, or the path of one to open for the app's lifetime);
    the documentation site built in ``docs_site`` is served at /docs/."""
    owned = isinstance(store, (str, Path))
    opened = (
        Store(store, create=False, pool_size=pool_size) if isinstance(store, (str, Path)) else store
    )
    site = views.Site(opened, clock, advice)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            opened.close()

    app = FastAPI(
        title="querywatch",
        version=__version__,
        description="Which query is taking PostgreSQL down, since when and why: the dashboard's "
        "data as JSON, deploy markers for CI/CD, and Prometheus metrics.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.site = site
    docs = docsite.add_docs(app, docs_site)
    _guard(app, token, loopback, allowed_hosts, docs)
    _errors(app)
    routes.add_pages(app)
    routes.add_api(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# -- security -----------------------------------------------------------------------------------
def token_ok(header: str, token: str) -> bool:
    """True when an Authorization header carries ``token`` (Bearer, or Basic's password)."""
    if not token or not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def _guard(
    app: FastAPI,
    token: str,
    loopback: bool,
    hosts: Sequence[str] | None,
    docs: docsite.DocsApp | None = None,
) -> None:
    allowed = {h.lower() for h in hosts} if hosts else None

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if allowed is not None and host not in allowed:
            return JSONResponse({"error": f"host {host!r} is not served here"}, status_code=421)
        writes = request.method not in SAFE_METHODS
        protected = writes or (not loopback and request.url.path not in OPEN_PATHS)
        authorized = token_ok(request.headers.get("authorization", ""), token)
        if protected and (token or not loopback) and not authorized:
            return _unauthorized(request)
        response = await call_next(request)
        docs_page = docs is not None and docsite.serves(request.url.path)
        headers = docs.headers() if docs is not None and docs_page else SECURITY_HEADERS
        response.headers.update(headers)
        return response


def _unauthorized(request: Request) -> Response:
    message = "a token is required (Authorization: Bearer TOKEN)"
    headers = {"WWW-Authenticate": 'Bearer realm="querywatch"'}
    if not _wants_json(request):
        headers = {"WWW-Authenticate": 'Basic realm="querywatch"'}
    response = JSONResponse({"error": message}, status_code=401, headers=headers)
    response.headers.update(SECURITY_HEADERS)
    return response


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path.endswith(".json") or path == "/metrics"


# -- errors ---------------------------------------------------------------------------------------
def _errors(app: FastAPI) -> None:
    @app.exception_handler(QuerywatchError)
    async def on_error(request: Request, exc: QuerywatchError) -> Response:
        status = 503 if isinstance(exc, StoreError) else 400
        if status == 503:
            log.warning("store error on %s: %s", request.url.path, exc)
        if _wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return HTMLResponse(templates.pages.not_found(str(exc)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input back, and fails (a 500) on a body that is not
        # UTF-8 or a lone surrogate: this one names each field and what is wrong, not the input
        errors = exc.errors()
        detail = [
            {
                "loc": [_printable(part) for part in e.get("loc", ())],
                "msg": _printable(e.get("msg", "")),
                "type": _printable(e.get("type", "")),
            }
            for e in errors
        ]
        first = errors[0] if errors else {}
        where = ".".join(str(_printable(part)) for part in first.get("loc", ()))
        what = _printable(first.get("msg", "invalid request"))
        message = "bad request: " + (f"{where}: " if where else "") + str(what)
        return JSONResponse({"error": message, "detail": detail}, status_code=422)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", "not found")
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": str(detail)}, status_code=404)
        return HTMLResponse(templates.pages.not_found(str(detail)), status_code=404)


def _printable(value: object) -> str | int:
    """A location part or message safe to encode as UTF-8 JSON (lone surrogates escaped)."""
    if isinstance(value, int):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
