"""Rows of a catalog or statistics read as records: ``records(cls, rows, **given)``.

A read runs a SQL constant with bound parameters on a session whose timeouts are already set
(``PostgresSource.fetch`` on the watcher's monitoring connection, a cursor of the advisor's
``Session.readonly``) and gets dict rows whose columns are named like the record's fields.
``record`` fills each field from the column of its name, as a frozen record holds it: an SQL
array as a tuple, a ``numeric`` (``pg_wal_lsn_diff``, ``extract``) as a float. ``given`` names
the fields the row does not hold (the server, the time) or overrides one; a field neither names
keeps its default, and a column no field names is left out.

>>> from dataclasses import dataclass
>>> from decimal import Decimal
>>> @dataclass(frozen=True)
... class Slot:
...     server: str
...     name: str
...     retained: float | None
...     keys: tuple[str, ...] = ()
>>> record(Slot, {"name": "s1", "retained": Decimal("8192"), "keys": ["a"], "x": 1}, server="db")
Slot(server='db', name='s1', retained=8192.0, keys=('a',))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def record(cls: type[R], row: Mapping[str, Any], **given: Any) -> R:
    """One record of ``cls`` from a dict row (see the module docstring)."""
    taken = {n: _value(row[n]) for n in _names(cls) if n in row and n not in given}
    return cls(**taken, **given)


def records(cls: type[R], rows: Iterable[Mapping[str, Any]], **given: Any) -> list[R]:
    """A record of ``cls`` per row, each with the same ``given`` fields."""
    return [record(cls, row, **given) for row in rows]


@functools.cache
def _names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _value(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Decimal):
        return float(value)
    return value
