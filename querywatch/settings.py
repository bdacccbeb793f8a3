"""Settings declared once: defaults, QUERYWATCH_* environment, querywatch.toml, flags.

Precedence: flag > environment > TOML file > default. The DSN is a libpq conninfo string or URI;
when none is given, libpq's own ``PG*`` variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) and
service files apply.

The TOML file is ``./querywatch.toml`` or the path in ``QUERYWATCH_CONFIG``. Top-level keys are the
settings below; tables such as ``[detect]`` configure their own module.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .durations import parse_duration
from .errors import ConfigError, InputError

CONFIG_FILE = "querywatch.toml"
ENV_PREFIX = "QUERYWATCH_"


def _positive_seconds(name: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            return parse_duration(value, name)
        except InputError as exc:
            raise ConfigError(str(exc)) from None

    return parse


def _positive_int(name: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not a whole number") from None
        if number <= 0:
            raise ConfigError(f"{name}: {value!r} must be more than zero")
        return number

    return parse


def _text(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: {value!r} is not text")
        return value

    return parse


def _port(name: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _positive_int(name)(value)
        if number > 65535:
            raise ConfigError(f"{name}: {value!r} is not a TCP port (1-65535)")
        return number

    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("dsn", "", _text("dsn"), "libpq conninfo or URI of the monitored server"),
    Setting("store", "querywatch.db", _text("store"), "path of the SQLite history store"),
    Setting("server_name", "", _text("server_name"), "name of the server in the store"),
    Setting("interval", 10.0, _positive_seconds("interval"), "seconds between snapshots"),
    Setting(
        "activity_interval",
        1.0,
        _positive_seconds("activity_interval"),
        "seconds between pg_stat_activity samples",
    ),
    Setting(
        "statement_timeout_ms",
        2000,
        _positive_int("statement_timeout_ms"),
        "statement_timeout of the monitoring session",
    ),
    Setting(
        "lock_timeout_ms", 1000, _positive_int("lock_timeout_ms"), "lock_timeout of the session"
    ),
    Setting("retention_raw", 48 * 3600.0, _positive_seconds("retention_raw"), "raw intervals"),
    Setting(
        "retention_minute", 14 * 86400.0, _positive_seconds("retention_minute"), "1-minute rollups"
    ),
    Setting("retention_hour", 90 * 86400.0, _positive_seconds("retention_hour"), "1-hour rollups"),
    Setting("host", "127.0.0.1", _text("host"), "address the web server binds"),
    Setting("port", 8080, _port("port"), "port of the web server"),
    Setting("token", "", _text("token"), "token required by a non-loopback web server"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    dsn: str = ""
    store: str = "querywatch.db"
    server_name: str = ""
    interval: float = 10.0
    activity_interval: float = 1.0
    statement_timeout_ms: int = 2000
    lock_timeout_ms: int = 1000
    retention_raw: float = 48 * 3600.0
    retention_minute: float = 14 * 86400.0
    retention_hour: float = 90 * 86400.0
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Settings:
    """Settings from the four layers; ``flags`` values of None mean "not given"."""
    env = os.environ if env is None else env
    path = config or Path(env.get(ENV_PREFIX + "CONFIG", CONFIG_FILE))
    file_values, sections = _read_toml(path, required=config is not None)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = _pick(setting.name, flags or {}, env, file_values)
        if raw is not None:
            values[setting.name] = setting.parse(raw)
    return Settings(**values, sections=sections)


def _pick(
    name: str, flags: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, Any]
) -> Any:
    if flags.get(name) is not None:
        return flags[name]
    env_value = env.get(ENV_PREFIX + name.upper())
    if env_value not in (None, ""):
        return env_value
    return file_values.get(name)


def _read_toml(path: Path, required: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return {}, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        known = ", ".join(sorted(_BY_NAME))
        raise ConfigError(
            f"config file {str(path)!r}: unknown setting {unknown[0]!r} (known: {known})"
        )
    return values, sections


def defaults_table() -> list[tuple[str, str, str]]:
    """(name, default, help) of every setting, for docs and --help."""
    return [(s.name, repr(s.default), s.help) for s in SETTINGS]


assert {f.name for f in dataclasses.fields(Settings)} - {"sections"} == set(_BY_NAME)
