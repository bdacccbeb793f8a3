"""Fuzz of the configuration and the HTTP API (issue 12, "bad input").

Every configuration input (querywatch.toml text or bytes, ``QUERYWATCH_*`` variables, flag values,
the ``[detect]`` and ``[alerts]`` tables, whole command lines) either loads into usable values or
raises an error of the one tree (:mod:`querywatch.errors`) with a one-line message; never another
exception. The web app (over a real SQLite store with data, in-process through
``httpx.ASGITransport``) answers random paths, query strings, Host and Authorization headers and
``POST /api/deploys`` bodies without a 5xx and without an unhandled exception.

Hypothesis runs derandomized (the same inputs on every run, no example database), so CI is
reproducible. ``EXAMPLES`` holds each test's budget: at least 10,000 inputs in all.
``test_every_fuzz_ran_its_inputs`` (last in the file) checks the counts when the whole file runs;
with ``QUERYWATCH_FUZZ_COUNTS=path`` the counts are also written there as JSON (bench/faults.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import webstore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from querywatch.alerts.dispatcher import outbox_settings
from querywatch.cli import app as cli_app
from querywatch.detect.settings import DetectSettings, settings_from_mapping
from querywatch.errors import QuerywatchError
from querywatch.settings import SETTINGS, Settings, load
from querywatch.web import create_app

EXAMPLES = {
    "toml": 1600,
    "toml_bytes": 1500,
    "env": 2500,
    "flags": 2500,
    "sections": 400,
    "cli": 50,
    "web": 2600,
}
TOTAL_MIN = 10_000
RAN: Counter[str] = Counter()  # inputs actually tried, per test
NOW = 1_800_000_000.0
TOKEN = "s3cret-token"


def fuzz(name: str) -> Any:
    """Hypothesis settings of one fuzz test: its budget, derandomized, no deadline."""
    return settings(
        max_examples=EXAMPLES[name],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def one_line(exc: QuerywatchError) -> None:
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} without a message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"


def usable(cfg: Settings) -> None:
    """A loaded configuration holds values the watcher can use: numbers finite and positive."""
    for s in SETTINGS:
        value = getattr(cfg, s.name)
        if isinstance(value, int | float):
            assert math.isfinite(value) and value > 0, f"{s.name} = {value!r} was accepted"
        else:
            assert isinstance(value, str), f"{s.name} = {value!r} is not text"


def load_or_error(**kwargs: Any) -> Settings | None:
    try:
        cfg = load(**kwargs)
    except QuerywatchError as exc:
        one_line(exc)
        return None
    usable(cfg)
    return cfg


def sections_or_error(cfg: Settings) -> None:
    """The tables watch reads from querywatch.toml: each loads or is a one-line error."""
    try:
        detect = settings_from_mapping(cfg.sections.get("detect", {}))
    except QuerywatchError as exc:
        one_line(exc)
    else:
        for f in fields(DetectSettings):
            value = getattr(detect, f.name)
            assert value is None or math.isfinite(value), f"detect.{f.name} = {value!r}"
    try:
        outbox = outbox_settings(cfg.sections.get("alerts", {}))
    except QuerywatchError as exc:
        one_line(exc)
    else:
        assert math.isfinite(outbox.max_age) and math.isfinite(outbox.max_backoff)


# -- strategies: configuration ------------------------------------------------------------------
NAMES = tuple(s.name for s in SETTINGS)
DETECT_NAMES = tuple(f.name for f in fields(DetectSettings))
ALERT_NAMES = ("max_age", "max_backoff")
DURATIONS = st.one_of(
    st.builds(
        "{}{}".format,
        st.integers(-5, 10**12) | st.floats(0, 1e9, allow_nan=False),
        st.sampled_from(["", "ms", "s", "m", "h", "d", "w", "x", " s", "s "]),
    ),
    st.sampled_from(["9" * 400 + "w", "1." + "5" * 300, " 15m ", "0.0001ms", "1.5.2h"]),
)
NUMBERS_AS_TEXT = st.one_of(
    DURATIONS,
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "-0", "0x10", "1_000", "", " ", "٣"]),
)
TEXT = st.one_of(st.text(max_size=40), NUMBERS_AS_TEXT)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.datetimes(),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=-5)))),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=4,
)


def table(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(names) | st.text(max_size=12)
    return st.dictionaries(keys, VALUES, max_size=4)


TOML_DOCS = st.builds(
    lambda top, detect, alerts, other: {
        **top,
        **({"detect": detect} if detect is not None else {}),
        **({"alerts": alerts} if alerts is not None else {}),
        **other,
    },
    table(NAMES),
    st.none() | table(DETECT_NAMES),
    st.none() | table(ALERT_NAMES),
    st.dictionaries(st.text(max_size=8), table(NAMES), max_size=1),
)


def toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """TOML for a value (JSON string escapes are TOML's; a few strings come out invalid: fine)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # inf, -inf, nan and exponents are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    pairs = (f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(pairs) + "}"


def toml_text(doc: dict[str, Any]) -> str:
    scalars = [
        f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
    ]
    tables = [
        f"[{toml_key(name)}]\n"
        + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in t.items())
        for name, t in doc.items()
        if isinstance(t, dict)
    ]
    return "\n".join(scalars) + "\n" + "\n".join(tables)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def absent(folder: Path) -> dict[str, str]:
    """An environment whose querywatch.toml does not exist (so only the layer under test counts)."""
    return {"QUERYWATCH_CONFIG": str(folder / "absent.toml")}


# -- configuration ------------------------------------------------------------------------------
@fuzz("toml")
@given(doc=TOML_DOCS)
def test_toml_file_loads_or_is_a_one_line_error(folder: Path, doc: dict[str, Any]) -> None:
    RAN["toml"] += 1
    path = folder / "querywatch.toml"
    path.write_text(toml_text(doc), encoding="utf-8")
    cfg = load_or_error(config=path, env={})
    if cfg is not None:
        sections_or_error(cfg)


@fuzz("toml_bytes")
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_toml_bytes_load_or_are_a_one_line_error(folder: Path, data: bytes) -> None:
    RAN["toml_bytes"] += 1
    path = folder / "bytes.toml"
    path.write_bytes(data)
    cfg = load_or_error(config=path, env={})
    if cfg is not None:
        sections_or_error(cfg)


ENV_TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=40) | NUMBERS_AS_TEXT
CONFIG_PATHS = st.one_of(
    st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=40),
    st.sampled_from(["/", ".", "/dev/null", "/proc/self/mem", "/nonexistent/q.toml", "a" * 300]),
)


@fuzz("env")
@given(
    values=st.dictionaries(st.sampled_from(NAMES), ENV_TEXT, max_size=6),
    config=st.none() | CONFIG_PATHS,
)
def test_environment_loads_or_is_a_one_line_error(
    folder: Path, values: dict[str, str], config: str | None
) -> None:
    RAN["env"] += 1
    env = {"QUERYWATCH_" + name.upper(): value for name, value in values.items()}
    env["QUERYWATCH_CONFIG"] = config if config is not None else str(folder / "absent.toml")
    load_or_error(env=env)


@fuzz("flags")
@given(flags=st.dictionaries(st.sampled_from(NAMES), st.none() | TEXT, max_size=6))
def test_flag_values_load_or_are_a_one_line_error(folder: Path, flags: dict[str, Any]) -> None:
    RAN["flags"] += 1
    load_or_error(flags=flags, env=absent(folder))


@fuzz("sections")
@given(detect=table(DETECT_NAMES), alerts=table(ALERT_NAMES))
def test_detect_and_alerts_tables_load_or_are_a_one_line_error(
    detect: dict[str, Any], alerts: dict[str, Any]
) -> None:
    RAN["sections"] += 1
    sections_or_error(Settings(sections={"detect": detect, "alerts": alerts}))


# -- whole command lines (no server needed: they read the store) ---------------------------------
@pytest.fixture(scope="module")
def cli_store(folder: Path) -> Path:
    path = folder / "cli.db"
    webstore.synthetic(path, NOW, hours=0.5).close()
    return path


OPTION_VALUES = st.one_of(TEXT, st.datetimes().map(datetime.isoformat))
COMMANDS = st.one_of(
    st.tuples(
        st.just("top"),
        st.lists(
            st.tuples(
                st.sampled_from(["--since", "--by", "--limit", "--format", "--server"]), TEXT
            ),
            max_size=3,
        ),
    ),
    st.tuples(
        st.just("diagnose"),
        st.lists(
            st.tuples(
                st.sampled_from(["--since", "--start", "--end", "--baseline", "--format"]),
                OPTION_VALUES,
            ),
            max_size=3,
        ),
    ),
    st.tuples(
        st.just("mark"),
        st.lists(st.tuples(st.sampled_from(["--at", "--note"]), OPTION_VALUES), max_size=2),
    ),
    st.tuples(st.just("status"), st.lists(st.tuples(st.just("--format"), TEXT), max_size=1)),
)


@fuzz("cli")
@given(command=COMMANDS, version=st.text(max_size=20))
def test_command_lines_exit_with_one_line_or_succeed(
    folder: Path, cli_store: Path, command: tuple[str, list[tuple[str, str]]], version: str
) -> None:
    RAN["cli"] += 1
    name, options = command
    args = ["mark", "deploy", version] if name == "mark" else [name]
    for flag, value in options:
        args += [flag, value]
    args += ["--store", str(cli_store)]
    result = CliRunner().invoke(cli_app, args, env=absent(folder))
    exc = result.exception
    if isinstance(exc, QuerywatchError):
        one_line(exc)  # main() prints it as one line with its exit code
    elif exc is not None and not isinstance(exc, SystemExit):
        raise exc
    else:
        assert result.exit_code in (0, 2), (args, result.output)  # 2: a usage error from Typer


# -- the HTTP API -------------------------------------------------------------------------------
class Caller:
    """One app through ``httpx.ASGITransport`` on one event loop kept for the module; the app's
    exceptions are raised here (raise_app_exceptions), so an unhandled one fails the test. The
    transport is called directly: the response is the app's own, no redirect is looked at."""

    def __init__(self, app: Any) -> None:
        self.runner = asyncio.Runner()
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = httpx.Request(method, "http://127.0.0.1" + path, **kwargs)
        return self.runner.run(self._send(request))

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        await response.aread()
        return response

    def close(self) -> None:
        self.runner.close()


@pytest.fixture(scope="module")
def callers(folder: Path) -> Iterator[dict[str, Caller]]:
    store = webstore.synthetic(folder / "web.db", NOW, hours=1.0, statements=6)
    apps = {
        "loopback": create_app(store, clock=lambda: NOW),
        "token": create_app(store, token=TOKEN, clock=lambda: NOW),
        "remote": create_app(store, token=TOKEN, loopback=False, clock=lambda: NOW),
        "hosts": create_app(store, clock=lambda: NOW, allowed_hosts=["127.0.0.1", "localhost"]),
        "real_clock": create_app(store),
    }
    made = {name: Caller(app) for name, app in apps.items()}
    yield made
    for caller in made.values():
        caller.close()
    store.close()


ROUTES = (
    "/",
    "/index.json",
    "/statements/{}",
    "/statements/{}.json",
    "/incidents",
    "/incidents.json",
    "/incidents/{}",
    "/incidents/{}.json",
    "/deploys",
    "/deploys.json",
    "/health",
    "/health.json",
    "/api",
    "/api/diagnosis",
    "/api/statements",
    "/api/incidents",
    "/api/incidents/{}",
    "/api/deploys",
    "/metrics",
    "/healthz",
    "/static/{}",
    "/openapi.json",
    "/{}",
)
SEGMENTS = st.one_of(
    st.sampled_from(["fa", "fb", "f003", "inc-1", "..", ".", "%2e%2e", "style.css", "x.json"]),
    st.text(max_size=30).map(lambda s: quote(s, safe="")),
    st.text(string.printable, max_size=30).map(lambda s: quote(s, safe="/%")),
)
PATHS = st.one_of(
    st.builds(lambda route, seg: route.replace("{}", seg), st.sampled_from(ROUTES), SEGMENTS),
    st.text(max_size=60).map(lambda s: "/" + quote(s, safe="/%:@!$&'()*+,;=")),
)
PARAM_NAMES = st.sampled_from(
    ["range", "server", "since", "start", "end", "baseline", "by", "limit", "format"]
) | st.text(max_size=10)
TIMES = st.builds(
    lambda dt, hours: dt.replace(tzinfo=timezone(timedelta(hours=hours))).isoformat(),
    st.datetimes(),
    st.integers(-23, 23),
)
PARAM_VALUES = st.one_of(
    TEXT,
    TIMES,
    st.datetimes().map(datetime.isoformat),
    st.sampled_from(["1h", "6h", "24h", "7d", "30d", "time", "calls", "mean", "io", "0", "-1"]),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
HOSTS = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "127.0.0.1:8080", "[::1]:80", "evil.example", ""]),
    HEADER_TEXT,
)
AUTHORIZATION = st.one_of(
    st.none(),
    st.just(f"Bearer {TOKEN}"),
    st.builds(lambda s: f"Bearer {s}", HEADER_TEXT),
    st.builds(
        lambda user, secret: "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode(),
        st.text(max_size=10),
        st.just(TOKEN) | st.text(max_size=20),
    ),
    st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=30)),
    HEADER_TEXT,
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    TIMES,
    st.text(max_size=5).map(lambda s: s + "\ud800"),  # a lone surrogate, sent as a \u escape
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
DEPLOY_BODIES = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={"version": JSON_VALUES, "at": JSON_VALUES, "note": JSON_VALUES, "x": JSON_VALUES},
    ).map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "", "multipart/x"]
)
REQUESTS = st.one_of(
    st.fixed_dictionaries(
        {
            "method": st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "OPTIONS", "DELETE"]),
            "path": PATHS,
            "params": st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES), max_size=4),
            "body": st.just(b""),
        }
    ),
    st.fixed_dictionaries(
        {
            "method": st.just("POST"),
            "path": st.just("/api/deploys"),
            "params": st.just([]),
            "body": DEPLOY_BODIES,
        }
    ),
)


@fuzz("web")
@given(
    app=st.sampled_from(["loopback", "loopback", "token", "remote", "hosts", "real_clock"]),
    request=REQUESTS,
    host=st.none() | HOSTS,
    authorization=AUTHORIZATION,
    content_type=CONTENT_TYPES,
)
def test_http_api_never_answers_5xx(
    callers: dict[str, Caller],
    app: str,
    request: dict[str, Any],
    host: str | None,
    authorization: str | None,
    content_type: str,
) -> None:
    RAN["web"] += 1
    headers = {"content-type": content_type.encode("latin-1")}  # header bytes as sent
    if host is not None:
        headers["host"] = host.encode("latin-1")
    if authorization is not None:
        headers["authorization"] = authorization.encode("latin-1")
    response = callers[app].request(
        request["method"],
        request["path"],
        params=request["params"],
        content=request["body"] or None,
        headers=headers,
    )
    assert response.status_code < 500, (request, response.status_code, response.text[:300])


# -- the counts -------------------------------------------------------------------------------------
def test_every_fuzz_ran_its_inputs() -> None:
    """Last in the file: each fuzz test that ran tried its whole budget (a crash fails its test
    above, so these inputs gave 0 crashes), and the budgets add up to at least 10,000."""
    assert sum(EXAMPLES.values()) >= TOTAL_MIN
    short = {name: RAN[name] for name in RAN if RAN[name] < EXAMPLES[name]}
    assert not short, f"fewer inputs than budgeted: {short}"
    total = sum(RAN.values())
    path = os.environ.get("QUERYWATCH_FUZZ_COUNTS")
    if path:
        Path(path).write_text(json.dumps({**RAN, "total": total}, sort_keys=True), encoding="utf-8")
    print(f"fuzz inputs: {dict(sorted(RAN.items()))}, total {total}, 0 crashes")
