"""Stores on both engines for the store tests: SQLite files and PostgreSQL schemas.

``store_engine`` is parametrized over ("sqlite", "postgresql"); ``store_location(name)`` gives a
location on that engine (a file in tmp_path, or a DSN whose search_path names a fresh schema in
the ``qwstore`` database of the session's PostgreSQL), ``any_store`` an open store there.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

STORE_DATABASE = "qwstore"
_counter = itertools.count()


def store_database(dsn: str) -> str:
    """The DSN of the ``qwstore`` database of the server at ``dsn`` (created on first use)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (STORE_DATABASE,)
        ).fetchone()
        if not found:
            conn.execute(f"CREATE DATABASE {STORE_DATABASE}")
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port, user = info.get("host", "127.0.0.1"), info.get("port", "5432"), info.get("user")
    auth = f"{quote(str(user))}@" if user else ""
    return f"postgresql://{auth}{host}:{port}/{STORE_DATABASE}"


def pg_location(base: str, name: str) -> str:
    """A DSN whose search_path is a schema of its own (the store creates it)."""
    schema = f"t{os.getpid()}_{next(_counter)}_{name}".lower()
    return f"{base}?options=-csearch_path%3D{schema}"


def sqlite_location(tmp_path: Path, name: str) -> str:
    return str(tmp_path / f"{name}.db")


# -- reading a store the way the code under test wrote it (tests that ran a watcher on a path) ----
# Under QW_TEST_STORE=postgresql a file path names a schema of the qwstore database (see
# querywatch.store.location), so a test reads what a watcher stored through the Store, never with
# sqlite3 on the file. ``rows`` runs a portable read-only query through the store's own engine.
def exists(location: str | Path) -> bool:
    """A store is at ``location`` (a file, or a schema under QW_TEST_STORE=postgresql)."""
    from querywatch.store import store_exists

    return store_exists(location)


def rows(location: str | Path, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of a portable read-only ``query`` on the store at ``location``, through its engine.

    Raises ``querywatch.errors.StoreError`` when there is no store (yet) or the query fails.
    """
    from querywatch.store import Store

    with Store(location, create=False) as store, store._errors():
        return [tuple(row) for row in store._conn.execute(query, params).fetchall()]


def value(location: str | Path, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of ``query`` (None when there is no row)."""
    found = rows(location, query, params)
    return found[0][0] if found else None


def sqlite_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep file paths SQLite files for this test even under QW_TEST_STORE=postgresql."""
    from querywatch.store.location import TEST_STORE_ENV

    monkeypatch.delenv(TEST_STORE_ENV, raising=False)
