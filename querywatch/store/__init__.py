"""The history store: SQLite (embedded, WAL) behind one class.

``querywatch.store.sqlite`` is the only module that imports sqlite3.
"""

from .rollup import Retention
from .sqlite import Store, TopRow

__all__ = ["Retention", "Store", "TopRow"]
