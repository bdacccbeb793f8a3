"""Pure: the preflight verdicts of `querywatch check`, each with the exact fix."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from .source.capabilities import Capabilities
from .source.kcache import PACKAGE, KcacheStatus

OLDEST_SUPPORTED = 13
FULL_AT = 0.9  # warn when pg_stat_statements holds this share of pg_stat_statements.max


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    name: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "level": self.level.value,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class CpuCores:
    """The server's cores for the CPU rule: the ``[detect] cpu_cores`` setting, and what
    querywatch.source.cores could read (``found`` cores, ``how``), when it could."""

    configured: int | None
    found: int | None = None
    how: str = ""


@dataclass(frozen=True)
class Usage:
    """pg_stat_statements' fill level, read only when it is usable."""

    entries: int
    dealloc: int | None


def findings(
    caps: Capabilities,
    usage: Usage | None,
    kcache: KcacheStatus | None = None,
    cpu: CpuCores | None = None,
) -> list[Finding]:
    return [
        _version(caps),
        _preload(caps),
        _extension(caps),
        _privileges(caps),
        _capacity(caps, usage),
        _tracking(caps),
        _hypopg(caps),
        *([_kcache(caps, kcache)] if kcache is not None else []),
        *([_cpu(caps, cpu)] if cpu is not None else []),
    ]


def failed(results: list[Finding]) -> bool:
    return any(f.level is Level.FAIL for f in results)


def unreachable(error: str) -> Finding:
    """One server of a fleet that cannot be read: a failure, the others are checked on."""
    return Finding(
        "connection",
        Level.FAIL,
        error,
        "check its dsn in querywatch.toml, that the server runs, and that it accepts "
        "connections from this host (pg_hba.conf)",
    )


def server_title(name: str, labels: Mapping[str, str], results: list[Finding]) -> str:
    """The line above one server's findings in a fleet's ``check``.

    >>> server_title("db1", {"env": "prod"}, [Finding("x", Level.OK, "")])
    '== db1 [env=prod]: ok'
    """
    tags = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    warned = any(f.level is Level.WARN for f in results)
    worst = "FAIL" if failed(results) else "warn" if warned else "ok"
    return f"== {name}" + (f" [{tags}]" if tags else "") + f": {worst}"


def server_doc(name: str, labels: Mapping[str, str], results: list[Finding]) -> dict[str, object]:
    """One server of a fleet's ``check --format json``."""
    return {
        "server": name,
        "labels": dict(labels),
        "ok": not failed(results),
        "checks": [f.as_dict() for f in results],
    }


def _version(caps: Capabilities) -> Finding:
    if caps.major < OLDEST_SUPPORTED:
        return Finding(
            "server version",
            Level.FAIL,
            f"PostgreSQL {caps.version} is older than {OLDEST_SUPPORTED}",
            "upgrade to PostgreSQL 13 or newer",
        )
    return Finding("server version", Level.OK, f"PostgreSQL {caps.version}")


def _preload(caps: Capabilities) -> Finding:
    if caps.preload is None:
        state = "is loaded" if caps.preloaded else "does not look loaded"
        return Finding(
            "preload",
            Level.OK if caps.preloaded else Level.WARN,
            f"shared_preload_libraries is not readable by {caps.role!r}; pg_stat_statements {state}",
        )
    if caps.preloaded:
        return Finding("preload", Level.OK, "pg_stat_statements is in shared_preload_libraries")
    libraries = ", ".join([*(caps.preload or ()), "pg_stat_statements"])
    return Finding(
        "preload",
        Level.FAIL,
        "pg_stat_statements is not in shared_preload_libraries",
        f"add to postgresql.conf: shared_preload_libraries = '{libraries}' "
        "then restart PostgreSQL (a restart is needed; a reload is not enough)",
    )


def _extension(caps: Capabilities) -> Finding:
    if caps.pgss_version:
        return Finding(
            "extension",
            Level.OK,
            f"pg_stat_statements {caps.pgss_version} created in schema {caps.pgss_schema}",
        )
    return Finding(
        "extension",
        Level.FAIL,
        f"pg_stat_statements is not created in database {caps.database!r}",
        f"connect to {caps.database!r} as a superuser and run: CREATE EXTENSION pg_stat_statements;",
    )


def _privileges(caps: Capabilities) -> Finding:
    if caps.superuser:
        return Finding("privileges", Level.OK, f"role {caps.role!r} is a superuser")
    if caps.pg_monitor:
        return Finding("privileges", Level.OK, f"role {caps.role!r} has pg_monitor")
    return Finding(
        "privileges",
        Level.FAIL,
        f"role {caps.role!r} lacks pg_monitor: other roles' statements show no text or queryid",
        f"run as a superuser: GRANT pg_monitor TO {_ident(caps.role)};",
    )


def _capacity(caps: Capabilities, usage: Usage | None) -> Finding:
    if usage is None or caps.pgss_max is None:
        return Finding("capacity", Level.WARN, "pg_stat_statements could not be read")
    dealloc = usage.dealloc or 0
    message = (
        f"{usage.entries} of pg_stat_statements.max={caps.pgss_max} entries, dealloc={dealloc}"
    )
    if dealloc > 0 or usage.entries >= FULL_AT * caps.pgss_max:
        target = max(caps.pgss_max * 2, 10000)
        return Finding(
            "capacity",
            Level.WARN,
            message + ": entries are being evicted, so statistics are lost between snapshots",
            f"set pg_stat_statements.max = {target} in postgresql.conf and restart PostgreSQL",
        )
    return Finding("capacity", Level.OK, message)


def _tracking(caps: Capabilities) -> Finding:
    if caps.pgss_track is None:
        return Finding("tracking", Level.WARN, "unknown until pg_stat_statements is loaded")
    if caps.pgss_track == "none":
        return Finding(
            "tracking",
            Level.FAIL,
            "pg_stat_statements.track is 'none': nothing is recorded",
            "set pg_stat_statements.track = 'top' in postgresql.conf and reload",
        )
    if caps.compute_query_id == "off":
        return Finding(
            "tracking",
            Level.WARN,
            "compute_query_id is off: activity samples cannot be joined to statements",
            "set compute_query_id = 'auto' in postgresql.conf and reload",
        )
    return Finding(
        "tracking", Level.OK, f"track={caps.pgss_track}, compute_query_id={caps.compute_query_id}"
    )


def _hypopg(caps: Capabilities) -> Finding:
    if caps.hypopg_version:
        return Finding(
            "hypopg", Level.OK, f"hypopg {caps.hypopg_version}: index advice is verified"
        )
    if caps.hypopg_available:
        return Finding(
            "hypopg",
            Level.WARN,
            "hypopg is installed but not created: index advice stays unverified",
            "run: CREATE EXTENSION hypopg;",
        )
    return Finding(
        "hypopg",
        Level.WARN,
        "hypopg is not installed: index advice stays unverified",
        "install your distribution's hypopg package (Debian: postgresql-15-hypopg), then "
        "CREATE EXTENSION hypopg;",
    )


def _kcache(caps: Capabilities, status: KcacheStatus) -> Finding:
    """pg_stat_kcache is optional: without it CPU time is inferred from execution time."""
    if status.usable:
        return Finding(
            "pg_stat_kcache",
            Level.OK,
            f"pg_stat_kcache {status.version}: CPU time, reads, writes and page faults are "
            "recorded per statement",
        )
    libraries = ",".join(
        dict.fromkeys([*(caps.preload or ()), "pg_stat_statements", "pg_stat_kcache"])
    )
    preload = (
        f"add to postgresql.conf: shared_preload_libraries = '{libraries}' and restart PostgreSQL"
    )
    create = f"in database {caps.database!r} run: CREATE EXTENSION pg_stat_kcache;"
    why = "per-statement CPU time is inferred from execution time"
    if status.version is not None:  # created but not preloaded
        return Finding(
            "pg_stat_kcache",
            Level.WARN,
            f"pg_stat_kcache is created but not in shared_preload_libraries: {why}",
            preload,
        )
    if status.preloaded:
        return Finding(
            "pg_stat_kcache",
            Level.WARN,
            f"pg_stat_kcache is preloaded but not created in {caps.database!r}: {why}",
            create,
        )
    steps = f"{preload}, then {create}"
    if not status.available:
        package = PACKAGE.format(major=caps.major)
        return Finding(
            "pg_stat_kcache",
            Level.WARN,
            f"pg_stat_kcache is not installed: {why}",
            f"install it (Debian/Ubuntu: apt-get install {package}), {steps}",
        )
    return Finding(
        "pg_stat_kcache", Level.WARN, f"pg_stat_kcache is installed but not enabled: {why}", steps
    )


def _cpu(caps: Capabilities, cpu: CpuCores) -> Finding:
    """The CPU saturation rule needs the server's cores: read, or set."""
    if cpu.configured == 0:
        return Finding("cpu cores", Level.OK, "the CPU saturation rule is off (cpu_cores = 0)")
    if cpu.configured is not None:
        return Finding("cpu cores", Level.OK, f"{cpu.configured} CPU cores (set in [detect])")
    if cpu.found is not None:
        return Finding("cpu cores", Level.OK, f"{cpu.found} CPU cores, read from {cpu.how}")
    return Finding(
        "cpu cores",
        Level.WARN,
        f"the server's CPU cores cannot be read by {caps.role!r} (no pg_read_file on "
        "/proc/cpuinfo, and the server is not on this machine): the CPU saturation rule is off",
        "set the server's core count in querywatch.toml: [detect] cpu_cores = N "
        "(or pass --cpu-cores N to watch)",
    )


def _ident(name: str) -> str:
    if name.isidentifier() and name == name.lower():
        return name
    return '"' + name.replace('"', '""') + '"'
