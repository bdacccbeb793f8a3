"""The history store: one ``Store`` API over two engines.

``Store(path)`` opens the embedded SQLite store (``querywatch.store.sqlite``, WAL mode);
``Store("postgresql://...")`` the shared PostgreSQL store (``querywatch.store.postgres``).
Each concept's SQL lives in its own module (``leases``, ``outbox``, ``rollup``...), portable
between both engines and run through a ``querywatch.store.db.Connection``.
"""

from typing import TYPE_CHECKING

from querywatch.lazy import exports

if TYPE_CHECKING:
    from .leases import Lease
    from .postgres import store_exists
    from .rollup import Retention
    from .sqlite import Store, TopRow

__all__ = ["Lease", "Retention", "Store", "TopRow", "store_exists"]

# name -> its module, imported on first use: the CLI's store commands load no engine, and the
# PostgreSQL engine (psycopg, psycopg_pool) loads when a postgresql:// store is opened
_LAZY = {
    "Lease": "leases",
    "Retention": "rollup",
    "Store": "sqlite",
    "TopRow": "sqlite",
    "store_exists": "postgres",
}


__getattr__ = exports(__name__, _LAZY)
