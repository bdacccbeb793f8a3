"""Load testing to prove a fix: an open-model generator, its parameters, results and command.

``run_loadtest(dsn, query, rate, duration_s, ...) -> LoadResult`` is the library entry point (the
demo calls it before and after the fix and prints ``compare_text``).
"""

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
