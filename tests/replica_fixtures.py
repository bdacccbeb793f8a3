"""A streaming replica of a test primary, made with pg_basebackup (FACTS.md: a few seconds).

``start_replica(primary, "db-2")`` copies the running primary into a new throwaway cluster with
``pg_basebackup -R -X stream`` (standby.signal and primary_conninfo written), points the copied
postgresql.conf at the replica's own settings file (its port) and starts it; ``cluster_name``
is the replica's name, so the primary's pg_stat_replication lists it under that
application_name. initdb's pg_hba.conf already lets 127.0.0.1 replicate with trust.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import psycopg

from querywatch.errors import LocalPostgresError
from querywatch.localpg import LocalPostgres

WAIT_S = 30.0


def start_replica(
    primary: LocalPostgres, name: str, settings: Mapping[str, str] | None = None
) -> LocalPostgres:
    """A running hot standby of ``primary`` streaming from it, named ``name``."""
    replica = LocalPostgres(
        {"cluster_name": name, **(settings or {})}, preload=primary.preload, bindir=primary.bindir
    )
    argv = [str(primary.bin("pg_basebackup")), "-h", "127.0.0.1", "-p", str(primary.port)]
    argv += ["-U", "postgres", "-D", str(replica.data_dir), "-R", "-X", "stream", "--no-sync"]
    done = replica.run_as_owner(argv)
    if done.returncode != 0:
        replica.cleanup()
        raise LocalPostgresError(f"pg_basebackup failed: {done.stderr.strip()}")
    conf = replica.data_dir / "postgresql.conf"
    text = conf.read_text().replace(str(primary.conf_file), str(replica.conf_file))
    conf.write_text(text)
    replica.start()
    wait_streaming(primary, name)
    return replica


def wait_streaming(primary: LocalPostgres, name: str, timeout: float = WAIT_S) -> None:
    """Until the primary lists ``name`` as streaming."""
    deadline = time.monotonic() + timeout
    query = "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'"
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        while conn.execute(query, (name,)).fetchone() is None:
            if time.monotonic() > deadline:
                raise LocalPostgresError(f"replica {name} not streaming after {timeout:g} s")
            time.sleep(0.1)


def promote(replica: LocalPostgres) -> None:
    """``pg_ctl promote`` on the replica, waiting until it is a primary."""
    argv = [str(replica.bin("pg_ctl")), "promote", "-w", "-D", str(replica.data_dir)]
    done = replica.run_as_owner(argv)
    if done.returncode != 0:
        raise LocalPostgresError(f"pg_ctl promote failed: {done.stderr.strip() or done.stdout}")
