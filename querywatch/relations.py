"""Pure: the tables a statement reads or writes, from its (normalized) text parsed by pglast.

Incidents use them to group statements that regressed together for one reason: the same table,
the same onset (querywatch.detect.incidents). Names are the parser's (unquoted identifiers folded
to lower case) without their schema, since the search path that resolves them is not known here;
names of the statement's own CTEs are not tables. Text pglast cannot parse has no relations.

>>> sorted(relations("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"))
['pgbench_accounts']
>>> sorted(relations("WITH r AS (SELECT * FROM public.orders) SELECT * FROM r JOIN Users u ON true"))
['orders', 'users']
>>> relations("SELEC 1")
frozenset()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping

from pglast import parser as _pg

__all__ = ["Relations", "StatementRelations", "relations"]

_PG_ERRORS = (_pg.ParseError, ValueError)  # ValueError: text pglast cannot encode (surrogates)


def relations(sql: str) -> frozenset[str]:
    """The tables (and views) ``sql`` names, CTE names excepted; empty when it does not parse."""
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except _PG_ERRORS:
        return frozenset()
    ranges: list[Mapping[str, object]] = []
    ctes: set[str] = set()
    for node in _dicts(tree):
        if isinstance(node.get("relname"), str):  # a RangeVar, wrapped or not (UPDATE's target)
            ranges.append(node)
        if isinstance(node.get("ctename"), str):
            ctes.add(str(node["ctename"]))
    return frozenset(
        str(r["relname"]) for r in ranges if "schemaname" in r or r["relname"] not in ctes
    )


def _dicts(node: object) -> Iterator[Mapping[str, object]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


Relations = Mapping[str, frozenset[str]]
"""Fingerprint -> the relations its statement reads or writes."""


class StatementRelations(Mapping[str, frozenset[str]]):
    """Relations of fingerprints whose text ``text_of`` finds, parsed on first use and kept.

    Lazy on purpose: detection asks only about the few fingerprints an anomaly names. A text not
    known yet is asked again next time.

    >>> texts = {"a1": "SELECT abalance FROM pgbench_accounts WHERE aid = $1"}
    >>> known = StatementRelations(texts.get)
    >>> known.get("a1"), known.get("zz"), len(known)
    (frozenset({'pgbench_accounts'}), None, 1)
    """

    def __init__(self, text_of: Callable[[str], str | None]) -> None:
        self._text_of = text_of
        self._known: dict[str, frozenset[str]] = {}

    def __getitem__(self, fingerprint: str) -> frozenset[str]:
        found = self._known.get(fingerprint)
        if found is None:
            text = self._text_of(fingerprint)
            if not text:
                raise KeyError(fingerprint)
            found = self._known[fingerprint] = relations(text)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)
