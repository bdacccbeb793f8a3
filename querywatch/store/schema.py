"""Versioned migrations of the store. Each entry upgrades the schema by one version.

The tables avoid SQLite-only features (no JSON1, no rowid tricks beyond INTEGER PRIMARY KEY) so a
PostgreSQL store for fleets can use the same layout: ``servers`` keys every row, times are POSIX
seconds, statement times are integer microseconds.
"""

from __future__ import annotations

from ..model import COUNTER_FIELDS
from .replication import REPLICATION, TOPOLOGY_INCIDENTS

APPLICATION_ID = 0x51575443  # "QWTC": marks a file as a querywatch store

# Counter columns of `deltas` and `rollups`, in querywatch.model.COUNTER_FIELDS order.
COUNTER_COLUMNS: tuple[str, ...] = (
    "calls",
    "exec_us",
    "plan_us",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_us",
    "blk_write_us",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
)
MICROSECOND_COLUMNS = frozenset({"exec_us", "plan_us", "blk_read_us", "blk_write_us"})

DATABASE_COLUMNS: tuple[str, ...] = (
    "db_xact_commit",
    "db_xact_rollback",
    "db_blks_read",
    "db_blks_hit",
    "db_tup_returned",
    "db_tup_fetched",
    "db_tup_inserted",
    "db_tup_updated",
    "db_tup_deleted",
    "db_temp_bytes",
    "db_deadlocks",
)

_COUNTERS_DDL = ",\n    ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTER_COLUMNS)
_DATABASE_DDL = ",\n    ".join(f"{c} INTEGER" for c in DATABASE_COLUMNS)

V1 = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE servers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE TABLE statements (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    dbid INTEGER NOT NULL,
    userid INTEGER NOT NULL,
    queryid INTEGER NOT NULL,
    toplevel INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    own INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    UNIQUE (server_id, dbid, userid, queryid, toplevel)
);
CREATE INDEX statements_fingerprint ON statements (fingerprint);
CREATE TABLE texts (
    fingerprint TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE intervals (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    start REAL NOT NULL,
    end REAL NOT NULL,
    complete INTEGER NOT NULL,
    dealloc INTEGER NOT NULL DEFAULT 0,
    {_DATABASE_DDL},
    act_samples INTEGER NOT NULL DEFAULT 0,
    act_sessions_mean REAL,
    act_active_mean REAL,
    act_idle_in_transaction_mean REAL,
    act_lock_waiting_mean REAL,
    act_sessions_max INTEGER,
    act_max_connections INTEGER
);
CREATE INDEX intervals_server_end ON intervals (server_id, end);
CREATE TABLE deltas (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    {_COUNTERS_DDL},
    PRIMARY KEY (interval_id, statement_id)
) WITHOUT ROWID;
CREATE TABLE activity (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    lock_waits INTEGER NOT NULL DEFAULT 0,
    blocking INTEGER NOT NULL DEFAULT 0,
    blocked_sessions INTEGER NOT NULL DEFAULT 0,
    idle_in_transaction INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (interval_id, fingerprint)
) WITHOUT ROWID;
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    start REAL NOT NULL,
    end REAL NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    partial INTEGER NOT NULL
);
CREATE INDEX gaps_server_end ON gaps (server_id, end);
CREATE TABLE rollups (
    resolution INTEGER NOT NULL,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    bucket REAL NOT NULL,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    {_COUNTERS_DDL},
    PRIMARY KEY (resolution, server_id, bucket, statement_id)
) WITHOUT ROWID;
CREATE TABLE rollup_buckets (
    resolution INTEGER NOT NULL,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    bucket REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (resolution, server_id, bucket)
) WITHOUT ROWID;
CREATE TABLE deploys (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    at REAL NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX deploys_at ON deploys (at);
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id),
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    fired_at REAL,
    resolved_at REAL,
    rules TEXT NOT NULL DEFAULT '',
    diagnosis TEXT
);
CREATE TABLE incident_events (
    incident_id TEXT NOT NULL REFERENCES incidents(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, at);
CREATE TABLE status (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""

# Version 2: plans per fingerprint (querywatch.advise), one row per distinct plan shape.
V2 = """
CREATE TABLE plans (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    fingerprint TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    plan TEXT NOT NULL,
    total_cost REAL NOT NULL,
    PRIMARY KEY (server_id, fingerprint, plan_hash)
) WITHOUT ROWID;
CREATE INDEX plans_fingerprint ON plans (fingerprint, last_seen);
"""

# pg_stat_kcache's per-statement usage (querywatch.store.kcache), per interval, when the monitored
# database has the extension: CPU times in integer microseconds, reads and writes in bytes.
KCACHE = """
CREATE TABLE kcache (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    user_us INTEGER NOT NULL DEFAULT 0,
    system_us INTEGER NOT NULL DEFAULT 0,
    reads_bytes INTEGER NOT NULL DEFAULT 0,
    writes_bytes INTEGER NOT NULL DEFAULT 0,
    minflts INTEGER NOT NULL DEFAULT 0,
    majflts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (interval_id, statement_id)
) WITHOUT ROWID;
"""

# Restart-safe collection (querywatch.store.snapshots): each server's last snapshot, so a restarted
# collector continues from it, and a mark on the interval that does (it spans the downtime).
# Entries keep the cumulative counters in querywatch.model units (REAL: integral values take the
# compact integer encoding on disk).
_SNAPSHOT_COUNTERS_DDL = ",\n    ".join(f"{c} REAL NOT NULL" for c in COUNTER_FIELDS)
SNAPSHOTS = f"""
ALTER TABLE intervals ADD COLUMN catch_up INTEGER NOT NULL DEFAULT 0;
CREATE TABLE snapshots (
    server_id INTEGER PRIMARY KEY REFERENCES servers(id),
    taken_at REAL NOT NULL,
    server_taken_at REAL,
    system_identifier INTEGER,
    server_started REAL NOT NULL,
    stats_reset REAL,
    dealloc INTEGER,
    {_DATABASE_DDL}
);
CREATE TABLE snapshot_entries (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    dbid INTEGER NOT NULL,
    userid INTEGER NOT NULL,
    queryid INTEGER NOT NULL,
    toplevel INTEGER NOT NULL,
    {_SNAPSHOT_COUNTERS_DDL},
    PRIMARY KEY (server_id, dbid, userid, queryid, toplevel)
) WITHOUT ROWID;
"""

# Long-run baselines (querywatch.longrun): pg_stat_statements' cumulative counters per fingerprint
# since its reset, read on first contact; diagnosis compares with them when no history precedes.
_LONG_RUN_COUNTERS_DDL = ",\n    ".join(f"{c} REAL NOT NULL" for c in COUNTER_FIELDS)
LONG_RUN = f"""
CREATE TABLE long_runs (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    taken_at REAL NOT NULL,
    since REAL NOT NULL,
    trusted INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (server_id, taken_at)
) WITHOUT ROWID;
CREATE TABLE long_run_statements (
    server_id INTEGER NOT NULL,
    taken_at REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    {_LONG_RUN_COUNTERS_DDL},
    PRIMARY KEY (server_id, taken_at, fingerprint),
    FOREIGN KEY (server_id, taken_at) REFERENCES long_runs (server_id, taken_at) ON DELETE CASCADE
) WITHOUT ROWID;
"""

# The alert outbox (querywatch.store.outbox): one row per notification and channel, written with
# the incident, delivered by the dispatcher until sent or too old; `key` makes a repeat harmless.
OUTBOX = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    incident TEXT NOT NULL,
    status TEXT NOT NULL,
    notification TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    done_at REAL,
    UNIQUE (channel, source, key)
);
CREATE INDEX outbox_pending ON outbox (channel, state, id);
"""

# Running time (querywatch.activity.RunningTime): per interval and fingerprint, the DB time of
# statements still running that pg_stat_statements does not hold yet, less what earlier intervals
# counted of statements that finished in this one.
RUNNING_TIME = """
ALTER TABLE activity ADD COLUMN running_ms REAL NOT NULL DEFAULT 0
"""

# Owner leases (querywatch.store.leases): the watcher that collects each server, renewed every
# interval; a lease not renewed within ttl_s can be taken over.
LEASES = """
CREATE TABLE leases (
    server_id INTEGER PRIMARY KEY REFERENCES servers(id),
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    token TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    ttl_s REAL NOT NULL
)
"""

# Server logs as a second source (querywatch.store.logevents): intervals and statements say where
# they come from; log_ranges keeps the spans of log loaded per server (a reload adds nothing);
# log_events holds lock waits, deadlocks, temp files, errors, checkpoints and autovacuum runs.
LOG_EVENTS = """
ALTER TABLE intervals ADD COLUMN source TEXT NOT NULL DEFAULT 'pgss';
ALTER TABLE statements ADD COLUMN source TEXT NOT NULL DEFAULT 'pgss';
CREATE TABLE log_ranges (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (server_id, first_at)
);
CREATE TABLE log_events (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    at REAL NOT NULL,
    pid INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ident TEXT NOT NULL,
    fingerprint TEXT,
    value REAL,
    database TEXT,
    user_name TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (server_id, at, pid, kind, ident)
);
CREATE INDEX log_events_kind ON log_events (server_id, kind, at)
"""

# `server_id` leads every key of a server's rows, so the same layout distributes by server (Citus
# `create_distributed_table(..., 'server_id')`). SQLite cannot change a primary key in place: the
# per-interval tables (deltas, activity, kcache), the rollups and the incident timelines are
# rebuilt in this migration's one transaction, every row copied with its server (a row whose parent
# is gone fails the NOT NULL, and the migration with it, rather than being dropped). Tables keyed by
# a rowid id get a unique (server_id, ...) index: intervals' is the parent key of its children's
# (server_id, interval_id) foreign keys, so retention's cascades stay indexed. PostgreSQL runs its
# own statements for this step (pgschema.SERVER_KEYS).
_KCACHE_DDL = ",\n    ".join(
    f"{c} INTEGER NOT NULL DEFAULT 0"
    for c in ("user_us", "system_us", "reads_bytes", "writes_bytes", "minflts", "majflts")
)
_ACTIVITY_DDL = ",\n    ".join(
    f"{c} INTEGER NOT NULL DEFAULT 0"
    for c in ("active", "lock_waits", "blocking", "blocked_sessions", "idle_in_transaction")
)


def _rebuild(table: str, create: str, columns: str, select: str) -> str:
    """Rebuild ``table`` as ``create`` says, every row copied by ``select``."""
    return f"""
CREATE TABLE {table}_keyed {create};
INSERT INTO {table}_keyed ({columns}) {select};
DROP TABLE {table};
ALTER TABLE {table}_keyed RENAME TO {table}
"""


_INTERVAL_SERVER = "(SELECT i.server_id FROM intervals i WHERE i.id = t.interval_id)"
_DELTA_COLUMNS = ", ".join(COUNTER_COLUMNS)
_KCACHE_COLUMNS = "user_us, system_us, reads_bytes, writes_bytes, minflts, majflts"
_ACTIVITY_COLUMNS = (
    "fingerprint, active, lock_waits, blocking, blocked_sessions, idle_in_transaction, running_ms"
)
SERVER_KEYS = ";".join(
    (
        "CREATE UNIQUE INDEX intervals_server_id ON intervals (server_id, id)",
        "DROP INDEX gaps_server_end",
        "CREATE UNIQUE INDEX gaps_server_end ON gaps (server_id, end, id)",
        "CREATE UNIQUE INDEX incidents_server_id ON incidents (server_id, id)",
        _rebuild(
            "deltas",
            f"""(
    server_id INTEGER NOT NULL,
    interval_id INTEGER NOT NULL,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    {_COUNTERS_DDL},
    PRIMARY KEY (server_id, interval_id, statement_id),
    FOREIGN KEY (server_id, interval_id) REFERENCES intervals (server_id, id) ON DELETE CASCADE
) WITHOUT ROWID""",
            f"server_id, interval_id, statement_id, {_DELTA_COLUMNS}",
            f"SELECT {_INTERVAL_SERVER}, interval_id, statement_id, {_DELTA_COLUMNS} FROM deltas t",
        ),
        _rebuild(
            "activity",
            f"""(
    server_id INTEGER NOT NULL,
    interval_id INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    {_ACTIVITY_DDL},
    running_ms REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (server_id, interval_id, fingerprint),
    FOREIGN KEY (server_id, interval_id) REFERENCES intervals (server_id, id) ON DELETE CASCADE
) WITHOUT ROWID""",
            f"server_id, interval_id, {_ACTIVITY_COLUMNS}",
            f"SELECT {_INTERVAL_SERVER}, interval_id, {_ACTIVITY_COLUMNS} FROM activity t",
        ),
        _rebuild(
            "kcache",
            f"""(
    server_id INTEGER NOT NULL,
    interval_id INTEGER NOT NULL,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    {_KCACHE_DDL},
    PRIMARY KEY (server_id, interval_id, statement_id),
    FOREIGN KEY (server_id, interval_id) REFERENCES intervals (server_id, id) ON DELETE CASCADE
) WITHOUT ROWID""",
            f"server_id, interval_id, statement_id, {_KCACHE_COLUMNS}",
            f"SELECT {_INTERVAL_SERVER}, interval_id, statement_id, {_KCACHE_COLUMNS} FROM kcache t",
        ),
        _rebuild(
            "rollups",
            f"""(
    server_id INTEGER NOT NULL REFERENCES servers(id),
    resolution INTEGER NOT NULL,
    bucket REAL NOT NULL,
    statement_id INTEGER NOT NULL REFERENCES statements(id),
    {_COUNTERS_DDL},
    PRIMARY KEY (server_id, resolution, bucket, statement_id)
) WITHOUT ROWID""",
            f"server_id, resolution, bucket, statement_id, {_DELTA_COLUMNS}",
            f"SELECT server_id, resolution, bucket, statement_id, {_DELTA_COLUMNS} FROM rollups",
        ),
        _rebuild(
            "rollup_buckets",
            """(
    server_id INTEGER NOT NULL REFERENCES servers(id),
    resolution INTEGER NOT NULL,
    bucket REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (server_id, resolution, bucket)
) WITHOUT ROWID""",
            "server_id, resolution, bucket, seconds",
            "SELECT server_id, resolution, bucket, seconds FROM rollup_buckets",
        ),
        _rebuild(
            "incident_events",
            """(
    server_id INTEGER NOT NULL,
    incident_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (server_id, incident_id, seq),
    FOREIGN KEY (server_id, incident_id) REFERENCES incidents (server_id, id)
) WITHOUT ROWID""",
            "server_id, incident_id, seq, at, state, detail",
            "SELECT (SELECT i.server_id FROM incidents i WHERE i.id = t.incident_id), incident_id, "
            "row_number() OVER (PARTITION BY incident_id ORDER BY at, rowid) - 1, at, state, "
            "detail FROM incident_events t",
        ),
    )
)

# Each server's DB time per rollup bucket (querywatch.store.bucket_time), for the fleet's
# sparklines: one row per server and bucket instead of one per statement; existing buckets filled.
BUCKET_DB_TIME = """
ALTER TABLE rollup_buckets ADD COLUMN exec_us INTEGER NOT NULL DEFAULT 0;
UPDATE rollup_buckets SET exec_us = coalesce((
    SELECT sum(r.exec_us) FROM rollups r
    JOIN statements s ON s.server_id = r.server_id AND s.id = r.statement_id
    WHERE r.server_id = rollup_buckets.server_id AND r.resolution = rollup_buckets.resolution
        AND r.bucket = rollup_buckets.bucket AND s.toplevel = 1 AND s.own = 0), 0)
"""

MIGRATIONS: tuple[str, ...] = (
    V1,
    V2,
    KCACHE,
    SNAPSHOTS,
    LONG_RUN,
    OUTBOX,
    RUNNING_TIME,
    LEASES,
    LOG_EVENTS,
    REPLICATION,
    TOPOLOGY_INCIDENTS,
    SERVER_KEYS,
    BUCKET_DB_TIME,
)
LATEST = len(MIGRATIONS)
