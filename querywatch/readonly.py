"""Pure: whether a statement could run on a hot standby, read with pglast (libpg_query).

Read-only is one plain ``SELECT`` (or ``VALUES``/``TABLE``) per statement, with no
``FOR UPDATE``/``SHARE`` anywhere, no ``SELECT INTO``, no data-modifying CTE (or any INSERT,
UPDATE, DELETE or MERGE in the tree), and no function call but built-ins known to only read:
``nextval()``, advisory locks, ``txid_current()`` and the like write or lock on the primary, and a
function querywatch does not know may be one of yours that writes. Text that cannot be parsed
(truncated by ``track_activity_query_size``, another dialect) is not read-only.

>>> read_only("SELECT id FROM orders WHERE customer_id = $1").ok
True
>>> read_only("SELECT id FROM orders WHERE id = $1 FOR UPDATE").reason
'it locks rows (FOR UPDATE)'
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pglast import parser as _pg


@dataclass(frozen=True)
class ReadOnly:
    """Whether a statement could run on a hot standby, and why (or why not)."""

    ok: bool
    reason: str


WRITING_STATEMENTS = frozenset(
    {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
)  # inside a CTE or anywhere in the tree
# built-ins that write, take locks the primary would not see, or need a transaction id
WRITING_FUNCTIONS = frozenset(
    {
        "nextval", "setval", "currval", "lastval",
        "txid_current", "pg_current_xact_id", "pg_notify",
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_advisory_unlock",
        "pg_advisory_unlock_all", "pg_advisory_unlock_shared",
        "lo_create", "lo_creat", "lo_import", "lo_unlink", "lo_put", "lo_from_bytea", "lowrite",
        "lo_truncate", "lo_open",
        "pg_stat_statements_reset", "pg_stat_reset", "pg_switch_wal",
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_drop_replication_slot", "pg_terminate_backend", "pg_cancel_backend",
        "dblink_exec", "set_config",
    }
)  # fmt: skip
# built-ins known to read only; a function not here (nor above) may be one of your own that writes
READING_FUNCTIONS = frozenset(
    {
        # aggregates and window functions
        "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg", "jsonb_agg",
        "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and",
        "bit_or", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
        "percentile_cont", "percentile_disc", "mode", "corr", "covar_pop", "covar_samp",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
        "first_value", "last_value", "nth_value", "grouping",
        # strings
        "lower", "upper", "initcap", "length", "char_length", "character_length",
        "octet_length", "bit_length", "substr", "substring", "position", "strpos", "trim",
        "btrim", "ltrim", "rtrim", "lpad", "rpad", "replace", "translate", "concat",
        "concat_ws", "format", "left", "right", "repeat", "reverse", "split_part", "starts_with",
        "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
        "regexp_split_to_table", "regexp_like", "regexp_count", "regexp_substr", "md5",
        "sha256", "encode", "decode", "to_char", "to_number", "quote_ident", "quote_literal",
        "quote_nullable", "ascii", "chr", "unaccent", "string_to_array", "array_to_string",
        "unnest", "similarity", "word_similarity", "to_tsvector", "to_tsquery",
        "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery", "ts_rank", "ts_rank_cd",
        "ts_headline", "convert_from", "convert_to", "normalize",
        # numbers
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "power", "pow", "sqrt",
        "cbrt", "exp", "ln", "log", "log10", "sign", "greatest", "least", "random", "width_bucket",
        "div", "gcd", "lcm", "pi", "degrees", "radians",
        # time
        "now", "current_timestamp", "clock_timestamp", "statement_timestamp",
        "transaction_timestamp", "timeofday", "date_trunc", "date_part", "extract", "age",
        "to_timestamp", "to_date", "make_date", "make_time", "make_timestamp",
        "make_timestamptz", "make_interval", "date_bin", "justify_days", "justify_hours",
        "justify_interval", "isfinite", "timezone", "generate_series",
        # json, arrays, ranges
        "json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array",
        "to_json", "to_jsonb", "row_to_json", "json_extract_path", "jsonb_extract_path",
        "json_extract_path_text", "jsonb_extract_path_text", "jsonb_set", "jsonb_insert",
        "jsonb_strip_nulls", "json_strip_nulls", "jsonb_array_elements", "json_array_elements",
        "jsonb_array_elements_text", "json_array_elements_text", "jsonb_each", "json_each",
        "jsonb_each_text", "json_each_text", "jsonb_object_keys", "json_object_keys",
        "jsonb_array_length", "json_array_length", "jsonb_typeof", "json_typeof",
        "jsonb_path_query", "jsonb_path_exists", "jsonb_path_match", "jsonb_pretty",
        "array_length", "array_position", "array_positions", "array_append", "array_prepend",
        "array_cat", "array_remove", "array_replace", "array_upper", "array_lower", "cardinality",
        "array_dims", "lower_inf", "upper_inf", "isempty", "range_merge",
        # conditionals, types, misc
        "coalesce", "nullif", "gen_random_uuid", "uuid_generate_v4", "current_setting",
        "current_database", "current_schema", "current_user", "session_user", "version",
        "pg_typeof", "format_type", "pg_column_size", "pg_size_pretty", "pg_relation_size",
        "pg_total_relation_size", "pg_table_size", "pg_indexes_size", "pg_database_size",
        "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_backend_pid", "inet_client_addr",
        "host", "masklen", "network", "st_distance", "st_dwithin", "st_contains",
        "st_intersects", "st_asgeojson", "st_makepoint", "st_setsrid", "earth_distance",
        "ll_to_earth", "hashtext", "crc32", "bool", "int4", "int8", "text", "numeric",
        "float8", "date", "timestamp", "timestamptz", "interval", "jsonb", "json", "uuid",
    }
)  # fmt: skip

_LOCKS = {
    "LCS_FORUPDATE": "FOR UPDATE",
    "LCS_FORNOKEYUPDATE": "FOR NO KEY UPDATE",
    "LCS_FORSHARE": "FOR SHARE",
    "LCS_FORKEYSHARE": "FOR KEY SHARE",
}


def read_only(sql: str) -> ReadOnly:
    """Whether ``sql`` (pg_stat_statements text: ``$n`` placeholders) only reads: see the
    module docstring. Text that cannot be parsed (truncated, another dialect) is not.

    >>> read_only("WITH gone AS (DELETE FROM carts RETURNING id) SELECT count(*) FROM gone").reason
    'a CTE modifies data (DELETE)'
    >>> read_only("SELECT app.reserve_seat($1)").ok
    False
    """
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except (_pg.ParseError, ValueError):
        return ReadOnly(False, "its text cannot be parsed (truncated?)")
    stmts = [s.get("stmt", {}) for s in tree.get("stmts", [])]
    if not stmts:
        return ReadOnly(False, "it holds no statement")
    for stmt in stmts:
        found = _not_read_only(stmt)
        if found:
            return ReadOnly(False, found)
    return ReadOnly(True, "a plain SELECT: no row locks, no writes, no writing function")


def _not_read_only(stmt: Mapping[str, Any]) -> str:
    kind = next(iter(stmt), "")
    if kind != "SelectStmt":
        word = kind.removesuffix("Stmt").upper() or "?"
        return f"it is not a SELECT ({word})"
    top = stmt[kind]
    if top.get("intoClause"):
        return "it creates a table (SELECT INTO)"
    for name, node in _walk(top):
        if name == "lockingClause" and node:
            strength = _strength(node)
            return f"it locks rows ({strength})"
        if name == "intoClause" and node:
            return "it creates a table (SELECT INTO)"
        if name in WRITING_STATEMENTS:
            return f"a CTE modifies data ({name.removesuffix('Stmt').upper()})"
        if name == "FuncCall" and isinstance(node, Mapping):
            found = _function_problem(node)
            if found:
                return found
    return ""


def _strength(node: object) -> str:
    clauses = node if isinstance(node, list) else [node]
    for clause in clauses:
        inner = clause.get("LockingClause", {}) if isinstance(clause, Mapping) else {}
        if isinstance(inner, Mapping) and inner.get("strength") in _LOCKS:
            return _LOCKS[str(inner["strength"])]
    return "FOR UPDATE/SHARE"


def _function_problem(call: Mapping[str, Any]) -> str:
    parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", [])]
    name = str(parts[-1]).lower() if parts else ""
    schema = str(parts[0]).lower() if len(parts) > 1 else ""
    if name in WRITING_FUNCTIONS:
        return f"it calls {name}(), which writes or locks on the primary"
    if name in READING_FUNCTIONS and schema in ("", "pg_catalog", "public"):
        return ""
    qualified = ".".join(parts)
    return f"it calls {qualified}(), which querywatch does not know to only read"


def _walk(node: object, name: str = "") -> Iterator[tuple[str, object]]:
    """Every (key, value) pair of a parse tree in JSON form, depth first."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield key, value
            yield from _walk(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, name)
