"""Every SQL statement querywatch sends to a monitored server, as named constants.

pg_stat_statements changed its columns over time:

* PostgreSQL 13: ``total_time`` became ``total_exec_time`` (+ ``total_plan_time``, WAL counters);
* PostgreSQL 14: ``toplevel`` and the ``pg_stat_statements_info`` view (``dealloc``, ``stats_reset``);
* PostgreSQL 17: ``blk_read_time``/``blk_write_time`` became ``shared_blk_*_time`` and
  ``local_blk_*_time``; ``stats_since`` tells when an entry started counting.

Each statement text is read with ``pg_stat_statements(false)`` (no query texts: they are fetched
only for queryids not seen before). The schema of the extension is bound with ``psycopg.sql``.
"""

from __future__ import annotations

# Every monitoring statement starts with this comment, so querywatch can tell its own statements
# apart in pg_stat_statements and leave them out of rankings and diagnosis.
MARKER = "/* querywatch */ "

_COMMON_COLUMNS = """
    dbid, userid, queryid,
    calls, total_exec_time, total_plan_time, rows,
    shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written,
    local_blks_hit, local_blks_read, local_blks_written,
    temp_blks_read, temp_blks_written,
"""

STATEMENTS_13 = (
    MARKER
    + "SELECT"
    + _COMMON_COLUMNS
    + """    blk_read_time, blk_write_time,
    wal_records, wal_fpi, wal_bytes::float8 AS wal_bytes,
    true AS toplevel, NULL::timestamptz AS stats_since
FROM {schema}.pg_stat_statements(false)
WHERE queryid IS NOT NULL"""
)

STATEMENTS_14 = (
    MARKER
    + "SELECT"
    + _COMMON_COLUMNS
    + """    blk_read_time, blk_write_time,
    wal_records, wal_fpi, wal_bytes::float8 AS wal_bytes,
    toplevel, NULL::timestamptz AS stats_since
FROM {schema}.pg_stat_statements(false)
WHERE queryid IS NOT NULL"""
)

STATEMENTS_17 = (
    MARKER
    + "SELECT"
    + _COMMON_COLUMNS
    + """    shared_blk_read_time + local_blk_read_time AS blk_read_time,
    shared_blk_write_time + local_blk_write_time AS blk_write_time,
    wal_records, wal_fpi, wal_bytes::float8 AS wal_bytes,
    toplevel, stats_since
FROM {schema}.pg_stat_statements(false)
WHERE queryid IS NOT NULL"""
)

PLAIN_STATEMENTS = MARKER + "SELECT * FROM {schema}.pg_stat_statements(false)"

STATEMENTS_INFO = MARKER + "SELECT dealloc, stats_reset FROM {schema}.pg_stat_statements_info"

STATEMENT_TEXTS = (
    MARKER
    + """
SELECT DISTINCT ON (queryid) queryid, query
FROM {schema}.pg_stat_statements(true)
WHERE queryid = ANY(%(queryids)s)
"""
)

SERVER_CLOCK = MARKER + "SELECT pg_postmaster_start_time() AS started, clock_timestamp() AS now"

# Which cluster this is (a restarted collector checks that its stored snapshot came from the same
# one). PUBLIC may run it by default; where it was revoked, the caller falls back without it.
SYSTEM_IDENTIFIER = MARKER + "SELECT system_identifier FROM pg_control_system()"

DATABASE_TOTALS = (
    MARKER
    + """
SELECT
    coalesce(sum(xact_commit), 0) AS xact_commit,
    coalesce(sum(xact_rollback), 0) AS xact_rollback,
    coalesce(sum(blks_read), 0) AS blks_read,
    coalesce(sum(blks_hit), 0) AS blks_hit,
    coalesce(sum(tup_returned), 0) AS tup_returned,
    coalesce(sum(tup_fetched), 0) AS tup_fetched,
    coalesce(sum(tup_inserted), 0) AS tup_inserted,
    coalesce(sum(tup_updated), 0) AS tup_updated,
    coalesce(sum(tup_deleted), 0) AS tup_deleted,
    coalesce(sum(temp_bytes), 0) AS temp_bytes,
    coalesce(sum(deadlocks), 0) AS deadlocks
FROM pg_stat_database
"""
)

ACTIVITY = (
    MARKER
    + """
SELECT
    pid,
    coalesce(state, '') AS state,
    wait_event_type,
    wait_event,
    query_id,
    left(query, 4096) AS query,
    CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocking_pids,
    extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_seconds,
    extract(epoch FROM query_start)::float8 AS query_start,
    extract(epoch FROM clock_timestamp() - query_start)::float8 AS query_seconds
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
)

ACTIVITY_13 = ACTIVITY.replace("query_id,", "NULL::bigint AS query_id,")

MAX_CONNECTIONS = MARKER + "SELECT current_setting('max_connections')::int AS max_connections"

SESSION_SETUP = (
    MARKER
    + """
SELECT set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, false)
"""
)

# Capabilities (used by `querywatch check` and to pick the statements query). Settings come from
# pg_settings, which hides what a role may not read instead of raising an error.
SERVER_FACTS = (
    MARKER
    + """
SELECT
    current_setting('server_version_num')::int AS version_num,
    current_setting('server_version') AS version,
    (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS preload,
    current_user AS role,
    current_database() AS database,
    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
    pg_has_role(current_user, 'pg_monitor', 'USAGE') AS pg_monitor,
    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS pg_read_all_stats,
    (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements') AS pgss_version,
    (SELECT extnamespace::regnamespace::text FROM pg_extension
      WHERE extname = 'pg_stat_statements') AS pgss_schema,
    (SELECT extversion FROM pg_extension WHERE extname = 'hypopg') AS hypopg_version,
    (SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'hypopg') AS hypopg_available,
    (SELECT setting FROM pg_settings WHERE name = 'pg_stat_statements.max') AS pgss_max,
    (SELECT setting FROM pg_settings WHERE name = 'pg_stat_statements.track') AS pgss_track,
    (SELECT setting FROM pg_settings WHERE name = 'compute_query_id') AS compute_query_id
"""
)

STATEMENT_COUNT = MARKER + "SELECT count(*) AS entries FROM {schema}.pg_stat_statements(false)"

# pg_stat_kcache (optional, read when created and preloaded; see querywatch.source.kcache).
KCACHE_FACTS = (
    MARKER
    + """
SELECT
    (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_kcache') AS version,
    (SELECT extnamespace::regnamespace::text FROM pg_extension
      WHERE extname = 'pg_stat_kcache') AS schema,
    (SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'pg_stat_kcache') AS available
"""
)

# 2.2 columns; user and system times are in seconds, reads and writes in bytes.
KCACHE_STATEMENTS = (
    MARKER
    + """
SELECT dbid, userid, queryid, top,
    (plan_user_time + exec_user_time) * 1000 AS user_ms,
    (plan_system_time + exec_system_time) * 1000 AS system_ms,
    (plan_reads + exec_reads)::float8 AS reads_bytes,
    (plan_writes + exec_writes)::float8 AS writes_bytes,
    (plan_minflts + exec_minflts)::float8 AS minflts,
    (plan_majflts + exec_majflts)::float8 AS majflts
FROM {schema}.pg_stat_kcache()
WHERE queryid IS NOT NULL"""
)
