"""Reading one large plain stderr log with several processes (``logs -j N``).

The file is cut into N byte ranges, each starting at the first line of a message (a line with the
log's prefix whose severity is not DETAIL, STATEMENT...: no message is split), each summarized by
its own process with the summary's fast path, and the summaries are merged in file order
(:meth:`querywatch.logs.summary.Summary.merge`): the same report as one process gives.

The merge is exact while a part's bounded state is not full: more than 50,000 fingerprints
(the rest is counted under ``other``) or 4,000 with auto_explain plans may differ in which
fingerprint gets its own row or plan.

Only what one process could not read faster is split: a plain (uncompressed) stderr or RDS log
of at least :data:`MIN_BYTES`. A log written with ``log_statement`` and ``log_duration`` (a statement
and its duration on two lines, maybe far apart) is read by one process: a cut between the two
would count the statement without its duration.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise

from querywatch.logs import formats
from querywatch.logs.parser import detect_format
from querywatch.logs.reader import CHUNK, compression
from querywatch.logs.summary import Summary, summarize

__all__ = ["MIN_BYTES", "cuts", "summarize_parallel"]

MIN_BYTES = 32 << 20  # a smaller file is read by one process (starting processes costs ~0.3 s)
_SAMPLE = 256 * 1024
PART_PLANS = 20  # a part keeps the plans of 20x the fingerprints one reader keeps (see _part)
# log_statement lines (a statement logged before it runs; its duration comes on another line)
_LOGGED_STATEMENT = re.compile(rb"LOG:  (?:statement|execute [^:\n]*): ")


def summarize_parallel(
    path: str,
    jobs: int,
    *,
    fmt: str | None = None,
    prefix: str | None = None,
    year: int | None = None,
    start: int = 0,
    summary: Summary | None = None,
    min_bytes: int = MIN_BYTES,
) -> tuple[Summary, int] | None:
    """(the summary, the offset read up to) of the file from ``start``, by ``jobs`` processes.

    None when the file is not worth splitting (see the module's text): the caller reads it
    with one process.
    """
    if jobs < 2:
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            if compression(handle.read(8)) is not None:
                return None
            handle.seek(start)
            sample = handle.read(_SAMPLE)
    except OSError:
        return None
    if size - start < max(min_bytes, 1):
        return None
    found = detect_format(sample, fmt, prefix)
    if found.name not in ("stderr", "rds") or _logs_statements(sample):
        return None
    bounds = [start, *cuts(path, found, start, size, jobs), size]
    if len(bounds) < 3:
        return None
    if year is None:
        from datetime import UTC, datetime

        year = datetime.now(UTC).year
    ranges = list(pairwise(bounds))
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(ranges), mp_context=context) as pool:
        parts = list(
            pool.map(_part, [(path, a, b, found.name, found.prefix, year) for a, b in ranges])
        )
    summary = summary if summary is not None else Summary()
    summary._shapes = {}  # a file's statement texts are first seen in it (one parse per file)
    lines = 0
    for part, newlines in parts:
        summary.merge(part, lines)
        lines += newlines
    return summary, size


def _logs_statements(sample: bytes) -> bool:
    return _LOGGED_STATEMENT.search(sample) is not None


def cuts(path: str, found: formats.LogFormat, start: int, size: int, jobs: int) -> list[int]:
    """Offsets that split [start, size) in about equal ranges, each at a message's first line."""
    rx = formats.line_regex(found.prefix)
    out: list[int] = []
    with open(path, "rb") as handle:
        for k in range(1, jobs):
            target = start + (size - start) * k // jobs
            if out and target <= out[-1]:
                continue
            handle.seek(target)
            window = handle.read(CHUNK)
            cut = _message_start(window, rx)
            if cut is not None and target + cut < size:
                out.append(target + cut)
    return out


def _message_start(window: bytes, rx: re.Pattern[bytes]) -> int | None:
    """The offset in ``window`` of the first line that starts a message (not its first line:
    the window may begin inside one)."""
    pos = window.find(b"\n")
    while 0 <= pos < len(window) - 1:
        line = pos + 1
        if window[line : line + 1] not in (b"\t", b" "):
            m = rx.match(window, line)
            if m is not None and m["sev"] not in formats.SECONDARY_BYTES:
                return line
        pos = window.find(b"\n", line)
    return None


def _part(args: tuple[str, int, int, str, str | None, int]) -> tuple[Summary, int]:
    """One process: the summary of [a, b) of the file (detached) and its count of lines."""
    path, a, b, name, prefix, year = args
    newlines = [0]
    summary = Summary()
    # The merge keeps the plans of the file's first fingerprints; a later part cannot know
    # which those are, so it keeps more (bounded still) for the merge to choose from.
    summary.max_plans *= PART_PLANS
    summarize(_range(path, a, b, newlines), fmt=name, prefix=prefix, year=year, summary=summary)
    return summary.detached(), newlines[0]


def _range(path: str, a: int, b: int, newlines: list[int]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(a)
        left = b - a
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            newlines[0] += chunk.count(b"\n")
            yield chunk
