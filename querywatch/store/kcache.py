"""pg_stat_kcache's per-statement usage per interval: the SQL behind ``Store.record_kcache`` and
``Store.cpu_usage``.

One ``kcache`` row per interval and statement whose usage moved: user and system CPU time (integer
microseconds, as statement times elsewhere in the store), bytes read and written, minor and major
page faults. Rows go with their interval (ON DELETE CASCADE), so retention needs nothing more.
Reading sums them per fingerprint over top-level statements, querywatch's own included: they are
part of what the server's CPU did.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import StatementKey
from ..source.kcache import CpuUsage, KcacheCounters, KcacheUsage
from .db import Connection

INSERT_KCACHE = """
INSERT INTO kcache (server_id, interval_id, statement_id, user_us, system_us, reads_bytes,
    writes_bytes, minflts, majflts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, interval_id, statement_id) DO UPDATE SET user_us = excluded.user_us,
    system_us = excluded.system_us, reads_bytes = excluded.reads_bytes,
    writes_bytes = excluded.writes_bytes, minflts = excluded.minflts, majflts = excluded.majflts
"""
SELECT_KCACHE = """
SELECT s.fingerprint, sum(k.user_us), sum(k.system_us), sum(k.reads_bytes), sum(k.writes_bytes),
    sum(k.minflts), sum(k.majflts)
FROM intervals i CROSS JOIN kcache k
    JOIN statements s ON s.server_id = k.server_id AND s.id = k.statement_id
WHERE i.server_id = ? AND i.end > ? AND i.start < ? AND i.complete = 1 AND s.toplevel = 1
    AND k.server_id = i.server_id AND k.interval_id = i.id
GROUP BY s.fingerprint
"""
SELECT_KCACHE_SECONDS = """
SELECT coalesce(sum(i.end - i.start), 0) FROM intervals i
WHERE i.server_id = ? AND i.end > ? AND i.start < ? AND i.complete = 1
    AND EXISTS (SELECT 1 FROM kcache k WHERE k.server_id = i.server_id AND k.interval_id = i.id)
"""


def save(
    conn: Connection,
    server_id: int,
    interval_id: int,
    usage: KcacheUsage,
    ids: Mapping[StatementKey, int],
) -> int:
    """Write the usage of the statements the store knows; returns the rows written."""
    rows = sorted(
        (server_id, interval_id, ids[key], *_row(counters))
        for key, counters in usage.by_key.items()
        if key in ids
    )
    conn.executemany(INSERT_KCACHE, rows)
    return len(rows)


def _row(c: KcacheCounters) -> tuple[int, ...]:
    return (
        round(c.user_ms * 1000),
        round(c.system_ms * 1000),
        round(c.reads_bytes),
        round(c.writes_bytes),
        round(c.minflts),
        round(c.majflts),
    )


def load(conn: Connection, server_id: int, start: float, end: float) -> CpuUsage | None:
    """The usage per fingerprint over the complete intervals overlapping [start, end), or None
    when pg_stat_kcache recorded none of them."""
    params = (server_id, start, end)
    rows = conn.execute(SELECT_KCACHE, params).fetchall()
    if not rows:
        return None
    seconds = float(conn.execute(SELECT_KCACHE_SECONDS, params).fetchone()[0])
    by_fp = {
        fp: KcacheCounters(user / 1000, system / 1000, reads, writes, minflts, majflts)
        for fp, user, system, reads, writes, minflts, majflts in rows
    }
    return CpuUsage(seconds, by_fp)
