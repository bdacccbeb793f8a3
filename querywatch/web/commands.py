"""`querywatch serve`: the dashboard, JSON API and /metrics over the store."""

from __future__ import annotations

from typing import Annotated

import typer

from ..clikit import StoreOpt, load_settings, setup_logging
from ..settings import help_text


def serve(
    host: Annotated[str | None, typer.Option(help=help_text("host", "address to bind"))] = None,
    port: Annotated[int | None, typer.Option(help=help_text("port", "TCP port"))] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help=help_text(
                "token",
                "token for POSTs, and for everything on a non-loopback address "
                "(prefer the environment: a flag shows in `ps`)",
            )
        ),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Serve the dashboard, the JSON API and Prometheus /metrics from the store."""
    from .server import serve as run_server  # the web stack loads only when it serves

    cfg = load_settings(store=store, host=host, port=port, token=token)
    setup_logging()
    run_server(cfg.store, cfg.host, cfg.port, cfg.token, cfg.store_pool_size)


def register(app: typer.Typer) -> None:
    app.command()(serve)
