"""Records of what a PostgreSQL server log says: one frozen dataclass per kind of event.

Every event carries where and when it happened (:class:`Event` fields: ``at``, ``line_no``, ``pid``,
``database``, ``user``, ``application``, ``client``); a field the log line prefix does not hold is
None. ``at`` is timezone-aware (the log's zone, or UTC when the log names none). Statement texts are
normalized (constants replaced by ``$n``, comments dropped) and fingerprinted with
:func:`querywatch.fingerprint.fingerprint`, so they join with the pg_stat_statements data. Parameter
values and the raw text are kept only when the parser is asked to (``keep_params=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = [
    "Autovacuum",
    "Checkpoint",
    "Connection",
    "Deadlock",
    "Disconnection",
    "Error",
    "Event",
    "LockWait",
    "Plan",
    "Statement",
    "TempFile",
    "Unparsed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Where and when: the fields the log line prefix (or csv/json columns) can give."""

    at: datetime | None
    line_no: int  # 1-based line of the file where the event starts
    pid: int | None = None
    database: str | None = None
    user: str | None = None
    application: str | None = None
    client: str | None = None  # host or host(port), as the log wrote it


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement(Event):
    """One execution: ``log_min_duration_statement``, or ``log_duration`` with ``log_statement``.

    ``duration_ms`` is None for a statement logged without its duration (``log_statement`` alone).
    ``phase`` is PostgreSQL's: ``statement``, ``execute`` (extended protocol), ``bind``, ``parse``.
    ``params`` (values of ``$1``... as the log quotes them) and ``text`` (the statement as logged)
    are None unless the parser was given ``keep_params=True``.
    """

    duration_ms: float | None
    fingerprint: str
    query: str
    phase: str = "statement"
    params: tuple[str, ...] | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan(Event):
    """An auto_explain plan: ``format`` is ``text`` or ``json`` (``plan`` holds it as logged)."""

    duration_ms: float
    fingerprint: str
    query: str
    format: Literal["text", "json"]
    plan: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LockWait(Event):
    """``log_lock_waits``: ``pid`` (the event's) waits, ``acquired`` False while still waiting.

    ``lock`` is PostgreSQL's description (``relation 16385 of database 5``); ``relation`` the oid or
    name of the relation when it is one. ``holders`` and ``queue`` are the pids of the DETAIL line.
    """

    mode: str
    lock: str
    relation: str | None
    wait_ms: float
    acquired: bool
    holders: tuple[int, ...]
    queue: tuple[int, ...]
    fingerprint: str | None
    query: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadlock(Event):
    """``deadlock detected``: the processes of the cycle and the DETAIL text (values dropped)."""

    processes: tuple[int, ...]
    detail: str
    fingerprint: str | None
    query: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TempFile(Event):
    """``log_temp_files``: one temporary file removed, its size in bytes."""

    path: str
    size_bytes: int
    fingerprint: str | None
    query: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Event):
    """``checkpoint complete`` (``log_checkpoints``); times in milliseconds, None if not logged."""

    buffers: int | None
    write_ms: float | None
    sync_ms: float | None
    total_ms: float | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Autovacuum(Event):
    """``automatic vacuum`` or ``automatic analyze`` of ``table``; ``detail`` is the log's text."""

    action: Literal["vacuum", "analyze"]
    table: str
    elapsed_ms: float | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection(Event):
    """``log_connections``: ``stage`` is ``received`` or ``authorized``."""

    stage: Literal["received", "authorized"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnection(Event):
    """``log_disconnections``: how long the session lasted."""

    session_ms: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Event):
    """A message of severity ERROR, FATAL or PANIC; ``query`` is the STATEMENT line's, normalized.

    ``message`` keeps PostgreSQL's text with quoted values masked (they may hold user data) unless
    the parser was given ``keep_params=True``.
    """

    severity: str
    sqlstate: str | None
    message: str
    fingerprint: str | None
    query: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unparsed(Event):
    """A line that is not PostgreSQL's log: a sample of it (at most 200 characters) and why."""

    sample: str
    reason: str


AnyEvent = (
    Statement
    | Plan
    | LockWait
    | Deadlock
    | TempFile
    | Checkpoint
    | Autovacuum
    | Connection
    | Disconnection
    | Error
    | Unparsed
)
