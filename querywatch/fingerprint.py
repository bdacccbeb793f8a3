"""Pure: SQL text -> fingerprint (querywatch's stable id of a query shape) and normalized text.

The fingerprint is libpg_query's (through pglast): constants and ``$n`` parameters are ignored, so a
raw text and its pg_stat_statements form share one, and IN lists of any length collapse together
(PostgreSQL 15 gives each list length its own queryid). It is the same on every server, version,
run and machine.

>>> fingerprint("SELECT * FROM t WHERE id IN ($1, $2, $3)") == fingerprint(
...     "select * from t where id in (7)  -- one item"
... )
True
>>> normalize("UPDATE accounts SET balance = balance - 10 WHERE id = 42")
'UPDATE accounts SET balance = balance - $1 WHERE id = $2'
>>> display("SELECT *\\n  FROM t WHERE id IN ($1, $2, $3, $4, $5)", width=60)
'SELECT * FROM t WHERE id IN ($1, ..., $5)'

Text that pglast cannot parse (truncated by ``track_activity_query_size``, another dialect,
garbage) never raises: it gets a fingerprint of its text with comments, whitespace, case and values
normalized, and :func:`shape` marks it ``parsed=False``. :func:`normalize` never returns a literal
value: what pglast's normalization leaves (``EXECUTE p(42)``, ``COMMENT ... IS 'x'``) and the values
of unparseable text are replaced too, and comments are dropped (they may carry ids or user names).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from pglast import parser as _pg

__all__ = ["CacheInfo", "Fingerprinter", "Shape", "display", "fingerprint", "normalize", "shape"]

log = logging.getLogger(__name__)

_PG_ERRORS = (_pg.ParseError, ValueError)  # ValueError: text pglast cannot encode (surrogates)
_CONSTANT_TOKENS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})

# A forgiving lexer for text PostgreSQL's lexer rejects: unterminated strings, comments and quoted
# identifiers run to the end of the text (where track_activity_query_size cut it).
_FALLBACK_TOKEN = re.compile(
    r"""
      (?P<comment> --[^\n]* | /\*.*?(?:\*/|\Z) )
    | (?P<ident> "(?:[^"]|"")*(?:"|\Z) )
    | (?P<value>
          (?<![\w$]) [eE]' (?:[^'\\]|\\.|'')* (?:'|\Z)
        | (?<![\w$]) (?:[bBxXnN]|[uU]&)? ' (?:[^']|'')* (?:'|\Z)
        | (?<![\w$]) \$(?P<tag>(?:[^\W\d]\w*)?)\$ .*? (?:\$(?P=tag)\$|\Z)
        | (?<![\w$.]) (?:0[xXoObB][0-9a-fA-F_]+ | (?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
        | \$\d+ )
    """,
    re.VERBOSE | re.DOTALL,
)
# What pglast's normalize can leave: a comment, a quote, a dollar quote or a number (not in $n).
_MAY_HOLD_VALUE = re.compile(r"--|/\*|'|\$(?:[^\W\d]\w*)?\$|(?<![\w$])\d")
# Text that may give a table an alias (AS, or a name right after a table name): only that text is
# parsed a second time for the aliased tables' names. A false match costs a parse, never a wrong id.
_NOT_ALIAS = (
    "where|join|inner|left|right|full|cross|natural|on|using|set|group|order|limit|offset|having"
    "|window|union|intersect|except|for|returning|values|select|default|fetch|tablesample|lateral"
)
_MAY_ALIAS = re.compile(
    rf"""\bas\b
    | (?:\b(?:from|join|update|into|using|only)|,) \s+ [\w$."]+ \s+ (?!(?:{_NOT_ALIAS})\b)[^\W\d]""",
    re.IGNORECASE | re.VERBOSE,
)
_SPACE = re.compile(r"\s+")
_SPACE_AROUND_PUNCTUATION = re.compile(r"\s*([^\w\s])\s*")
_VALUE_LIST = re.compile(r"\?(?:,\?)+")
_PLACEHOLDER_RUN = re.compile(r"(\$\d+|\?)(?:\s*,\s*(?:\$\d+|\?)){2,}\s*,\s*(\$\d+|\?)")


@dataclass(frozen=True, slots=True)
class Shape:
    """What querywatch keeps of a query text: its fingerprint and normalized text, no values."""

    fingerprint: str
    query: str
    parsed: bool  # False: pglast could not parse it, the fingerprint is of the normalized text


def fingerprint(sql: str) -> str:
    """The query shape's id: 16 lowercase hex characters. Never raises.

    libpg_query fingerprints a table that has an alias by its alias alone, so ``FROM orders o``
    and ``FROM order_items o`` would share one; the names of aliased tables are mixed in.

    >>> fingerprint("SELECT o.id FROM orders o") != fingerprint("SELECT o.id FROM order_items o")
    True
    """
    try:
        return _parsed_fingerprint(sql)
    except _PG_ERRORS:
        return _text_fingerprint(sql)


def _parsed_fingerprint(sql: str) -> str:
    value = str(_pg.fingerprint(sql))
    aliased = _aliased_tables(sql) if _MAY_ALIAS.search(sql) else ()
    if not aliased:
        return value  # the plain libpg_query fingerprint, as before
    key = value + "\0" + "\0".join(aliased)
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _aliased_tables(sql: str) -> tuple[str, ...]:
    """Sorted ``schema.table`` names of the tables that carry an alias in ``sql``."""
    found: set[str] = set()
    stack: list[object] = [json.loads(_pg.parse_sql_json(sql))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("relname"), str) and node.get("alias"):
                found.add(f"{node.get('schemaname', '')}.{node['relname']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(sorted(found))


def normalize(sql: str) -> str:
    """The text with each constant replaced by ``$n`` (``?`` if it does not parse), no comments."""
    try:
        return _scrub_parsed(_pg.normalize(sql))
    except _PG_ERRORS:
        return _scrub_unparsed(sql)


def shape(sql: str) -> Shape:
    """Fingerprint and normalized text of ``sql``, marking text that pglast could not parse."""
    try:
        value = _parsed_fingerprint(sql)
    except _PG_ERRORS:
        log.debug("fingerprint: %d characters do not parse, fingerprinting the text", len(sql))
        return Shape(_text_fingerprint(sql), _scrub_unparsed(sql), parsed=False)
    return Shape(value, normalize(sql), parsed=True)


def display(sql: str, width: int = 80) -> str:
    """One line for a table: whitespace collapsed, long value lists shortened, cut with "…"."""
    line = _PLACEHOLDER_RUN.sub(r"\1, ..., \2", " ".join(sql.split()))
    width = max(width, 1)
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Counters of a :class:`Fingerprinter`, as ``functools.lru_cache`` gives them."""

    hits: int
    misses: int
    size: int
    maxsize: int


class Fingerprinter:
    """Shapes cached per queryid, so each pg_stat_statements entry is parsed once.

    A queryid keeps the shape of the first text given for it: later calls may pass any text (or an
    empty one, when the caller did not fetch it again). The least recently used entries go first
    once ``maxsize`` is reached.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        self._maxsize = max(maxsize, 1)
        self._cache: OrderedDict[int, Shape] = OrderedDict()
        self._hits = 0
        self._misses = 0

    def for_queryid(self, queryid: int, text: str) -> str:
        return self.shape_for_queryid(queryid, text).fingerprint

    def shape_for_queryid(self, queryid: int, text: str) -> Shape:
        cached = self._cache.get(queryid)
        if cached is not None:
            self._hits += 1
            self._cache.move_to_end(queryid)
            return cached
        self._misses += 1
        found = self._cache[queryid] = shape(text)
        if len(self._cache) > self._maxsize:
            self._cache.popitem(last=False)
        return found

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._cache), self._maxsize)

    def __contains__(self, queryid: object) -> bool:
        return queryid in self._cache

    def __len__(self) -> int:
        return len(self._cache)


def _scrub_parsed(text: str) -> str:
    """Drop comments and replace the constants pglast's normalize leaves (utility statements)."""
    if not _MAY_HOLD_VALUE.search(text):
        return text.strip()  # the common case, pglast's scanner costs more than its normalize
    tokens = _pg.scan(text)
    params = (int(text[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM")
    numbers = itertools.count(max(params, default=0) + 1)
    return _splice(
        text,
        (
            (t.start, t.end + 1, None if t.name in _COMMENT_TOKENS else f"${next(numbers)}")
            for t in tokens
            if t.name in _COMMENT_TOKENS or t.name in _CONSTANT_TOKENS
        ),
    )


def _scrub_unparsed(sql: str) -> str:
    """Regex fallback: comments dropped, every string, number and parameter becomes ``?``."""
    return _splice(
        sql,
        (
            (m.start(), m.end(), None if m.lastgroup == "comment" else "?")
            for m in _FALLBACK_TOKEN.finditer(sql)
            if m.lastgroup != "ident"
        ),
    )


def _splice(text: str, edits: Iterable[tuple[int, int, str | None]]) -> str:
    """``text`` with each ``[start, end)`` replaced, trimmed; None drops a comment."""
    pieces: list[str] = []
    done = 0
    for start, end, new in edits:
        before = text[done:start]
        if new is None:  # keep the tokens around a comment apart, without piling up spaces
            before = before.rstrip(" \t")
            new = "" if text[end : end + 1].isspace() else " "
        pieces += (before, new)
        done = end
    pieces.append(text[done:])
    return "".join(pieces).strip()


def _text_fingerprint(sql: str) -> str:
    """Fingerprint of text that does not parse: case, spacing, comments and values ignored."""
    key = _SPACE_AROUND_PUNCTUATION.sub(r"\1", _SPACE.sub(" ", _scrub_unparsed(sql).lower()))
    key = _VALUE_LIST.sub("?", key).rstrip(";")
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
