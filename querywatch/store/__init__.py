"""The history store: SQLite (embedded, WAL) behind one class.

``querywatch.store.sqlite`` is the only module that imports sqlite3.
"""

from .sqlite import Retention, Store, TopRow

__all__ = ["Retention", "Store", "TopRow"]
