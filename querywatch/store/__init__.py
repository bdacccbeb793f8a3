"""The history store: one ``Store`` API over two engines.

``Store(path)`` opens the embedded SQLite store (``querywatch.store.sqlite``, WAL mode);
``Store("postgresql://...")`` the shared PostgreSQL store (``querywatch.store.postgres``).
Each concept's SQL lives in its own module (``leases``, ``outbox``, ``rollup``...), portable
between both engines and run through a ``querywatch.store.db.Connection``.
"""

from .leases import Lease
from .postgres import store_exists
from .rollup import Retention
from .sqlite import Store, TopRow

__all__ = ["Lease", "Retention", "Store", "TopRow", "store_exists"]
