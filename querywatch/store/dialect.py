"""Portable store SQL (SQLite's dialect, as the concept modules write it) -> PostgreSQL."""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import StoreError

_CAST_INT = re.compile(r"CAST\(((?:[^()]|\((?:[^()]|\([^()]*\))*\))*?) AS INTEGER\)")
_END = re.compile(r'(?<![\w"])end(?![\w"])')
_OR_IGNORE = re.compile(r"INSERT OR IGNORE INTO")


@lru_cache(maxsize=2048)
def translate(query: str, bound: bool = True) -> str:
    """SQLite-flavoured portable SQL -> PostgreSQL (``bound``: parameters follow, so ``?`` and
    ``%`` become psycopg's ``%s`` and ``%%``).

    >>> translate("SELECT CAST(start / ? AS INTEGER), max(end) FROM intervals WHERE end > ?")
    'SELECT trunc(start / %s)::bigint, max("end") FROM intervals WHERE "end" > %s'
    >>> translate("SELECT CASE WHEN x = 1 THEN i.end - i.start ELSE 0 END FROM t", bound=False)
    'SELECT CASE WHEN x = 1 THEN i."end" - i.start ELSE 0 END FROM t'
    """
    if "INSERT OR REPLACE" in query:
        raise StoreError("store: INSERT OR REPLACE is not portable (use ON CONFLICT ... DO UPDATE)")
    out = _CAST_INT.sub(r"trunc(\1)::bigint", query)
    out = _END.sub('"end"', out)
    if _OR_IGNORE.search(out):
        out = _OR_IGNORE.sub("INSERT INTO", out).rstrip() + " ON CONFLICT DO NOTHING"
    if bound:
        out = out.replace("%", "%%").replace("?", "%s")
    return out
