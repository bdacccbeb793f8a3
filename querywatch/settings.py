"""Settings declared once: defaults, QUERYWATCH_* environment, querywatch.toml, flags.

Precedence: flag > environment > TOML file > default. The DSN is a libpq conninfo string or URI;
when none is given, libpq's own ``PG*`` variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) and
service files apply.

The TOML file is ``./querywatch.toml`` or the path in ``QUERYWATCH_CONFIG``. Top-level keys are the
settings below; tables such as ``[detect]`` configure their own module.

Each setting is one field of :class:`Settings`, declared with :func:`setting`: its name, default,
kind (how a value is read and shown), environment variable and meaning. From that one declaration
come the dataclass defaults, the TOML/environment validation, the defaults that ``--help`` shows
and the README's table (``python -m querywatch.settings --readme README.md`` rewrites it).
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from .durations import human, parse_duration
from .errors import ConfigError, InputError

CONFIG_FILE = "querywatch.toml"
ENV_PREFIX = "QUERYWATCH_"
README_MARKER = "<!-- settings table: python -m querywatch.settings --readme README.md -->"
POOL_SIZE_MAX = 64  # connections of a PostgreSQL store's pool

T = TypeVar("T")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How a setting's value is read (from TOML, the environment or a flag) and shown."""

    label: str
    parse: Callable[[str, Any], T]  # (setting name, raw value) -> value; ConfigError if bad
    show: Callable[[T], str]


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: {value!r} is not text")
    return value


def _duration(name: str, value: Any) -> float:
    try:
        return parse_duration(value, name)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _count(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number <= 0:
        raise ConfigError(f"{name}: {value!r} must be more than zero")
    return number


def _port(name: str, value: Any) -> int:
    number = _count(name, value)
    if number > 65535:
        raise ConfigError(f"{name}: {value!r} is not a TCP port (1-65535)")
    return number


def _url(name: str, value: Any) -> str:
    text = _text(name, value).strip()
    if text and not text.startswith(("http://", "https://")):
        raise ConfigError(
            f"{name}: {text!r} is not an http(s) URL (e.g. https://qw.example.com/docs/)"
        )
    return text


def _pool_size(name: str, value: Any) -> int:
    text = "" if isinstance(value, bool) or not isinstance(value, int | str) else str(value).strip()
    if not re.fullmatch(r"\d{1,3}", text) or not 1 <= int(text) <= POOL_SIZE_MAX:
        raise ConfigError(f"{name}: {value!r} is not a whole number from 1 to {POOL_SIZE_MAX}")
    return int(text)


TEXT = Kind("text", _text, str)
URL = Kind("URL", _url, str)
DURATION = Kind("duration", _duration, human)
COUNT = Kind("whole number", _count, str)
PORT = Kind("TCP port", _port, str)
POOL_SIZE = Kind("whole number 1-64", _pool_size, str)

_DECLARED = "querywatch.setting"  # the key of a setting's declaration in its field's metadata


@dataclass(frozen=True)
class Setting:
    """One declared setting, as read back from its :class:`Settings` field."""

    name: str
    default: Any
    kind: Kind[Any]
    meaning: str
    shown: str  # the default as people read it ("10s", "libpq's PG* variables")
    literal: bool  # True when ``shown`` is the value itself (typeset as code in the docs)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, value: Any) -> Any:
        return self.kind.parse(self.name, value)


def setting(default: T, kind: Kind[T], meaning: str, *, shown: str | None = None) -> T:
    """Declare a field of :class:`Settings` (typed as its value, like ``dataclasses.field``)."""
    declared = {
        "kind": kind,
        "meaning": meaning,
        "shown": shown or kind.show(default),
        "literal": shown is None,
    }
    return field(default=default, metadata={_DECLARED: declared})


@dataclass(frozen=True)
class Settings:
    dsn: str = setting(
        "", TEXT, "the monitored server (libpq conninfo or URI)", shown="libpq's PG* variables"
    )
    store: str = setting(
        "querywatch.db", TEXT, "the history store: a SQLite file (WAL mode) or a postgresql:// URL"
    )
    store_pool_size: int = setting(
        4, POOL_SIZE, "connections each process may open to a PostgreSQL store"
    )
    server_name: str = setting("", TEXT, "the server's name in the store", shown="from the DSN")
    interval: float = setting(10.0, DURATION, "time between snapshots")
    activity_interval: float = setting(1.0, DURATION, "time between pg_stat_activity samples")
    statement_timeout_ms: int = setting(
        2000, COUNT, "statement_timeout of the monitoring session, in ms"
    )
    lock_timeout_ms: int = setting(1000, COUNT, "lock_timeout of the monitoring session, in ms")
    retention_raw: float = setting(48 * 3600.0, DURATION, "how long raw intervals are kept")
    retention_minute: float = setting(14 * 86400.0, DURATION, "how long 1-minute rollups are kept")
    retention_hour: float = setting(90 * 86400.0, DURATION, "how long 1-hour rollups are kept")
    host: str = setting("127.0.0.1", TEXT, "address the web server binds")
    port: int = setting(8080, PORT, "port of the web server")
    token: str = setting(
        "",
        TEXT,
        "token the web server requires for POSTs, and for everything on a non-loopback address",
        shown="none",
    )
    docs_url: str = setting(
        "",
        URL,
        "base URL of the documentation pages that alerts and outputs link to",
        shown="the /docs/ of querywatch serve (http://HOST:PORT/docs/)",
    )
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    servers: tuple[ServerEntry, ...] = ()  # [[servers]] of querywatch.toml, or --dsn repeated


# -- the fleet: [[servers]] tables, or --dsn repeated ----------------------------------------------
SERVERS = "servers"  # the TOML array of tables
SERVER_KEYS = ("name", "dsn", "labels")  # the keys a [[servers]] table may hold
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_LABELS = 16  # labels per server
MAX_LABEL_VALUE = 200  # characters


@dataclass(frozen=True)
class ServerEntry:
    """One monitored server of a fleet: a ``[[servers]]`` table of querywatch.toml (name, dsn,
    labels such as env/team/role) or one ``--dsn`` of several. ``name`` is "" until it is named
    from its DSN (querywatch.clikit.fleet); one server is a fleet of one."""

    name: str
    dsn: str
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_servers(raw: Any, where: str) -> tuple[ServerEntry, ...]:
    """The ``[[servers]]`` array of tables, validated; ConfigError naming the table if bad."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: servers must be [[servers]] tables (name, dsn, labels)")
    entries = tuple(_server_entry(t, f"{where}: [[servers]] #{n}") for n, t in enumerate(raw, 1))
    names = [e.name for e in entries if e.name]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{where}: server name {twice[0]!r} is given twice (names are unique)")
    return entries


def _server_entry(table: Mapping[str, Any], where: str) -> ServerEntry:
    if unknown := sorted(set(table) - set(SERVER_KEYS)):
        known = ", ".join(sorted(SERVER_KEYS))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {known})")
    dsn = _text(f"{where} dsn", table.get("dsn", ""))
    if not dsn.strip():
        raise ConfigError(f"{where}: dsn is missing (a libpq conninfo string or URI)")
    name = _text(f"{where} name", table.get("name", "")).strip()
    if any(not c.isprintable() for c in name) or len(name) > 200:
        raise ConfigError(f"{where}: name {name!r} must be printable, at most 200 characters")
    return ServerEntry(name, dsn, parse_labels(table.get("labels", {}), where))


def parse_labels(raw: Any, where: str) -> dict[str, str]:
    """A server's labels: names as Prometheus label names (not ``server``), text values."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: labels must be a table, e.g. labels = {{ env = "prod" }}')
    if len(raw) > MAX_LABELS:
        raise ConfigError(f"{where}: {len(raw)} labels, at most {MAX_LABELS}")
    labels: dict[str, str] = {}
    for key, value in raw.items():
        if not LABEL_NAME.fullmatch(key) or key.startswith("__") or key == "server":
            raise ConfigError(
                f"{where}: label name {key!r} must match [A-Za-z_][A-Za-z0-9_]* "
                "(not 'server', not starting with __)"
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: label {key} = {value!r} is not text")
        text = str(value)
        if len(text) > MAX_LABEL_VALUE or any(not c.isprintable() for c in text):
            raise ConfigError(f"{where}: label {key} = {text[:40]!r}... is too long or unprintable")
        labels[key] = text
    return labels


def _declared(f: Field[Any]) -> Setting:
    declared = f.metadata[_DECLARED]
    return Setting(
        f.name,
        f.default,
        declared["kind"],
        declared["meaning"],
        declared["shown"],
        declared["literal"],
    )


SETTINGS: tuple[Setting, ...] = tuple(
    _declared(f) for f in fields(Settings) if _DECLARED in f.metadata
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Settings:
    """Settings from the four layers; ``flags`` values of None mean "not given"."""
    env = os.environ if env is None else env
    path = config or Path(env.get(ENV_PREFIX + "CONFIG", CONFIG_FILE))
    file_values, sections = _read_toml(path, required=config is not None)
    if SERVERS in sections:  # [servers], one table: the fleet is [[servers]], an array of them
        file_values[SERVERS] = sections.pop(SERVERS)
    fleet = _file_servers(file_values, path)
    flags, flag_fleet = _dsn_flags(flags or {})
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = _pick(s, flags, env, file_values)
        if raw is not None:
            values[s.name] = s.parse(raw)
    if flag_fleet is not None:  # --dsn given: it replaces the file's [[servers]]
        fleet = flag_fleet
    elif env.get(BY_NAME["dsn"].env):  # QUERYWATCH_DSN: one server, as a flag would
        fleet = ()
    return Settings(**values, sections=sections, servers=fleet)


def _file_servers(file_values: dict[str, Any], path: Path) -> tuple[ServerEntry, ...]:
    """The file's ``[[servers]]`` (taken out of its top-level values); never with ``dsn``."""
    raw = file_values.pop(SERVERS, None)
    where = f"config file {str(path)!r}"
    if raw is None:
        return ()
    if "dsn" in file_values:
        raise ConfigError(f"{where}: give either dsn or [[servers]] tables, not both")
    return parse_servers(raw, where)


def _dsn_flags(flags: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[ServerEntry, ...] | None]:
    """``--dsn`` given once is the ``dsn`` setting; given several times, a fleet (named later
    from each DSN). Returns the flags with ``dsn`` as one value, and the fleet when several."""
    out = dict(flags)
    given = out.get("dsn")
    if not isinstance(given, list | tuple):
        return out, (() if given is not None else None)
    dsns = [_text("--dsn", d) for d in given]
    out["dsn"] = dsns[0] if dsns else None
    if len(dsns) <= 1:
        return out, (() if dsns else None)
    return out, tuple(ServerEntry("", d) for d in dsns)


def _pick(
    s: Setting, flags: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, Any]
) -> Any:
    if flags.get(s.name) is not None:
        return flags[s.name]
    env_value = env.get(s.env)
    if env_value not in (None, ""):
        return env_value
    return file_values.get(s.name)


def _read_toml(path: Path, required: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    if not exists:
        if required:
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return {}, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    unknown = sorted(set(values) - set(BY_NAME) - {SERVERS})
    if unknown:
        known = ", ".join(sorted(BY_NAME))
        raise ConfigError(
            f"config file {str(path)!r}: unknown setting {unknown[0]!r} (known: {known})"
        )
    return values, sections


# -- generated text: --help and the README ---------------------------------------------------------
def help_text(name: str, what: str | None = None) -> str:
    """The ``--help`` text of the flag that sets ``name``: what it is, its variable and default."""
    s = BY_NAME[name]
    return f"{what or s.meaning} (env {s.env}, default {s.shown})"


def markdown_table() -> str:
    """The README's table of settings."""
    rows = [
        "| setting | default | kind | environment | meaning |",
        "|---|---|---|---|---|",
        *(
            f"| `{s.name}` | {f'`{s.shown}`' if s.literal else s.shown} | {s.kind.label} "
            f"| `{s.env}` | {s.meaning} |"
            for s in SETTINGS
        ),
    ]
    return "\n".join(rows) + "\n"


def with_table(readme: str) -> str:
    """``readme`` with the table after :data:`README_MARKER` replaced by :func:`markdown_table`."""
    lines = readme.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == README_MARKER) + 1
    except StopIteration:
        raise ConfigError(f"the README has no line {README_MARKER!r}") from None
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join([*lines[:start], markdown_table(), *lines[end:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m querywatch.settings", description="the settings table, for the docs"
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the Markdown table")
    group.add_argument("--readme", type=Path, help="rewrite the table in this README")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        path: Path = args.readme
        path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
