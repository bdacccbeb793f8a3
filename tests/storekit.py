"""Stores on both engines for the store tests: SQLite files and PostgreSQL schemas.

``store_engine`` is parametrized over ("sqlite", "postgresql"); ``store_location(name)`` gives a
location on that engine (a file in tmp_path, or a DSN whose search_path names a fresh schema in
the ``qwstore`` database of the session's PostgreSQL), ``any_store`` an open store there.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from urllib.parse import quote

import psycopg

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
