"""`querywatch serve`: the dashboard, JSON API and /metrics over the store.

(No `from __future__ import annotations` here: Typer reads the annotations, and StoreOpt is
imported inside register() to avoid an import cycle with the CLI.)
"""

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from ..cli import StoreOpt, _logging, _settings
    from .server import serve as run_server

    @app.command()
    def serve(
        host: Annotated[
            str | None,
            typer.Option(help="address to bind (env QUERYWATCH_HOST, default 127.0.0.1)"),
        ] = None,
        port: Annotated[
            int | None, typer.Option(help="TCP port (env QUERYWATCH_PORT, default 8080)")
        ] = None,
        token: Annotated[
            str | None,
            typer.Option(
                help="token for POSTs, and for everything on a non-loopback address "
                "(env QUERYWATCH_TOKEN, preferred: a flag shows in `ps`)"
            ),
        ] = None,
        store: StoreOpt = None,
    ) -> None:
        """Serve the dashboard, the JSON API and Prometheus /metrics from the store."""
        cfg = _settings(store=store, host=host, port=port, token=token)
        _logging()
        run_server(cfg.store, cfg.host, cfg.port, cfg.token)
