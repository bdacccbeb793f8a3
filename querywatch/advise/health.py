"""Pure: health checks over catalog facts: unused, duplicate and invalid indexes, tables with
missing or stale statistics, and the server version against the dated release table.

>>> idx = IndexFact("public", "t", "t_a_idx", ("a",))
>>> [f.check for f in duplicate_indexes([idx, IndexFact("public", "t", "t_a_b_idx", ("a", "b"))])]
['duplicate_index']
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pglast.stream import maybe_double_quote_name as quote_ident

from . import releases
from .candidates import normalize_key
from .records import HealthFinding, IndexFact, Severity, TableFact

STALE_FRACTION = 0.2  # rows modified since the last ANALYZE, as a share of live rows
STALE_MIN_ROWS = 1_000


def _qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return str(size)


def unused_indexes(indexes: Iterable[IndexFact]) -> list[HealthFinding]:
    """Valid indexes never scanned since statistics were reset (constraints excluded)."""
    return [
        HealthFinding(
            "unused_index",
            Severity.INFO,
            _qualified(i.schema, i.name),
            f"index {i.name} on {i.table} ({_size(i.bytes)}) has not been scanned since the "
            "statistics were reset; it still costs every write",
            f"DROP INDEX CONCURRENTLY {_qualified(i.schema, i.name)}; "
            "(check replicas first: their scans are not counted here)",
        )
        for i in indexes
        if i.valid and i.scans == 0 and not (i.unique or i.primary or i.constraint)
    ]


def _keys(index: IndexFact) -> tuple[str, ...]:
    return tuple(normalize_key(k) for k in index.keys)


def _redundant(index: IndexFact, other: IndexFact) -> bool:
    """``index`` adds nothing ``other`` does not give (same or longer keys, same method)."""
    if index is other or index.method != other.method or index.partial or other.partial:
        return False
    mine, theirs = _keys(index), _keys(other)
    if index.unique or index.primary or index.constraint:
        return False
    if mine == theirs:  # exact twins: keep the constraint one, or the first by name
        return other.unique or other.primary or other.constraint or other.name < index.name
    return theirs[: len(mine)] == mine


def duplicate_indexes(indexes: Sequence[IndexFact]) -> list[HealthFinding]:
    """Indexes whose keys equal or prefix another index's keys on the same table."""
    by_table: dict[tuple[str, str], list[IndexFact]] = defaultdict(list)
    for i in indexes:
        if i.valid:
            by_table[(i.schema, i.table)].append(i)
    found = []
    for group in by_table.values():
        for index in group:
            other = next((o for o in group if _redundant(index, o)), None)
            if other is not None:
                found.append(
                    HealthFinding(
                        "duplicate_index",
                        Severity.WARN,
                        _qualified(index.schema, index.name),
                        f"index {index.name} ({', '.join(index.keys)}) is covered by "
                        f"{other.name} ({', '.join(other.keys)})",
                        f"DROP INDEX CONCURRENTLY {_qualified(index.schema, index.name)};",
                    )
                )
    return found


def invalid_indexes(indexes: Iterable[IndexFact]) -> list[HealthFinding]:
    """Indexes left invalid by a failed CREATE INDEX CONCURRENTLY: written to, never read."""
    return [
        HealthFinding(
            "invalid_index",
            Severity.HIGH,
            _qualified(i.schema, i.name),
            f"index {i.name} on {i.table} is invalid: writes maintain it, queries never use it",
            f"REINDEX INDEX CONCURRENTLY {_qualified(i.schema, i.name)}; "
            "(or DROP INDEX CONCURRENTLY and create it again)",
        )
        for i in indexes
        if not i.valid
    ]


def table_statistics(tables: Iterable[TableFact]) -> list[HealthFinding]:
    """Tables never analyzed, or changed a lot since their last ANALYZE."""
    found = []
    for t in tables:
        name = _qualified(t.schema, t.table)
        if not t.analyzed and (t.live_rows > 0 or t.rows > 0):
            found.append(
                HealthFinding(
                    "missing_statistics",
                    Severity.WARN,
                    name,
                    f"{name} ({t.live_rows:,} live rows) has never been analyzed: the planner "
                    "guesses its row counts",
                    f"ANALYZE {name};",
                )
            )
        elif t.modified_since_analyze > max(STALE_MIN_ROWS, STALE_FRACTION * t.live_rows):
            found.append(
                HealthFinding(
                    "stale_statistics",
                    Severity.WARN,
                    name,
                    f"{name}: {t.modified_since_analyze:,} rows changed since the last ANALYZE "
                    f"({t.modified_since_analyze / max(t.live_rows, 1):.0%} of {t.live_rows:,})",
                    f"ANALYZE {name}; (and check autovacuum_analyze_scale_factor)",
                )
            )
    return found


def server_version(version_num: int, today: dt.date) -> list[HealthFinding]:
    """The server's minor release against the dated table of newest minors."""
    major, minor = releases.split(version_num)
    known = releases.RELEASES.get(major)
    subject = f"PostgreSQL {major}.{minor}"
    if known is None:
        if major > max(releases.RELEASES):
            return [
                _version(
                    Severity.INFO,
                    subject,
                    f"{subject} is newer than the release "
                    f"table (as of {releases.AS_OF}); nothing to compare",
                    "",
                )
            ]
        return [
            _version(
                Severity.HIGH,
                subject,
                f"{subject} is out of support",
                "upgrade to a supported major version",
            )
        ]
    found = []
    if known.end_of_life <= today:
        found.append(
            _version(
                Severity.HIGH,
                subject,
                f"PostgreSQL {major} reached end of life on {known.end_of_life}",
                "upgrade to a supported major version",
            )
        )
    if minor < known.newest_minor:
        behind = known.newest_minor - minor
        found.append(
            _version(
                Severity.WARN,
                subject,
                f"{subject} is {behind} minor releases "
                f"behind {major}.{known.newest_minor} ({known.released}, table as of "
                f"{releases.AS_OF})",
                f"update to {major}.{known.newest_minor} "
                "(minor releases fix bugs and security issues, no dump/restore)",
            )
        )
    elif minor > known.newest_minor:
        found.append(
            _version(
                Severity.INFO,
                subject,
                f"{subject} is newer than the release table "
                f"({major}.{known.newest_minor} as of {releases.AS_OF})",
                "",
            )
        )
    return found


def _version(severity: Severity, subject: str, message: str, fix: str) -> HealthFinding:
    return HealthFinding("server_version", severity, subject, message, fix)


def check(
    indexes: Sequence[IndexFact], tables: Sequence[TableFact], version_num: int, today: dt.date
) -> list[HealthFinding]:
    """Every health check, the most severe first."""
    found = [
        *invalid_indexes(indexes),
        *duplicate_indexes(indexes),
        *table_statistics(tables),
        *server_version(version_num, today),
        *unused_indexes(indexes),
    ]
    order = {Severity.HIGH: 0, Severity.WARN: 1, Severity.INFO: 2}
    return sorted(found, key=lambda f: order[f.severity])
