"""The alert outbox: one row per notification and channel until it is delivered or too old.

Rows are written in the incident's transaction (``Store.save_incident(..., outbox=...)``) or by
the dispatcher itself; ``(channel, source, key)`` is unique, so writing the same notification
twice (a restarted watcher, a re-fired incident) adds nothing. A row is ``pending`` until its
channel takes it (``sent``), refuses it for good (``failed``: the request itself is wrong) or it
passes the maximum age (``expired``). Done rows are kept for ``querywatch status`` for
:data:`KEEP_S`, then pruned by store maintenance. The store does not know the alert types: the
notification travels as JSON text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .db import Connection

PENDING, SENT, FAILED, EXPIRED = "pending", "sent", "failed", "expired"
DONE_STATES = (SENT, FAILED, EXPIRED)
KEEP_S = 7 * 86400.0  # done rows kept for `status`, then pruned


@dataclass(frozen=True)
class OutboxEntry:
    """A notification for one channel, as written; ``key`` is its idempotency key."""

    channel: str
    target: str
    source: str
    key: str
    incident: str
    status: str
    notification: str  # JSON
    created_at: float


@dataclass(frozen=True)
class OutboxRow:
    """A stored entry and how its delivery goes."""

    id: int
    entry: OutboxEntry
    state: str
    attempts: int
    next_at: float
    last_error: str | None


@dataclass(frozen=True)
class OutboxSummary:
    """One channel's rows by state, for ``querywatch status``."""

    channel: str
    target: str
    pending: int
    sent: int
    failed: int
    expired: int
    oldest_pending_at: float | None
    attempts: int  # failed attempts of the pending rows
    last_error: str | None  # of the oldest pending row


INSERT = """
INSERT INTO outbox (channel, target, source, key, incident, status, notification,
    created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (channel, source, key) DO NOTHING
"""
_COLUMNS = """
id, channel, target, source, key, incident, status, notification, created_at, state, attempts,
next_at, last_error
"""
SELECT_HEAD = f"""
SELECT {_COLUMNS} FROM outbox WHERE channel = ? AND state = 'pending' ORDER BY id LIMIT 1
"""
SELECT_STALE = f"""
SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND created_at < ? ORDER BY id
"""
SELECT_ROWS = f"SELECT {_COLUMNS} FROM outbox WHERE channel = ? ORDER BY id"
MARK_DONE = """
UPDATE outbox SET state = ?, done_at = ?, attempts = attempts + ?, last_error = ?
WHERE id = ? AND state = 'pending'
"""
MARK_RETRY = """
UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?
WHERE id = ? AND state = 'pending'
"""
SELECT_SUMMARY = """
SELECT channel, max(target),
    sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), sum(CASE WHEN state = 'sent' THEN 1 ELSE 0 END),
    sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END),
    sum(CASE WHEN state = 'expired' THEN 1 ELSE 0 END),
    min(CASE WHEN state = 'pending' THEN created_at END),
    sum(CASE WHEN state = 'pending' THEN attempts ELSE 0 END),
    (SELECT o.last_error FROM outbox o WHERE o.channel = outbox.channel AND o.state = 'pending'
        ORDER BY o.id LIMIT 1)
FROM outbox GROUP BY channel ORDER BY min(id)
"""
PRUNE = "DELETE FROM outbox WHERE state != 'pending' AND done_at < ?"


def add(conn: Connection, entries: Sequence[OutboxEntry]) -> int:
    """Write ``entries`` (within the caller's transaction); returns how many were new."""
    cur = conn.executemany(
        INSERT,
        [
            (
                e.channel,
                e.target,
                e.source,
                e.key,
                e.incident,
                e.status,
                e.notification,
                e.created_at,
                e.created_at,
            )
            for e in entries
        ],
    )
    return int(cur.rowcount)


def head(conn: Connection, channel: str) -> OutboxRow | None:
    """The channel's oldest pending row: rows go out in the order they were written."""
    row = conn.execute(SELECT_HEAD, (channel,)).fetchone()
    return _row(row) if row is not None else None


def rows(conn: Connection, channel: str) -> list[OutboxRow]:
    """Every stored row of ``channel``, oldest first."""
    return [_row(r) for r in conn.execute(SELECT_ROWS, (channel,)).fetchall()]


def stale(conn: Connection, created_before: float) -> list[OutboxRow]:
    """Pending rows of any channel written before ``created_before``."""
    return [_row(r) for r in conn.execute(SELECT_STALE, (created_before,)).fetchall()]


def done(
    conn: Connection, row_id: int, state: str, at: float, tried: bool, error: str | None
) -> bool:
    """Close a pending row as ``sent``, ``failed`` or ``expired``; False if it was not pending."""
    assert state in DONE_STATES, state
    cur = conn.execute(MARK_DONE, (state, at, int(tried), error, row_id))
    return cur.rowcount == 1


def retry(conn: Connection, row_id: int, next_at: float, error: str) -> None:
    """Count a failed attempt and put the next one at ``next_at``."""
    conn.execute(MARK_RETRY, (next_at, error, row_id))


def summary(conn: Connection) -> list[OutboxSummary]:
    return [
        OutboxSummary(
            channel=r[0],
            target=r[1],
            pending=int(r[2] or 0),
            sent=int(r[3] or 0),
            failed=int(r[4] or 0),
            expired=int(r[5] or 0),
            oldest_pending_at=r[6],
            attempts=int(r[7] or 0),
            last_error=r[8],
        )
        for r in conn.execute(SELECT_SUMMARY).fetchall()
    ]


def prune(conn: Connection, now: float) -> int:
    """Delete rows done more than :data:`KEEP_S` ago; returns how many."""
    return conn.execute(PRUNE, (now - KEEP_S,)).rowcount


def _row(r: Sequence[Any]) -> OutboxRow:
    entry = OutboxEntry(
        channel=str(r[1]),
        target=str(r[2]),
        source=str(r[3]),
        key=str(r[4]),
        incident=str(r[5]),
        status=str(r[6]),
        notification=str(r[7]),
        created_at=float(r[8]),
    )
    error = r[12]
    return OutboxRow(
        id=int(r[0]),
        entry=entry,
        state=str(r[9]),
        attempts=int(r[10]),
        next_at=float(r[11]),
        last_error=str(error) if error is not None else None,
    )
