"""DB time per rollup bucket: ``rollup_buckets.exec_us``, kept beside the bucket's seconds.

A rollup bucket holds one row per statement; the fleet's sparklines (querywatch.store.fleet) need
only each server's total DB time per bucket, over top-level statements that are not querywatch's
own (as rankings and diagnosis count it). Reading it from the per-statement rows costs a row per
statement and bucket (an hour of 200 statements on 20 servers: 240,000 rows); kept per bucket it
is one row per server and bucket.

Every writer of rollups recomputes the total of the buckets it touched, from the rollups
themselves (idempotent: a bucket recomputed twice holds the same value): ``maintain``'s roll-up
(querywatch.store.rollup), a copied server (``store copy``) and a server log's buckets folded
behind the marks (querywatch.store.logevents).
"""

from __future__ import annotations

from .db import Connection

_TOTAL = """coalesce((
    SELECT sum(r.exec_us) FROM rollups r
    JOIN statements s ON s.server_id = r.server_id AND s.id = r.statement_id
    WHERE r.server_id = rollup_buckets.server_id AND r.resolution = rollup_buckets.resolution
        AND r.bucket = rollup_buckets.bucket AND s.toplevel = 1 AND s.own = 0), 0)"""
REFRESH = f"""
UPDATE rollup_buckets SET exec_us = {_TOTAL}
WHERE server_id IN (SELECT id FROM servers) AND resolution = ? AND bucket >= ? AND bucket < ?
"""
REFRESH_SERVER = f"""
UPDATE rollup_buckets SET exec_us = {_TOTAL}
WHERE server_id = ? AND resolution IN (60, 3600) AND bucket >= ? AND bucket < ?
"""
FIRST_START = """
SELECT min(start) FROM intervals
WHERE server_id IN (SELECT id FROM servers) AND end > ? AND end <= ?
"""
EVER = 1e18  # later than any bucket


def refresh(conn: Connection, resolution: int, start: float, end: float) -> None:
    """Recompute the DB time of every server's ``resolution`` buckets in [start, end)."""
    conn.execute(REFRESH, (resolution, start, end))


def refresh_rolled(conn: Connection, resolution: int, done: float, end: float) -> None:
    """After raw intervals ending in (done, end] were rolled up to ``resolution`` buckets:
    recompute the buckets their starts fall in (an interval can start buckets before its end)."""
    row = conn.execute(FIRST_START, (done, end)).fetchone()
    if row is not None and row[0] is not None:
        refresh(conn, resolution, (float(row[0]) // resolution) * resolution, end)


def refresh_server(conn: Connection, server_id: int, start: float = 0.0, end: float = EVER) -> None:
    """Recompute one server's buckets (both resolutions) in [start, end)."""
    conn.execute(REFRESH_SERVER, (server_id, start, end))
