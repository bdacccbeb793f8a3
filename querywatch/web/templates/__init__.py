"""The dashboard's HTML: small pure functions over the page contexts (no template engine needed).

``render(page, context)`` turns the context of a ``views`` function into a whole HTML page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import fleet, pages, replication

RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "overview": pages.overview,
    "statement": pages.statement,
    "incidents": pages.incidents,
    "incident": pages.incident,
    "deploys": pages.deploys,
    "health": pages.health,
    "replication": replication.render,
    "api": pages.api,
    "fleet": fleet.page,
}


def render(page: str, context: Mapping[str, Any]) -> str:
    """The page, with the server picker of a fleet in its header (querywatch.web.templates.fleet)."""
    return fleet.with_picker(RENDERERS[page](context), page, context)


__all__ = ["render"]
