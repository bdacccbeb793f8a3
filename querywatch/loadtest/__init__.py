"""Load testing to prove a fix: an open-model generator, its parameters, results and command.

``run_loadtest(dsn, query, rate, duration_s, ...) -> LoadResult`` is the library entry point (the
demo calls it before and after the fix and prints ``compare_text``).
"""

from typing import TYPE_CHECKING

from querywatch.lazy import exports

if TYPE_CHECKING:
    from querywatch.loadtest.engine import OpenModel, Progress
    from querywatch.loadtest.result import LoadResult, compare_text, from_json, to_json, to_text
    from querywatch.loadtest.runner import run_loadtest

__all__ = [
    "LoadResult",
    "OpenModel",
    "Progress",
    "compare_text",
    "from_json",
    "run_loadtest",
    "to_json",
    "to_text",
]

# name -> its module, imported on first use (psycopg loads with the engine, not the CLI's help)
_LAZY = {
    "LoadResult": "result",
    "OpenModel": "engine",
    "Progress": "engine",
    "compare_text": "result",
    "from_json": "result",
    "run_loadtest": "runner",
    "to_json": "result",
    "to_text": "result",
}


__getattr__ = exports(__name__, _LAZY)
