"""How many CPU cores the monitored server has, for the CPU-saturation rule.

Read, in this order, from what is most likely to be the server's own truth:

1. the server's files through ``pg_read_file`` (a superuser, a member of
   ``pg_read_server_files``, or a role granted EXECUTE on it): ``/proc/cpuinfo`` counts the
   processors, and a cgroup v2 quota (``/sys/fs/cgroup/cpu.max``, e.g. ``200000 100000`` = 2
   cores) lowers that count when the server runs in a limited container;
2. a server on this machine (the DSN is a Unix socket, ``localhost``, ``127.0.0.1`` or ``::1``):
   the cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count()``), with
   the same cgroup quota read locally;
3. otherwise none: the ``[detect] cpu_cores`` setting (``--cpu-cores``) tells it, and
   ``querywatch check`` warns until it does.

>>> cores_from_files("processor\\t: 0\\nmodel name\\t: x\\n\\nprocessor\\t: 1\\n", "max 100000")
2
>>> cores_from_files("processor : 0\\nprocessor : 1\\nprocessor : 2\\n", "150000 100000")
2
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from ..errors import SourceError
from .queries import MARKER

if TYPE_CHECKING:
    from .postgres import PostgresSource

CPUINFO = "/proc/cpuinfo"
CPU_MAX = "/sys/fs/cgroup/cpu.max"
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})

READ_FILE = MARKER + "SELECT pg_read_file(%(path)s, 0, 1048576, true) AS content"
"""A server file's start, NULL when it does not exist; an error without the privilege."""


@dataclass(frozen=True)
class Cores:
    """A core count and where it was read."""

    count: int
    how: str  # "server /proc/cpuinfo", "local server: os.sched_getaffinity", "setting", ...


def cores_from_files(cpuinfo: str | None, cpu_max: str | None) -> int | None:
    """Processors listed in ``cpuinfo``, capped by a cgroup v2 ``cpu.max`` quota."""
    count = sum(1 for line in (cpuinfo or "").splitlines() if line.startswith("processor"))
    quota = _quota(cpu_max)
    if count and quota:
        return min(count, quota)
    return count or quota


def _quota(cpu_max: str | None) -> int | None:
    parts = (cpu_max or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return max(1, math.floor(quota / period)) if quota > 0 and period > 0 else None


def is_local(dsn: str) -> bool:
    """True when the DSN reaches a server on this machine (a socket or a loopback address)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return False
    host = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST", ""))
    return all(h.startswith("/") or h in LOCAL_HOSTS for h in host.split(","))


def local_cores(cpu_max: Path = Path(CPU_MAX)) -> int:
    """The cores this process may use, capped by this machine's cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota = _quota(cpu_max.read_text())
    except OSError:
        quota = None
    return min(count, quota) if quota else count


def server_cores(source: PostgresSource) -> Cores | None:
    """The server's core count (see the module docstring), None when it cannot be known."""
    found = _read_server(source)
    if found is not None:
        return Cores(found, f"the server's {CPUINFO} (pg_read_file)")
    if is_local(source.dsn):
        return Cores(local_cores(), "a local server: the cores of this machine")
    return None


def _read_server(source: PostgresSource) -> int | None:
    try:
        cpuinfo = _read(source, CPUINFO)
        cpu_max = _read(source, CPU_MAX) if cpuinfo else None
    except SourceError:  # no privilege to read server files (the usual case): say so elsewhere
        return None
    return cores_from_files(cpuinfo, cpu_max)


def _read(source: PostgresSource, path: str) -> str | None:
    rows = source.fetch(READ_FILE, {"path": path})
    value = rows[0]["content"] if rows else None
    return str(value) if value is not None else None
