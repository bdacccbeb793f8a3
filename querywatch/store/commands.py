"""`querywatch store copy --from SRC --to DST`: move a store's history into another store."""

from __future__ import annotations

from typing import Annotated

import typer

from ..clikit import out
from ..errors import InputError
from .location import redact

store_app = typer.Typer(help="Manage the history store (SQLite file or PostgreSQL).")


@store_app.command("copy")
def copy(
    source: Annotated[
        str, typer.Option("--from", help="the store to read: a SQLite file or postgresql:// URI")
    ],
    target: Annotated[str, typer.Option("--to", help="the store to write (created when missing)")],
) -> None:
    """Copy every server's history (intervals, rollups, incidents, deploys...) into another
    store, e.g. a single-host querywatch.db into the shared PostgreSQL store."""
    from .copy import copy_store
    from .sqlite import Store

    if source == target:
        raise InputError(f"store copy: --from and --to are the same store ({redact(source)!r})")
    with Store(source, create=False) as src, Store(target) as dst:
        result = copy_store(src, dst)
    out.print(f"{result.line()} from {redact(source)} to {redact(target)}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
