"""The newest PostgreSQL minor release of each major version, as of a date (shipped data).

Source: the PostgreSQL project's release announcements, cross-checked with Debian's changelog of
postgresql-15 (15.16 2026-02-12, 15.17 2026-02-26 out of cycle, 15.18 2026-05-14). Update the table
and ``AS_OF`` with each quarterly release; a server newer than the table says the table is old.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

AS_OF = dt.date(2026, 5, 14)


@dataclass(frozen=True, slots=True)
class Release:
    major: int
    newest_minor: int
    released: dt.date
    end_of_life: dt.date


RELEASES: dict[int, Release] = {
    r.major: r
    for r in (
        Release(18, 4, dt.date(2026, 5, 14), dt.date(2030, 11, 14)),
        Release(17, 10, dt.date(2026, 5, 14), dt.date(2029, 11, 8)),
        Release(16, 14, dt.date(2026, 5, 14), dt.date(2028, 11, 9)),
        Release(15, 18, dt.date(2026, 5, 14), dt.date(2027, 11, 11)),
        Release(14, 23, dt.date(2026, 5, 14), dt.date(2026, 11, 12)),
        Release(13, 23, dt.date(2025, 11, 13), dt.date(2025, 11, 13)),
        Release(12, 22, dt.date(2024, 11, 21), dt.date(2024, 11, 21)),
    )
}


def split(version_num: int) -> tuple[int, int]:
    """server_version_num (150018) -> (15, 18)."""
    return version_num // 10000, version_num % 10000
