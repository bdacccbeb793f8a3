"""Pure: how many calls a statement can take before the server's cores are full, how much room
the server has left, and which replicas could serve a read-only statement instead.

Capacity counts database (execution) time as core time: a statement that takes ``m`` ms per call
keeps ``c x m / 1000`` cores busy at ``c`` calls/s, so it alone saturates ``n`` cores at
``n x 1000 / m`` calls/s. Time spent waiting (I/O, locks) counts too, so this is the bound the
CPU would reach if every millisecond were CPU work: a cautious figure.

A statement may move to a replica only when it is read-only (:func:`read_only`): one plain
``SELECT`` (or ``VALUES``/``TABLE``) with no ``FOR UPDATE``/``SHARE``, no ``SELECT INTO``, no
data-modifying CTE and no function that writes or that querywatch does not know (a function of
your own may write). A replica takes it when its replay lag is within ``max_lag_s`` and its busy
cores stay within ``max_busy`` of its cores once it runs the statement's calls at the primary's
cost per call (:func:`place`).

>>> s = StatementCapacity(cores=4, mean_ms=8.4, calls_per_s=390.0)
>>> round(s.saturating_calls_per_s), f"{s.utilisation:.0%}"
(476, '82%')
>>> s.sentence()
'at 8.4 ms per call this statement saturates 4 cores at 476 calls/s; it runs at 390/s (82%)'
>>> read_only("SELECT id FROM orders WHERE customer_id = $1").ok
True
>>> read_only("SELECT id FROM orders WHERE id = $1 FOR UPDATE").reason
'it locks rows (FOR UPDATE)'
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pglast import parser as _pg

from querywatch.errors import ConfigError
from querywatch.text import figure


@dataclass(frozen=True)
class CapacitySettings:
    """The ``[capacity]`` table of querywatch.toml."""

    max_lag_s: float = 10.0
    """A replica whose replay lag is above this (seconds) is not proposed: its reads are stale."""
    max_busy: float = 0.8
    """A replica is proposed while its busy cores stay within this share of its cores."""


def settings_from_mapping(table: Mapping[str, object]) -> CapacitySettings:
    """Validate the ``[capacity]`` table (unset keys: defaults).

    >>> settings_from_mapping({"max_lag_s": 2}).max_lag_s
    2.0
    """
    known = {f.name for f in fields(CapacitySettings)}
    values: dict[str, float] = {}
    for key, value in table.items():
        if key not in known:
            shown = key if key.isidentifier() else repr(key)
            raise ConfigError(
                f"capacity.{shown}: unknown setting (known: {', '.join(sorted(known))})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"capacity.{key}: expected a number, got {value!r} (fix querywatch.toml)"
            )
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"capacity.{key}: must be a finite number above 0, got {value!r}")
        values[key] = float(value)
    return CapacitySettings(**values)


# -- one statement ---------------------------------------------------------------------------------
def saturating_calls_per_s(cores: float, mean_ms: float) -> float:
    """Calls/s at which a statement of ``mean_ms`` per call alone keeps ``cores`` cores busy
    (infinite for a statement that takes no time)."""
    return cores * 1000.0 / mean_ms if mean_ms > 0 else math.inf


@dataclass(frozen=True)
class StatementCapacity:
    """A statement's cost per call and rate against the server's cores."""

    cores: int
    mean_ms: float
    calls_per_s: float

    @property
    def saturating_calls_per_s(self) -> float:
        return saturating_calls_per_s(self.cores, self.mean_ms)

    @property
    def busy_cores(self) -> float:
        """Cores its calls keep busy now."""
        return self.calls_per_s * self.mean_ms / 1000.0

    @property
    def utilisation(self) -> float:
        """Its current rate over the saturating rate (its share of the server's cores)."""
        return self.busy_cores / self.cores if self.cores > 0 else 0.0

    def sentence(self) -> str:
        return (
            f"at {figure(self.mean_ms)} ms per call this statement saturates {self.cores} cores "
            f"at {_rate(self.saturating_calls_per_s)} calls/s; it runs at "
            f"{_rate(self.calls_per_s)}/s ({self.utilisation:.0%})"
        )

    def as_json(self) -> dict[str, object]:
        sat = self.saturating_calls_per_s
        return {
            "cores": self.cores,
            "mean_ms": round(self.mean_ms, 3),
            "calls_per_s": round(self.calls_per_s, 3),
            "saturating_calls_per_s": round(sat, 1) if math.isfinite(sat) else None,
            "busy_cores": round(self.busy_cores, 3),
            "utilisation": round(self.utilisation, 4),
        }


@dataclass(frozen=True)
class Headroom:
    """The server's cores against the DB time all its statements take."""

    cores: int
    db_ms_per_s: float

    @property
    def busy_cores(self) -> float:
        return self.db_ms_per_s / 1000.0

    @property
    def left_cores(self) -> float:
        return max(self.cores - self.busy_cores, 0.0)

    @property
    def used(self) -> float:
        return self.busy_cores / self.cores if self.cores > 0 else 0.0

    def sentence(self) -> str:
        return (
            f"statements keep {self.busy_cores:.1f} of {self.cores} cores busy "
            f"({self.used:.0%}, {self.db_ms_per_s:,.0f} ms of DB time per second): "
            f"{self.left_cores:.1f} cores left"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "cores": self.cores,
            "db_ms_per_s": round(self.db_ms_per_s, 3),
            "busy_cores": round(self.busy_cores, 3),
            "left_cores": round(self.left_cores, 3),
            "used": round(self.used, 4),
        }


def _rate(value: float) -> str:
    if not math.isfinite(value):
        return "unbounded"
    return f"{value:,.0f}" if value >= 10 else figure(value)


# -- read-only statements -----------------------------------------------------------------------------
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


# -- replicas --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaLoad:
    """A replica that could take reads: its cores, its own DB time now and its replay lag (None
    when unknown: not watched, or no figure yet)."""

    name: str
    cores: int | None
    db_ms_per_s: float | None
    lag_s: float | None
    streaming: bool = True


@dataclass(frozen=True)
class Placement:
    """What one replica could take of a read-only statement."""

    replica: str
    calls_per_s: float  # of the statement's calls/s it could take (0: none)
    whole: bool  # all of them
    reason: str
    cores: int | None = None
    busy_before: float | None = None  # cores
    busy_after: float | None = None
    lag_s: float | None = None

    @property
    def takes(self) -> bool:
        return self.calls_per_s > 0

    def as_json(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "takes": self.takes,
            "whole": self.whole,
            "calls_per_s": round(self.calls_per_s, 3),
            "cores": self.cores,
            "busy_cores_before": _round(self.busy_before),
            "busy_cores_after": _round(self.busy_after),
            "lag_s": _round(self.lag_s),
            "reason": self.reason,
        }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def place(
    statement: StatementCapacity,
    replica: ReplicaLoad,
    settings: CapacitySettings = CapacitySettings(),
) -> Placement:
    """How many of the statement's calls/s ``replica`` could take at the same cost per call,
    keeping its busy cores within ``max_busy`` of its cores, if its lag allows at all."""
    lag = replica.lag_s
    if not replica.streaming:
        return Placement(replica.name, 0.0, False, "it is not streaming", lag_s=lag)
    if lag is None:
        return Placement(replica.name, 0.0, False, "its replay lag is unknown")
    if lag > settings.max_lag_s:
        why = f"replay lag {figure(lag)} s is over the {figure(settings.max_lag_s)} s limit"
        return Placement(replica.name, 0.0, False, why, lag_s=lag)
    if replica.cores is None or replica.db_ms_per_s is None:
        why = "its cores or load are unknown (watch it with its own DSN)"
        return Placement(replica.name, 0.0, False, why, replica.cores, lag_s=lag)
    before = replica.db_ms_per_s / 1000.0
    room_ms = settings.max_busy * replica.cores * 1000.0 - replica.db_ms_per_s
    fit = room_ms / statement.mean_ms if statement.mean_ms > 0 else math.inf
    calls = max(min(fit, statement.calls_per_s), 0.0)
    after = before + calls * statement.mean_ms / 1000.0
    limit = f"{settings.max_busy:.0%} of {replica.cores} cores"
    busy = f"{before:.1f} -> {after:.1f} busy cores, lag {figure(lag)} s"
    if calls <= 0:
        why = f"already {before:.1f} of {replica.cores} cores busy (limit {limit})"
        return Placement(replica.name, 0.0, False, why, replica.cores, before, before, lag)
    whole = calls >= statement.calls_per_s
    what = "all" if whole else f"{_rate(calls)} of the"
    why = f"could take {what} {_rate(statement.calls_per_s)} calls/s ({busy})"
    return Placement(replica.name, calls, whole, why, replica.cores, before, after, lag)


# -- all of it for one culprit ---------------------------------------------------------------------
@dataclass(frozen=True)
class Assessment:
    """Headroom of the server during a window and where its top culprit's load could go."""

    headroom: Headroom
    fingerprint: str
    query: str
    statement: StatementCapacity
    read_only: ReadOnly
    placements: tuple[Placement, ...] = ()
    cores_from: str = ""
    settings: CapacitySettings = field(default_factory=CapacitySettings)

    @property
    def proposed(self) -> tuple[Placement, ...]:
        """Replicas that could take some of it, the most first."""
        found = [p for p in self.placements if p.takes]
        return tuple(sorted(found, key=lambda p: (-p.calls_per_s, p.replica)))

    def lines(self) -> list[str]:
        """The headroom line and the replica line of a diagnosis (plain text)."""
        out = [
            f"headroom: {self.headroom.sentence()}",
            f"capacity: {self.statement.sentence()}",
        ]
        replicas = self.replica_line()
        return [*out, replicas] if replicas else out

    def replica_line(self) -> str:
        if not self.read_only.ok:
            return f"replicas: not for a replica: {self.read_only.reason}"
        if not self.placements:
            return "replicas: it only reads, but this server has no replica to take it"
        taking = self.proposed
        if taking:
            best = taking[0]
            return f"replicas: it only reads; replica {best.replica} {best.reason}" + (
                f" (also: {', '.join(p.replica for p in taking[1:])})" if taking[1:] else ""
            )
        why = "; ".join(f"{p.replica}: {p.reason}" for p in self.placements)
        return f"replicas: it only reads, but no replica can take it ({why})"

    def as_json(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint,
            "cores_from": self.cores_from,
            "headroom": self.headroom.as_json(),
            "statement": self.statement.as_json(),
            "read_only": self.read_only.ok,
            "read_only_reason": self.read_only.reason,
            "max_lag_s": self.settings.max_lag_s,
            "replicas": [p.as_json() for p in self.placements],
            "proposed": [p.replica for p in self.proposed],
            "lines": self.lines(),
        }


def assess(
    cores: int,
    db_ms_per_s: float,
    fingerprint: str,
    query: str,
    calls_per_s: float,
    mean_ms: float,
    replicas: Sequence[ReplicaLoad] = (),
    settings: CapacitySettings = CapacitySettings(),
    cores_from: str = "",
) -> Assessment:
    """Headroom, the statement's capacity and, for a read-only one, each replica's placement
    (a statement that writes is never placed on a replica)."""
    statement = StatementCapacity(cores, mean_ms, calls_per_s)
    ro = read_only(query) if query else ReadOnly(False, "its text is unknown")
    placements = tuple(place(statement, r, settings) for r in replicas) if ro.ok else ()
    return Assessment(
        Headroom(cores, db_ms_per_s),
        fingerprint,
        query,
        statement,
        ro,
        placements,
        cores_from,
        settings,
    )
