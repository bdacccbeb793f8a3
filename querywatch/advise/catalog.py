"""Catalog reads for the advisor: tables, indexes and column statistics (SQL beside its reader).

Every function takes a cursor opened by :meth:`Session.readonly` (dict rows, read-only, timeouts).
Table names are resolved with ``to_regclass`` (search_path applies); unknown names are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

from ..source.fetch import records
from .records import IndexFact, TableFact

_TABLE_COLUMNS = """
    n.nspname AS schema, c.relname AS table, c.reltuples::float8 AS rows, c.relpages AS pages,
    ARRAY(SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum) AS columns,
    coalesce(s.n_live_tup, 0) AS live_rows,
    coalesce(s.n_mod_since_analyze, 0) AS modified_since_analyze,
    (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL) AS analyzed,
    coalesce(s.seq_scan, 0) AS seq_scans, coalesce(s.idx_scan, 0) AS idx_scans,
    coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) AS writes,
    coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0) AS rows_read
"""
TABLES = f"""
SELECT DISTINCT ON (c.oid) {_TABLE_COLUMNS}
FROM unnest(%(names)s::text[]) AS wanted(name)
JOIN pg_class c ON c.oid = to_regclass(wanted.name)
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
"""
ALL_TABLES = f"""
SELECT {_TABLE_COLUMNS}
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""
INDEXES = """
SELECT n.nspname AS schema, t.relname AS table, i.relname AS name, am.amname AS method,
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(1, x.indnkeyatts) AS k ORDER BY k) AS keys,
       x.indisvalid AS valid, x.indisunique AS unique, x.indisprimary AS primary,
       x.indpred IS NOT NULL AS partial,
       coalesce(pg_get_expr(x.indpred, x.indrelid, true), '') AS predicate,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) AS constraint,
       coalesce(s.idx_scan, 0) AS scans, pg_relation_size(x.indexrelid) AS bytes
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = x.indexrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND (%(names)s::text[] IS NULL
       OR t.oid = ANY(ARRAY(SELECT to_regclass(w) FROM unnest(%(names)s::text[]) AS w)))
ORDER BY 1, 2, 3
"""
DISTINCT = """
SELECT s.tablename AS table, s.attname AS column, s.n_distinct::float8 AS n_distinct,
       c.reltuples::float8 AS rows
FROM unnest(%(names)s::text[]) AS wanted(name)
JOIN pg_class c ON c.oid = to_regclass(wanted.name)
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
"""


def tables(cur: psycopg.Cursor[Any], names: Sequence[str]) -> list[TableFact]:
    if not names:
        return []
    cur.execute(TABLES, {"names": list(names)})
    return records(TableFact, cur.fetchall())


def all_tables(cur: psycopg.Cursor[Any]) -> list[TableFact]:
    cur.execute(ALL_TABLES)
    return records(TableFact, cur.fetchall())


def indexes(cur: psycopg.Cursor[Any], names: Sequence[str] | None = None) -> list[IndexFact]:
    """Existing indexes of the named tables (all user tables when None)."""
    cur.execute(INDEXES, {"names": list(names) if names is not None else None})
    return records(IndexFact, cur.fetchall())


def distinct_values(cur: psycopg.Cursor[Any], names: Sequence[str]) -> dict[tuple[str, str], float]:
    """(table, column) -> estimated number of distinct values, from pg_stats."""
    if not names:
        return {}
    cur.execute(DISTINCT, {"names": list(names)})
    found: dict[tuple[str, str], float] = {}
    for r in cur.fetchall():
        n = float(r["n_distinct"])
        found[(r["table"], r["column"])] = -n * max(float(r["rows"]), 0.0) if n < 0 else n
    return found


# -- views and partitions (statements through a view, partitioned tables) ------------------------
VIEWS = """
SELECT wanted.name, pg_get_viewdef(c.oid, true) AS definition
FROM unnest(%(names)s::text[]) AS wanted(name)
JOIN pg_class c ON c.oid = to_regclass(wanted.name)
WHERE c.relkind = 'v'
"""
LEAF_PARTITIONS = """
SELECT p.relname AS parent, n.nspname AS schema, c.relname AS partition
FROM unnest(%(names)s::text[]) AS wanted(name)
JOIN pg_class p ON p.oid = to_regclass(wanted.name) AND p.relkind = 'p'
CROSS JOIN LATERAL pg_partition_tree(p.oid) AS t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.isleaf
ORDER BY 1, 3
"""
MAX_VIEW_DEPTH = 8


def view_definitions(
    cur: psycopg.Cursor[Any], names: Sequence[str], read: Callable[[Mapping[str, str]], list[str]]
) -> dict[str, str]:
    """Name -> definition of the views among ``names`` and of the views those read, in turn.

    ``read`` gives the relation names a batch of definitions reads (parsing is not done here).
    """
    found: dict[str, str] = {}
    asked = set(names)
    wanted = list(names)
    for _ in range(MAX_VIEW_DEPTH):
        if not wanted:
            break
        cur.execute(VIEWS, {"names": wanted})
        batch = {str(r["name"]): str(r["definition"]) for r in cur.fetchall()}
        found.update(batch)
        wanted = [n for n in read(batch) if n not in asked]
        asked.update(wanted)
    return found


def leaf_partitions(
    cur: psycopg.Cursor[Any], names: Sequence[str]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Partitioned table name -> its leaf partitions as (schema, name), for those among ``names``."""
    if not names:
        return {}
    cur.execute(LEAF_PARTITIONS, {"names": list(names)})
    found: dict[str, list[tuple[str, str]]] = {}
    for r in cur.fetchall():
        found.setdefault(str(r["parent"]), []).append((str(r["schema"]), str(r["partition"])))
    return {parent: tuple(leaves) for parent, leaves in found.items()}
