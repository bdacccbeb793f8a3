"""The one error tree of querywatch.

Library code raises these; only the CLI turns them into a one-line message and an exit code.
Messages are lowercase, ``what: why``, and say how to fix the problem when there is a fix::

    QuerywatchError
    ├── ConfigError            a bad setting, flag, environment variable or querywatch.toml value
    ├── InputError             a malformed file or argument given by the user
    ├── SourceError            talking to the monitored PostgreSQL server
    │   ├── ConnectError       wrong DSN, unreachable server, authentication failure
    │   ├── CapabilityError    pg_stat_statements missing, not preloaded, or a missing privilege
    │   └── QueryTimeout       a monitoring query hit statement_timeout or lock_timeout
    ├── StoreError             the history store
    │   ├── StoreUnwritable    the store file or its folder cannot be written
    │   ├── StoreCorrupt       the file is not a querywatch store, or is damaged
    │   ├── StoreUnreachable   a PostgreSQL store: wrong DSN, server down, authentication failed
    │   └── ServerLeased       another watcher owns the server (its lease is live), or took it over
    ├── LocalPostgresError     the throwaway PostgreSQL launcher could not start or stop a server
    ├── AlertError             an alert channel could not be reached (never stops collection)
    └── DemoError              ``querywatch demo`` could not play its story (a child died, no alert)
"""

from __future__ import annotations


class QuerywatchError(Exception):
    """Root of every error querywatch raises on purpose."""

    exit_code = 1


class ConfigError(QuerywatchError):
    exit_code = 2


class InputError(QuerywatchError):
    exit_code = 2


class SourceError(QuerywatchError):
    exit_code = 3


class ConnectError(SourceError):
    pass


class CapabilityError(SourceError):
    pass


class QueryTimeout(SourceError):
    pass


class StoreError(QuerywatchError):
    exit_code = 4


class StoreUnwritable(StoreError):
    pass


class StoreCorrupt(StoreError):
    pass


class StoreUnreachable(StoreError):
    pass


class ServerLeased(StoreError):
    pass


class LocalPostgresError(QuerywatchError):
    exit_code = 5


class AlertError(QuerywatchError):
    exit_code = 6


class DemoError(QuerywatchError):
    pass
