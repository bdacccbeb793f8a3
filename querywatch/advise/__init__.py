"""The advisor: generic plans, plan findings, index advice verified with hypopg, health checks and
the review report.

Pure modules (no psycopg): nodes, findings, candidates, savings, health, releases, report, records.
I/O: session (the advisor's own connection), plans (EXPLAIN), catalog, indexes (hypopg), advisor.
The entry points are imported lazily, so importing a pure module does not load psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Advice, Finding, IndexAdvice, QueryStats, Review

__all__ = [
    "Advice",
    "Finding",
    "IndexAdvice",
    "QueryStats",
    "Review",
    "advise_statement",
    "advise_with",
    "review",
]


def __getattr__(name: str) -> Any:
    if name in {"advise_statement", "advise_with", "review"}:
        from . import advisor

        return getattr(advisor, name)
    if name in __all__:  # the records too: the CLI's advise command loads none of these
        from . import records

        return getattr(records, name)
    raise AttributeError(name)
