"""What every store concept builds on: the engine's hooks, declared once.

The ``Store`` is assembled from one mixin per concept, each in the module named after it:

=====================  ===================================================================
``statements``         servers, statements and their texts
``intervals``          intervals, deltas, activity, gaps; rollups and retention
``series``             the dashboard's time series
``incidents``          incidents and their timelines
``deploys``            deploy markers
``plans``              plans per fingerprint
``status``             the status board
``leases``             owner leases (which watcher collects which server)
``fleet``              every server's figures at once (the fleet page)
=====================  ===================================================================

and thin methods over ``snapshots``, ``longrun``, ``dbtime``, ``kcache``, ``outbox``,
``replication`` and ``logevents`` in ``sqlite.py``. An engine (``sqlite.Store``,
``postgres.PgStore``) provides the hooks below; concept code only writes portable SQL through
``self._conn`` inside ``self._errors()`` (and ``self._transaction()`` to write).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..model import StatementKey
from .db import Connection
from .rollup import Retention


class StoreBase:
    """The engine's hooks and the state every concept shares."""

    path: Path
    location: str  # the store's location as shown to people (a file path, or a DSN sans password)
    retention: Retention
    clock: Callable[[], float]
    _statement_ids: dict[int, dict[StatementKey, int]]
    _known_texts: set[str]

    @property
    def _conn(self) -> Connection:
        """The connection of the current thread's store operation (inside ``_errors``)."""
        raise NotImplementedError

    def _errors(self) -> AbstractContextManager[None]:
        """One store operation: holds the connection, turns driver errors into StoreError."""
        raise NotImplementedError

    def _transaction(self, conn: Connection | None = None) -> AbstractContextManager[Connection]:
        """A write transaction on the operation's connection."""
        raise NotImplementedError

    @property
    def engine(self) -> str:
        raise NotImplementedError
