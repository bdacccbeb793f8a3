"""Every route of the web app: the pages and their .json twins from one table, the JSON API and
the probes (/metrics, /healthz).

Each page is a row of ``PAGES``: its path, the context function behind it and its template. Its
twin, at the same path + ``.json`` (``/index.json`` for ``/``), returns the context as JSON (the
function's parameters, docstring and name make its OpenAPI operation); the page renders the same
context with the template (datasette's habit). Routes read the ``views.Site`` from
``app.state.site``, which ``create_app`` sets.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from .. import top
from ..durations import iso, parse_time
from ..errors import InputError
from . import metrics, templates, views
from . import replication as replication_view

log = logging.getLogger("querywatch.web")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input (the message says which and how to fix it)"},
    401: {"description": "a token is required"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not in the store"}}


def _choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """A str enum named ``name`` whose members are ``values`` (OpenAPI lists them)."""
    # cast: typeshed reads StrEnum(...) as a member lookup, not the functional API
    return cast(type[StrEnum], StrEnum(name, [(value, value) for value in values]))


if TYPE_CHECKING:  # members are only known at run time: statically, any str enum
    RangeName = StrEnum
    SortName = StrEnum
else:
    RangeName = _choices("RangeName", views.RANGES)
    SortName = _choices("SortName", top.SORT_KEYS)


def _site(request: Request) -> views.Site:
    site: views.Site = request.app.state.site
    return site


SiteDep = Annotated[views.Site, Depends(_site)]
IdPath = Annotated[str, PathParam(max_length=200)]
RangeQuery = Annotated[
    RangeName | None, Query(description=f"time range shown, default {views.DEFAULT_RANGE}")
]
ServerQuery = Annotated[
    str | None, Query(max_length=200, description="server name in the store (default: latest)")
]


def _range(value: RangeName | None) -> str | None:
    return None if value is None else str(value)


def _found(context: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if context is None:
        raise HTTPException(404, f"{what} is not in the store")
    return context


# -- page contexts: each one's docstring describes its .json twin in OpenAPI --------------------
def overview(site: SiteDep, range: RangeQuery = None, server: ServerQuery = None) -> dict[str, Any]:
    """The overview page's data: DB time per second stacked by top statements, deploy
    markers, incident bands, the current verdict and the top statements."""
    return views.overview(site, _range(range), server)


def statement(
    site: SiteDep, fingerprint: IdPath, range: RangeQuery = None, server: ServerQuery = None
) -> dict[str, Any]:
    """One statement: calls/s, mean ms, rows/s and share of DB time over time, its text,
    deploys, incidents and advice."""
    return _found(views.statement(site, fingerprint, _range(range), server), "statement")


def incidents(site: SiteDep, server: ServerQuery = None) -> dict[str, Any]:
    """Incidents, newest first."""
    return views.incidents(site, server)


def incident(site: SiteDep, incident_id: IdPath) -> dict[str, Any]:
    """One incident: timeline, diagnosis, culprits with evidence, and its chart data."""
    return _found(views.incident(site, incident_id), "incident")


def deploys(site: SiteDep) -> dict[str, Any]:
    """Deploy markers, newest first (audit results once audits exist)."""
    return views.deploys(site)


def health(site: SiteDep, server: ServerQuery = None) -> dict[str, Any]:
    """Health findings: collector freshness, gaps, dealloc, detector and alert channels."""
    return views.health(site, server)


def fleet(site: SiteDep, range: RangeQuery = None) -> dict[str, Any]:
    """Every server with its health, open incidents, DB time sparkline and collector status,
    trouble first (firing, down, stale, pending, learning, ok)."""
    return views.fleet(site, _range(range))


def replication(site: SiteDep, range: RangeQuery = None) -> dict[str, Any]:
    """Every watched server's role, timeline and replication findings, each replica's replay
    lag now and over the range, and the topology events (promotions, unreachable servers, lag)."""
    name = views.pick_range(_range(range))
    now = site.clock()
    start, end, _ = views.window(name, now)
    found = replication_view.context(site.store, now, start, end)
    return {**found, "range": name, "ranges": list(views.RANGES)}


def api(request: Request) -> dict[str, Any]:
    """The operations of the OpenAPI document."""
    spec: dict[str, Any] = request.app.openapi()
    return {
        "endpoints": [
            {"method": method.upper(), "path": path, "summary": op.get("summary", "")}
            for path, item in spec.get("paths", {}).items()
            for method, op in item.items()
        ]
    }


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    path: str
    context: Callable[..., dict[str, Any]]
    template: str
    missing: bool = False  # the twin documents a 404 (an id that is not in the store)
    twin: bool = True  # served as JSON too, at ``twin_path``

    @property
    def twin_path(self) -> str:
        return "/index.json" if self.path == "/" else f"{self.path}.json"


PAGES = (
    Page("/", overview, "overview"),
    Page("/statements/{fingerprint}", statement, "statement", missing=True),
    Page("/incidents", incidents, "incidents"),
    Page("/incidents/{incident_id}", incident, "incident", missing=True),
    Page("/deploys", deploys, "deploys"),
    Page("/health", health, "health"),
    Page("/replication", replication, "replication"),
    Page("/fleet", fleet, "fleet"),
    Page("/api", api, "api", twin=False),
)


# The HTML page of a row: its context rendered with its template. Path parameters lose their
# length limit here, so any unknown id gets the HTML "not found" page, not a 422. (A comment,
# not a docstring: FastAPI would take a docstring as each page's description.)
class PageView:
    def __init__(self, page: Page) -> None:
        self.page = page
        signature = inspect.signature(page.context, eval_str=True)
        loose = [
            p.replace(annotation=str) if p.annotation == IdPath else p
            for p in signature.parameters.values()
        ]
        self.__signature__ = signature.replace(parameters=loose, return_annotation=HTMLResponse)

    def __call__(self, **params: Any) -> HTMLResponse:
        context = _with_servers(self.page.context(**params), params)
        return HTMLResponse(templates.render(self.page.template, context))


def _with_servers(context: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The store's server names for the picker (web.templates.fleet) of a page whose context
    does not list them (a page about the whole fleet, the API's list)."""
    if "servers" in context:
        return context
    request = params.get("request")
    site = params.get("site") or (request.app.state.site if request is not None else None)
    if not isinstance(site, views.Site):
        return context
    return {**context, "servers": [s.name for s in site.store.servers()]}


def add_pages(app: FastAPI, pages: Iterable[Page] = PAGES) -> None:
    """Each page after its twin (so that ``/x/{id}`` does not take ``/x/{id}.json``)."""
    for page in pages:
        if page.twin:
            app.add_api_route(
                page.twin_path,
                page.context,
                methods=["GET"],
                name=f"{page.template}_json",
                tags=["pages"],
                responses={**ERRORS, **NOT_FOUND} if page.missing else ERRORS,
            )
        app.add_api_route(
            page.path,
            PageView(page),
            methods=["GET"],
            name=f"{page.template}_page",
            response_class=HTMLResponse,
            include_in_schema=False,
        )


# -- JSON API -------------------------------------------------------------------------------------
class DeployIn(BaseModel):
    version: str = Field(min_length=1, max_length=200, description="version or commit deployed")
    at: str | None = Field(None, max_length=64, description="ISO 8601 time, default now")
    note: str = Field("", max_length=2000, description="what changed, e.g. a feature flag")


class DeployOut(BaseModel):
    version: str
    at: str
    note: str


def add_api(app: FastAPI) -> None:
    """The JSON API (tagged "api") and the probes (tagged "metrics")."""

    @app.get("/api/diagnosis", tags=["api"], responses=ERRORS)
    def diagnosis(
        site: SiteDep,
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

    @app.get("/api/statements", tags=["api"], responses=ERRORS)
    def statements(
        site: SiteDep,
        range: RangeQuery = None,
        by: SortName = SortName("time"),
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        server: ServerQuery = None,
    ) -> dict[str, Any]:
        """Statements ranked by database time (or calls, mean, rows, io) over a range."""
        return views.statements(site, _range(range), str(by), limit, server)

    @app.get("/api/incidents", tags=["api"], responses=ERRORS)
    def incidents(site: SiteDep, server: ServerQuery = None) -> dict[str, Any]:
        """Incidents, newest first, with their verdict and summary."""
        return views.incidents(site, server)

    @app.get("/api/incidents/{incident_id}", tags=["api"], responses={**ERRORS, **NOT_FOUND})
    def incident(site: SiteDep, incident_id: IdPath) -> dict[str, Any]:
        """One incident with its timeline and stored diagnosis."""
        return _found(views.incident(site, incident_id), "incident")

    @app.get("/api/deploys", tags=["api"], responses=ERRORS)
    def deploys(site: SiteDep) -> dict[str, Any]:
        """Deploy markers, newest first."""
        return views.deploys(site)

    @app.post("/api/deploys", status_code=201, tags=["api"], responses=ERRORS)
    def add_deploy(site: SiteDep, body: DeployIn) -> DeployOut:
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
    def prometheus(site: SiteDep) -> Response:
        """Prometheus text format, computed from the store at scrape time."""
        collector = metrics.StoreCollector(site.store, site.clock)
        return Response(metrics.render(collector), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["metrics"])
    def healthz() -> dict[str, str]:
        """Liveness: the server answers (never needs a token)."""
        return {"status": "ok"}
