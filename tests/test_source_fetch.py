"""Rows of a catalog read as records (querywatch.source.fetch): fields by column name, arrays as
tuples, numerics as floats, given fields, defaults kept, other columns left out."""

from __future__ import annotations

import doctest
from decimal import Decimal

import pytest

from querywatch.advise.records import IndexFact
from querywatch.replication import SlotState
from querywatch.source import fetch


def test_doctests() -> None:
    assert doctest.testmod(fetch).failed == 0


def test_rows_become_records_as_the_readers_built_them() -> None:
    row = {"slot_name": "s", "slot_type": "physical", "active": False, "wal_status": "reserved"}
    slots = fetch.records(
        SlotState, [{**row, "retained_bytes": Decimal("16777216.0")}], server="db", at=1.0
    )
    assert slots == [SlotState("db", "s", "physical", False, 16777216.0, "reserved", 1.0)]
    assert isinstance(slots[0].retained_bytes, float)
    index = fetch.record(
        IndexFact,
        {
            "schema": "public",
            "table": "t",
            "name": "i",
            "keys": ["a", "lower(b)"],
            "scans": 3,
            "extra": 1,
        },
    )
    assert index == IndexFact("public", "t", "i", ("a", "lower(b)"), scans=3)  # defaults kept


def test_a_field_neither_the_row_nor_the_caller_gives_fails() -> None:
    with pytest.raises(TypeError):
        fetch.record(SlotState, {"slot_name": "s"}, server="db", at=1.0)
