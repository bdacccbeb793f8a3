"""What every command shares: option types, the two consoles, settings/store/source openers,
server choice, logging and signal handling.

``cli.py`` and each feature's ``commands.py`` import from here at the top; nothing here imports
a command module, so there is no cycle. Importing this module loads no store engine, psycopg or
web stack (``--help`` stays fast): the openers import them when called.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console

from . import top
from .errors import ConfigError, QuerywatchError
from .settings import ServerEntry, Settings, help_text, load

if TYPE_CHECKING:
    from .source.postgres import PostgresSource
    from .store.protocol import StoreProtocol
    from .store.sqlite import Server

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

# help texts (environment variable, default) come from the settings' declaration
DsnOpt = Annotated[
    str | None, typer.Option("--dsn", help=help_text("dsn", "libpq conninfo or URI"))
]
DsnsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dsn",
        help=help_text("dsn", "libpq conninfo or URI; repeat it to watch several servers"),
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", help=help_text("store", "history store: a SQLite file or a postgresql:// URL")
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help=help_text("server_name", "server name in the store")),
]


class Format(StrEnum):
    text = "text"
    json = "json"


def _choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """A str enum named ``name`` whose members are ``values`` (Typer lists them as choices)."""
    # cast: typeshed reads StrEnum(...) as a member lookup, not the functional API
    return cast(type[StrEnum], StrEnum(name, [(value, value) for value in values]))


if TYPE_CHECKING:  # members are only known at run time: statically, any str enum
    SortBy = StrEnum
else:
    SortBy = _choices("SortBy", top.SORT_KEYS)


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (None: not given), environment, querywatch.toml and defaults."""
    return load(flags)


def server_name(cfg: Settings) -> str:
    """The name the store files this server under: the setting, else one from the DSN."""
    from .source.postgres import server_label

    return cfg.server_name or server_label(cfg.dsn)


def fleet(cfg: Settings) -> tuple[ServerEntry, ...]:
    """The servers to watch or check, each named: the ``[[servers]]`` tables or repeated
    ``--dsn`` (unnamed ones named from their DSN), else the one server of ``cfg.dsn`` (a fleet
    of one); with ``server_name`` set and a fleet configured, only the server of that name."""
    from .source.postgres import server_label

    if not cfg.servers:
        return (ServerEntry(server_name(cfg), cfg.dsn),)
    named = tuple(replace(e, name=e.name or server_label(e.dsn)) for e in cfg.servers)
    names = [e.name for e in named]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(
            f"servers: two servers are named {twice[0]!r} (fix: give each [[servers]] a name)"
        )
    if cfg.server_name:
        picked = tuple(e for e in named if e.name == cfg.server_name)
        if not picked:
            known = ", ".join(repr(n) for n in names)
            raise ConfigError(f"server {cfg.server_name!r} is not configured (known: {known})")
        return picked
    return named


def open_source(cfg: Settings, dsn: str | None = None) -> PostgresSource:
    """A source for ``dsn`` (default: ``cfg.dsn``) with the configured timeouts."""
    from .source.postgres import PostgresSource

    return PostgresSource(
        cfg.dsn if dsn is None else dsn,
        statement_timeout_ms=cfg.statement_timeout_ms,
        lock_timeout_ms=cfg.lock_timeout_ms,
    )


def open_store(cfg: Settings, create: bool = True) -> StoreProtocol:
    """The store at ``cfg.store`` with the configured retention."""
    from .store import Retention, Store

    retention = Retention(cfg.retention_raw, cfg.retention_minute, cfg.retention_hour)
    return Store(cfg.store, retention=retention, create=create, pool_size=cfg.store_pool_size)


def pick_server(st: StoreProtocol, cfg: Settings) -> Server:
    """The server named in the settings, else the store's first; an error when there is none."""
    servers = st.servers()
    if not servers:
        raise QuerywatchError(
            f"store {st.location!r} holds no data yet (fix: run `querywatch collect`)"
        )
    if cfg.server_name:
        for s in servers:
            if s.name == cfg.server_name:
                return s
        names = ", ".join(repr(s.name) for s in servers)
        raise QuerywatchError(f"server {cfg.server_name!r} is not in the store (known: {names})")
    return servers[0]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s querywatch: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # one INFO line per HTTP request would drown the log during a long channel outage: the
    # dispatcher logs failures and the outbox keeps the count for `status`
    logging.getLogger("httpx").setLevel(logging.WARNING)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGINT/SIGTERM inside the block; the previous handlers come back after."""

    def handler(signum: int, frame: object) -> None:
        logging.getLogger("querywatch").info("stopping (signal %d)", signum)
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
