"""Capturing every statement a test runs, by instrumenting psycopg 3's cursors.

``Recorder.install()`` wraps ``execute`` and ``executemany`` of ``psycopg.Cursor`` and
``psycopg.AsyncCursor`` (and so of the client-side and raw cursors built on them); while a test is
current, each call counts once for the statement's fingerprint. psycopg's ``%s`` / ``%(name)s``
placeholders become ``$n`` first, so the fingerprint and the normalized text are the ones
pg_stat_statements and the rest of querywatch use. Raw texts stay in memory (for EXPLAIN); only
normalized texts leave the process.

>>> to_dollar("SELECT %s, %(a)s, %(a)s, '100%%'", True)
"SELECT $1, $2, $2, '100%'"
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ..fingerprint import shape

_PLACEHOLDER = re.compile(r"%%|%\((?P<name>[^)]+)\)[sbt]|%[sbt]")


def to_dollar(query: str, has_params: bool) -> str:
    """psycopg's placeholders as PostgreSQL's ``$n`` (only when parameters are given)."""
    if not has_params:
        return query
    names: dict[str, int] = {}
    counter = iter(range(1, 1_000_000))

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        name = m.group("name")
        if name is None:
            return f"${next(counter)}"
        if name not in names:
            names[name] = next(counter)
        return f"${names[name]}"

    return _PLACEHOLDER.sub(replace, query)


@dataclass
class Seen:
    """A fingerprint as first seen: raw text (with ``$n``) and where it ran, for EXPLAIN."""

    query: str
    raw: str
    conninfo: str


@dataclass
class Recorder:
    """Counts statements per test while ``current`` names a test (None: not counting)."""

    current: str | None = None
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._originals: list[tuple[type, str, Any]] = []
        self._shapes: dict[str, str] = {}

    def record(self, cursor: Any, query: Any, has_params: bool) -> None:
        test = self.current
        if test is None:
            return
        text = _text(cursor, query)
        raw = text if isinstance(cursor, psycopg.RawCursor) else to_dollar(text, has_params)
        fp = self._shapes.get(raw)
        if fp is None:
            found = shape(raw)
            fp = self._shapes[raw] = found.fingerprint
            if fp not in self.seen:
                self.seen[fp] = Seen(found.query, raw, _conninfo(cursor))
        with self._lock:
            self.counts.setdefault(test, Counter())[fp] += 1

    # -- instrumentation ------------------------------------------------------------------------
    def install(self) -> None:
        if self._originals:
            return
        for cls in (psycopg.Cursor, psycopg.AsyncCursor):
            for name in ("execute", "executemany"):
                original = cls.__dict__[name]
                self._originals.append((cls, name, original))
                setattr(cls, name, self._wrap(original, name == "executemany", cls))

    def uninstall(self) -> None:
        for cls, name, original in reversed(self._originals):
            setattr(cls, name, original)
        self._originals.clear()

    def _wrap(self, original: Any, many: bool, cls: type) -> Callable[..., Any]:
        recorder = self

        if cls is psycopg.AsyncCursor:

            async def async_wrapper(cur: Any, query: Any, params: Any = None, **kw: Any) -> Any:
                recorder.record(cur, query, bool(params) if many else params is not None)
                return await original(cur, query, params, **kw)

            return async_wrapper

        def wrapper(cur: Any, query: Any, params: Any = None, **kw: Any) -> Any:
            recorder.record(cur, query, bool(params) if many else params is not None)
            return original(cur, query, params, **kw)

        return wrapper


def _text(cursor: Any, query: Any) -> str:
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    if isinstance(query, str):
        return query
    return str(query.as_string(cursor))


def _conninfo(cursor: Any) -> str:
    info = cursor.connection.info
    password = info.password
    return make_conninfo(info.dsn, password=password) if password else str(info.dsn)
