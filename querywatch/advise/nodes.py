"""Pure: walking EXPLAIN (FORMAT JSON) documents, their hash and their summary.

A plan document is one element of EXPLAIN's JSON output: ``{"Plan": {...}, ...}``. querywatch adds
two keys of its own before the rules see it (the I/O layer does, on a copy):

* ``"Query Text"``: the statement (the same key auto_explain writes);
* ``"Relations"``: ``{"schema.table": {"rows": reltuples, "pages": relpages, "columns": n}}``.

>>> doc = {"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Total Cost": 10.0,
...                 "Plan Rows": 5}}
>>> describe(doc["Plan"])
'Seq Scan on t'
>>> plan_hash(doc) == plan_hash({"Plan": {**doc["Plan"], "Total Cost": 99.0}})
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import InputError
from .records import PlanSummary

Node = Mapping[str, Any]

# What identifies a plan's shape: costs, row estimates and parameter values do not.
_SHAPE_KEYS = (
    "Node Type",
    "Operation",
    "Strategy",
    "Join Type",
    "Parent Relationship",
    "Relation Name",
    "Index Name",
    "Scan Direction",
    "Sort Key",
    "Group Key",
    "Hash Cond",
    "Merge Cond",
    "Index Cond",
)
_HYPOTHETICAL = re.compile(r"<\d+>")
SCANS = frozenset(
    {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}
)
INDEX_SCANS = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})


def document(explain: Sequence[Any] | Mapping[str, Any]) -> Mapping[str, Any]:
    """The plan document from EXPLAIN's JSON output (a one-element list) or the document itself."""
    if isinstance(explain, Mapping):
        return explain
    if not explain or not isinstance(explain[0], Mapping):
        raise InputError('plan: not an EXPLAIN (FORMAT JSON) output (expected [{"Plan": ...}])')
    return explain[0]


def top(doc: Mapping[str, Any]) -> Node:
    plan: Node = doc["Plan"]
    return plan


def walk(node: Node, parent: Node | None = None) -> Iterator[tuple[Node, Node | None]]:
    """Every node of the tree with its parent, depth first, the root first."""
    yield node, parent
    for child in node.get("Plans", ()):
        yield from walk(child, node)


def nodes(doc: Mapping[str, Any]) -> Iterator[Node]:
    return (n for n, _ in walk(top(doc)))


def relation_key(node: Node) -> str | None:
    name = node.get("Relation Name")
    if name is None:
        return None
    schema = node.get("Schema")
    return f"{schema}.{name}" if schema else str(name)


def relation_facts(doc: Mapping[str, Any], node: Node) -> Mapping[str, Any]:
    """querywatch's "Relations" annotation for the node's relation ({} when unknown)."""
    facts: Mapping[str, Mapping[str, Any]] = doc.get("Relations", {})
    name = node.get("Relation Name")
    if name is None:
        return {}
    key = relation_key(node)
    if key is not None and key in facts:
        return facts[key]
    for full, found in facts.items():
        if full.rsplit(".", 1)[-1] == name:
            return found
    return {}


def relation_rows(doc: Mapping[str, Any], node: Node) -> float:
    return float(relation_facts(doc, node).get("rows", 0.0) or 0.0)


def analyzed(doc: Mapping[str, Any]) -> bool:
    return "Actual Rows" in top(doc) or "Execution Time" in doc


def actual_total_rows(node: Node) -> float:
    return float(node.get("Actual Rows", 0.0)) * float(node.get("Actual Loops", 1.0))


def describe(node: Node) -> str:
    """One line for a node: "Index Scan using users_pkey on users"."""
    text = str(node.get("Node Type", "?"))
    if (node.get("Join Type") and "Join" in text) or text == "Nested Loop":
        text = f"{text} ({node.get('Join Type', 'Inner')})"
    if node.get("Strategy") and node.get("Node Type") == "Aggregate":
        text = f"{node['Strategy']} Aggregate"
    if node.get("Index Name"):
        text += f" using {node['Index Name']}"
    if node.get("Relation Name"):
        text += f" on {node['Relation Name']}"
    return text


def _shape(node: Node) -> list[Any]:
    own = [_HYPOTHETICAL.sub("<hypo>", str(node[k])) for k in _SHAPE_KEYS if k in node]
    return [own, [_shape(c) for c in node.get("Plans", ())]]


def plan_hash(doc: Mapping[str, Any]) -> str:
    """16 hex characters that change when the plan's shape changes (not its costs)."""
    text = json.dumps(_shape(top(doc)), separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def total_cost(doc: Mapping[str, Any]) -> float:
    return float(top(doc).get("Total Cost", 0.0))


def used_indexes(doc: Mapping[str, Any]) -> set[str]:
    return {str(n["Index Name"]) for n in nodes(doc) if "Index Name" in n}


def summary(doc: Mapping[str, Any], *, generic: bool = True, limit: int = 8) -> PlanSummary:
    """Hash, cost and the first ``limit`` interesting operations (scans, joins, sorts)."""
    interesting = [
        describe(n)
        for n in nodes(doc)
        if n.get("Node Type") not in {"Gather", "Gather Merge", "Result", "Materialize"}
    ]
    return PlanSummary(
        plan_hash=plan_hash(doc),
        total_cost=total_cost(doc),
        rows=float(top(doc).get("Plan Rows", 0.0)),
        nodes=tuple(interesting[:limit]),
        generic=generic,
        analyzed=analyzed(doc),
    )
