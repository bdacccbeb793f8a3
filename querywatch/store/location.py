"""Where a store is: a SQLite file, or a PostgreSQL database (and schema) named by a URI."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

TEST_STORE_ENV = "QW_TEST_PG_STORE"  # tests only: file stores become schemas of this database
PREFIXES = ("postgresql://", "postgres://")


def pg_target(location: str | Path) -> tuple[str, str | None] | None:
    """(DSN, schema) when ``location`` names a PostgreSQL store, else None (a SQLite file).

    A file path becomes a schema of the ``QW_TEST_PG_STORE`` database when that is set.
    """
    text = str(location)
    if text.startswith(PREFIXES):
        return text, None
    redirect = os.environ.get(TEST_STORE_ENV, "")
    if redirect.startswith(PREFIXES):
        digest = hashlib.sha1(str(Path(text).absolute()).encode()).hexdigest()[:20]
        return redirect, f"qwt_{digest}"
    return None


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1@", dsn)
