"""Owner leases: which watcher collects which server, so two never write the same server.

A watcher claims a server before collecting it and renews the lease every interval. A second
watcher that claims the same server is refused while the lease is live (renewed within its ttl);
once a lease has not been renewed for ``ttl_s`` seconds (its owner died) anyone may take it over.
A lease is proved by its ``token``: a renewal or release with a stale token changes nothing.

The SQL is portable (SQLite and PostgreSQL): one upsert decides atomically who holds the lease.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import ServerLeased
from .db import Connection
from .statements import StatementsMixin

CLAIM = """
INSERT INTO leases (server_id, owner, host, pid, token, acquired_at, renewed_at, ttl_s)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id) DO UPDATE SET owner = excluded.owner, host = excluded.host,
    pid = excluded.pid, token = excluded.token, acquired_at = excluded.acquired_at,
    renewed_at = excluded.renewed_at, ttl_s = excluded.ttl_s
WHERE leases.token = excluded.token OR leases.renewed_at + leases.ttl_s < excluded.renewed_at
"""
RENEW = """
UPDATE leases SET renewed_at = ?, ttl_s = ? WHERE server_id = ? AND token = ?
"""
RELEASE = "DELETE FROM leases WHERE server_id = ? AND token = ?"
SELECT_LEASE = """
SELECT l.server_id, s.name, l.owner, l.host, l.pid, l.token, l.acquired_at, l.renewed_at, l.ttl_s
FROM leases l JOIN servers s ON s.id = l.server_id
"""


@dataclass(frozen=True)
class Lease:
    """A watcher's right to collect one server, valid until ``renewed_at + ttl_s``."""

    server_id: int
    server_name: str
    owner: str
    host: str
    pid: int
    token: str
    acquired_at: float
    renewed_at: float
    ttl_s: float

    def expires_at(self) -> float:
        return self.renewed_at + self.ttl_s

    def live(self, now: float) -> bool:
        return now <= self.expires_at()


def _lease(row: Any) -> Lease:
    return Lease(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        int(row[4]),
        row[5],
        float(row[6]),
        float(row[7]),
        float(row[8]),
    )


def load(conn: Connection, server_id: int) -> Lease | None:
    row = conn.execute(SELECT_LEASE + " WHERE l.server_id = ?", (server_id,)).fetchone()
    return _lease(row) if row else None


def all_leases(conn: Connection) -> list[Lease]:
    return [_lease(r) for r in conn.execute(SELECT_LEASE + " ORDER BY s.name").fetchall()]


def refusal(lease: Lease, now: float) -> str:
    """The one-line message for a watcher refused because ``lease`` is live."""
    ago = max(0.0, now - lease.renewed_at)
    wait = max(0.0, lease.expires_at() - now)
    return (
        f"server {lease.server_name!r} is watched by {lease.owner} on {lease.host} "
        f"(lease renewed {ago:.0f}s ago); stop it or wait {wait:.0f}s"
    )


def claim(
    conn: Connection,
    server_id: int,
    owner: str,
    ttl_s: float,
    now: float,
    token: str | None = None,
    host: str | None = None,
) -> Lease:
    """Take the server's lease (inside the caller's transaction) or raise ServerLeased."""
    mine = token or uuid.uuid4().hex
    host = host or socket.gethostname()
    conn.execute(CLAIM, (server_id, owner, host, os.getpid(), mine, now, now, ttl_s))
    lease = load(conn, server_id)
    assert lease is not None
    if lease.token != mine:
        raise ServerLeased(refusal(lease, now))
    return lease


def renew(conn: Connection, lease: Lease, now: float) -> Lease:
    """Extend ``lease`` (inside the caller's transaction); ServerLeased when it was taken over."""
    cur = conn.execute(RENEW, (now, lease.ttl_s, lease.server_id, lease.token))
    if cur.rowcount != 1:
        holder = load(conn, lease.server_id)
        who = f"{holder.owner} on {holder.host}" if holder else "nobody (it was released)"
        raise ServerLeased(
            f"server {lease.server_name!r}: lease lost, now held by {who} "
            "(fix: renew more often than the lease ttl, or give it a longer ttl)"
        )
    return Lease(
        lease.server_id,
        lease.server_name,
        lease.owner,
        lease.host,
        lease.pid,
        lease.token,
        lease.acquired_at,
        now,
        lease.ttl_s,
    )


def release(conn: Connection, lease: Lease) -> bool:
    """Give the lease up; False when it was not ours any more."""
    return conn.execute(RELEASE, (lease.server_id, lease.token)).rowcount == 1


class LeasesMixin(StatementsMixin):
    """The Store's owner leases (the functions above, each in one transaction)."""

    def claim_server(
        self, server_name: str, owner: str, ttl_s: float, *, host: str | None = None
    ) -> Lease:
        """Take the lease of ``server_name`` (created on first use) for ``owner``; ServerLeased
        (a one-line message naming the holder) when another watcher's lease is live."""
        server_id = self.server(server_name).id
        with self._errors(), self._transaction() as conn:
            return claim(conn, server_id, owner, ttl_s, self.clock(), host=host)

    def renew(self, lease: Lease) -> Lease:
        """Extend ``lease`` by its ttl from now; ServerLeased when another watcher took it over."""
        with self._errors(), self._transaction() as conn:
            return renew(conn, lease, self.clock())

    def release(self, lease: Lease) -> bool:
        """Give ``lease`` up so another watcher may claim at once; False when it was not ours."""
        with self._errors(), self._transaction() as conn:
            return release(conn, lease)

    def leases(self) -> list[Lease]:
        """Every server's lease, live or expired (see ``Lease.live``)."""
        with self._errors():
            return all_leases(self._conn)
