"""What a server can do for querywatch, read once per connection, and the `check` verdicts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..model import Diagnosis
from . import queries


@dataclass(frozen=True)
class Capabilities:
    version_num: int
    version: str
    preload: tuple[str, ...] | None  # None: not readable by this role
    role: str
    database: str
    superuser: bool
    pg_monitor: bool
    pgss_version: str | None
    pgss_schema: str | None
    hypopg_version: str | None
    hypopg_available: bool
    pgss_max: int | None
    pgss_track: str | None
    compute_query_id: str | None
    pg_read_all_stats: bool = False

    @property
    def sees_all_statements(self) -> bool:
        """A superuser or a member of pg_read_all_stats (pg_monitor holds it) sees every role's
        statements; any other role sees only its own in pg_stat_statements."""
        return self.superuser or self.pg_monitor or self.pg_read_all_stats

    def visibility_note(self) -> str:
        """What a role that cannot see every statement misses, in words; "" when it sees all."""
        if self.sees_all_statements:
            return ""
        return f"only the statements of role {self.role!r} are visible"

    def visibility_fix(self) -> str:
        """The statement a superuser runs so the role sees every statement."""
        role = self.role
        if not (role.isidentifier() and role == role.lower()):
            role = '"' + role.replace('"', '""') + '"'
        return f"GRANT pg_monitor TO {role};"

    @property
    def major(self) -> int:
        return self.version_num // 10000

    @property
    def preloaded(self) -> bool:
        """Preloaded, or unknown (the role cannot read the setting) but the module is loaded."""
        if self.preload is None:
            return self.pgss_max is not None
        return "pg_stat_statements" in self.preload

    @property
    def has_info(self) -> bool:
        return self.major >= 14

    def statements_query(self) -> str:
        if self.major >= 17:
            return queries.STATEMENTS_17
        if self.major >= 14:
            return queries.STATEMENTS_14
        return queries.STATEMENTS_13

    def activity_query(self) -> str:
        return queries.ACTIVITY if self.major >= 14 else queries.ACTIVITY_13


def with_note(found: Diagnosis, note: str) -> Diagnosis:
    """``found`` saying ``note`` (e.g. the role's visibility) in its summary and its note."""
    if not note or found.note:
        return found
    return replace(found, summary=f"{found.summary} (note: {note})", note=note)


def from_row(row: dict[str, Any]) -> Capabilities:
    raw = row["preload"]
    preload = None if raw is None else tuple(p.strip() for p in str(raw).split(",") if p.strip())
    pgss_max = row["pgss_max"]
    return Capabilities(
        version_num=int(row["version_num"]),
        version=str(row["version"]),
        preload=preload,
        role=str(row["role"]),
        database=str(row["database"]),
        superuser=bool(row["superuser"]),
        pg_monitor=bool(row["pg_monitor"]),
        pgss_version=row["pgss_version"],
        pgss_schema=row["pgss_schema"],
        hypopg_version=row["hypopg_version"],
        hypopg_available=bool(row["hypopg_available"]),
        pgss_max=int(pgss_max) if pgss_max else None,
        pgss_track=row["pgss_track"],
        compute_query_id=row["compute_query_id"],
        pg_read_all_stats=bool(row.get("pg_read_all_stats")),
    )
