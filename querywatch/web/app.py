"""The web application: dashboard pages, their .json twins, the JSON API and /metrics.

Routes are thin: each calls one ``views`` context function and returns it as JSON or renders it
as HTML. Security: when a token is set, every POST needs it (``Authorization: Bearer TOKEN``, or
HTTP Basic with the token as password so browsers can log in), compared in constant time; on a
non-loopback bind every request but /healthz needs it. Without a token (loopback only) POSTs are
accepted from the local machine. Pages load nothing from outside: no CDN, no inline script.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..durations import iso, parse_time
from ..errors import InputError, QuerywatchError, StoreError
from ..store import Store
from . import metrics, templates, views

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
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input (the message says which and how to fix it)"},
    401: {"description": "a token is required"},
}
NOT_FOUND: dict[str, Any] = {"description": "not in the store"}

RangeName = StrEnum("RangeName", {name: name for name in views.RANGES})  # type: ignore[misc]
SortName = StrEnum("SortName", {"time": "time", "calls": "calls", "mean": "mean", "rows": "rows"})  # type: ignore[misc]
RangeQuery = Annotated[
    RangeName | None,  # type: ignore[valid-type]
    Query(description=f"time range shown, default {views.DEFAULT_RANGE}"),
]
ServerQuery = Annotated[
    str | None, Query(max_length=200, description="server name in the store (default: latest)")
]


class DeployIn(BaseModel):
    version: str = Field(min_length=1, max_length=200, description="version or commit deployed")
    at: str | None = Field(None, max_length=64, description="ISO 8601 time, default now")
    note: str = Field("", max_length=2000, description="what changed, e.g. a feature flag")


class DeployOut(BaseModel):
    version: str
    at: str
    note: str


def create_app(
    store: Store | str | Path,
    *,
    token: str = "",
    loopback: bool = True,
    clock: Callable[[], float] = time.time,
    advice: views.AdviceProvider | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The ASGI app over ``store`` (a Store, or the path of one to open for the app's lifetime)."""
    owned = not isinstance(store, Store)
    opened = store if isinstance(store, Store) else Store(store, create=False)
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
    _guard(app, token, loopback, allowed_hosts)
    _errors(app)
    _pages(app, site)
    _api(app, site)
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


def _guard(app: FastAPI, token: str, loopback: bool, hosts: Sequence[str] | None) -> None:
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
        response.headers.update(SECURITY_HEADERS)
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


def _found(context: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if context is None:
        raise HTTPException(404, f"{what} is not in the store")
    return context


def _html(page: str, context: dict[str, Any]) -> HTMLResponse:
    return HTMLResponse(templates.render(page, context))


def _range(value: Any) -> str | None:
    return None if value is None else str(value.value)


# -- pages and their .json twins ----------------------------------------------------------------
def _pages(app: FastAPI, site: views.Site) -> None:
    page = {"include_in_schema": False, "response_class": HTMLResponse}
    twin: dict[str, Any] = {"tags": ["pages"], "responses": ERRORS}
    twin404: dict[str, Any] = {"tags": ["pages"], "responses": {**ERRORS, 404: NOT_FOUND}}

    @app.get("/index.json", **twin)  # type: ignore[arg-type]
    def overview_json(range: RangeQuery = None, server: ServerQuery = None) -> dict[str, Any]:
        """The overview page's data: DB time per second stacked by top statements, deploy
        markers, incident bands, the current verdict and the top statements."""
        return views.overview(site, _range(range), server)

    @app.get("/", **page)  # type: ignore[arg-type]
    def overview_page(range: RangeQuery = None, server: ServerQuery = None) -> HTMLResponse:
        return _html("overview", views.overview(site, _range(range), server))

    @app.get("/statements/{fingerprint}.json", **twin404)  # type: ignore[arg-type]
    def statement_json(
        fingerprint: Annotated[str, PathParam(max_length=200)],
        range: RangeQuery = None,
        server: ServerQuery = None,
    ) -> dict[str, Any]:
        """One statement: calls/s, mean ms, rows/s and share of DB time over time, its text,
        deploys, incidents and advice."""
        return _found(views.statement(site, fingerprint, _range(range), server), "statement")

    @app.get("/statements/{fingerprint}", **page)  # type: ignore[arg-type]
    def statement_page(
        fingerprint: str, range: RangeQuery = None, server: ServerQuery = None
    ) -> HTMLResponse:
        ctx = _found(views.statement(site, fingerprint, _range(range), server), "statement")
        return _html("statement", ctx)

    @app.get("/incidents.json", **twin)  # type: ignore[arg-type]
    def incidents_json(server: ServerQuery = None) -> dict[str, Any]:
        """Incidents, newest first."""
        return views.incidents(site, server)

    @app.get("/incidents", **page)  # type: ignore[arg-type]
    def incidents_page(server: ServerQuery = None) -> HTMLResponse:
        return _html("incidents", views.incidents(site, server))

    @app.get("/incidents/{incident_id}.json", **twin404)  # type: ignore[arg-type]
    def incident_json(incident_id: Annotated[str, PathParam(max_length=200)]) -> dict[str, Any]:
        """One incident: timeline, diagnosis, culprits with evidence, and its chart data."""
        return _found(views.incident(site, incident_id), "incident")

    @app.get("/incidents/{incident_id}", **page)  # type: ignore[arg-type]
    def incident_page(incident_id: str) -> HTMLResponse:
        return _html("incident", _found(views.incident(site, incident_id), "incident"))

    @app.get("/deploys.json", **twin)  # type: ignore[arg-type]
    def deploys_json() -> dict[str, Any]:
        """Deploy markers, newest first (audit results once audits exist)."""
        return views.deploys(site)

    @app.get("/deploys", **page)  # type: ignore[arg-type]
    def deploys_page() -> HTMLResponse:
        return _html("deploys", views.deploys(site))

    @app.get("/health.json", **twin)  # type: ignore[arg-type]
    def health_json() -> dict[str, Any]:
        """Health findings: collector freshness, gaps, dealloc, detector and alert channels."""
        return views.health(site)

    @app.get("/health", **page)  # type: ignore[arg-type]
    def health_page() -> HTMLResponse:
        return _html("health", views.health(site))

    @app.get("/api", **page)  # type: ignore[arg-type]
    def api_page() -> HTMLResponse:
        return _html("api", {"endpoints": _endpoints(app)})

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", "not found")
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": str(detail)}, status_code=404)
        return HTMLResponse(templates.pages.not_found(str(detail)), status_code=404)


def _endpoints(app: FastAPI) -> list[dict[str, str]]:
    out = []
    for path, item in app.openapi().get("paths", {}).items():
        for method, op in item.items():
            out.append({"method": method.upper(), "path": path, "summary": op.get("summary", "")})
    return out


# -- JSON API -------------------------------------------------------------------------------------
def _api(app: FastAPI, site: views.Site) -> None:
    api: dict[str, Any] = {"tags": ["api"], "responses": ERRORS}
    api404: dict[str, Any] = {"tags": ["api"], "responses": {**ERRORS, 404: NOT_FOUND}}

    @app.get("/api/diagnosis", **api)  # type: ignore[arg-type]
    def diagnosis(
        since: Annotated[
            str | None, Query(max_length=32, description="window back from now, e.g. 10m")
        ] = None,
        start: Annotated[
            str | None, Query(max_length=64, description="window start, ISO 8601")
        ] = None,
        end: Annotated[str | None, Query(max_length=64, description="window end, ISO 8601")] = None,
        baseline: Annotated[str, Query(max_length=32, description="history compared with")] = "30m",
        server: ServerQuery = None,
    ) -> dict[str, Any]:
        """Which statements explain the database time of a window, and why: exactly the object
        `querywatch diagnose --format json` prints."""
        return views.diagnosis(site, since, start, end, baseline, server)

    @app.get("/api/statements", **api)  # type: ignore[arg-type]
    def statements(
        range: RangeQuery = None,
        by: SortName = "time",  # type: ignore[valid-type, assignment]
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        server: ServerQuery = None,
    ) -> dict[str, Any]:
        """Statements ranked by database time (or calls, mean, rows) over a range."""
        return views.statements(site, _range(range), str(getattr(by, "value", by)), limit, server)

    @app.get("/api/incidents", **api)  # type: ignore[arg-type]
    def incidents(server: ServerQuery = None) -> dict[str, Any]:
        """Incidents, newest first, with their verdict and summary."""
        return views.incidents(site, server)

    @app.get("/api/incidents/{incident_id}", **api404)  # type: ignore[arg-type]
    def incident(incident_id: Annotated[str, PathParam(max_length=200)]) -> dict[str, Any]:
        """One incident with its timeline and stored diagnosis."""
        return _found(views.incident(site, incident_id), "incident")

    @app.get("/api/deploys", **api)  # type: ignore[arg-type]
    def deploys() -> dict[str, Any]:
        """Deploy markers, newest first."""
        return views.deploys(site)

    @app.post("/api/deploys", status_code=201, **api)  # type: ignore[arg-type]
    def add_deploy(body: DeployIn) -> DeployOut:
        """Record a deploy marker (for CI/CD pipelines). Needs the token when one is set."""
        version = body.version.strip()
        if not version:
            raise InputError("version: must not be empty")
        at = parse_time(body.at, "at") if body.at else site.clock()
        if not 0 <= at <= 32503680000:
            raise InputError(f"at: {body.at!r} is out of range")
        deploy = site.store.add_deploy(version, at, body.note)
        log.info("deploy %s recorded at %s", deploy.version, iso(deploy.at))
        return DeployOut(version=deploy.version, at=iso(deploy.at) or "", note=deploy.note)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {metrics.CONTENT_TYPE.split(";")[0]: {}}}},
    )
    def prometheus() -> Response:
        """Prometheus text format, computed from the store at scrape time."""
        collector = metrics.StoreCollector(site.store, site.clock)
        return Response(metrics.render(collector), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["metrics"])
    def healthz() -> dict[str, str]:
        """Liveness: the server answers (never needs a token)."""
        return {"status": "ok"}
