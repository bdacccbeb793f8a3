"""The fleet's configuration: ``[[servers]]`` tables in querywatch.toml or ``--dsn`` repeated,
each server named (from its DSN when no name is given) and labelled; one server is a fleet of one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from querywatch import settings
from querywatch.cli import app
from querywatch.clikit import fleet
from querywatch.errors import ConfigError
from querywatch.settings import ServerEntry, Settings

A = "host=127.0.0.1 port=5433 dbname=shop"
B = "postgresql://watch@127.0.0.1:5434/billing"


def load(tmp_path: Path, text: str, flags: dict[str, object] | None = None, **env: str) -> Settings:
    path = tmp_path / "querywatch.toml"
    path.write_text(text)
    return settings.load(flags or {}, {"QUERYWATCH_CONFIG": str(path), **env})


TWO = f"""
interval = "5s"
[[servers]]
name = "shop-primary"
dsn = "{A}"
labels = {{ env = "prod", team = "shop", role = "primary" }}

[[servers]]
dsn = "{B}"
"""


def test_servers_tables_are_read_with_their_labels(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO)
    assert cfg.interval == 5.0
    assert cfg.servers == (
        ServerEntry("shop-primary", A, {"env": "prod", "team": "shop", "role": "primary"}),
        ServerEntry("", B, {}),
    )
    named = fleet(cfg)
    assert [e.name for e in named] == ["shop-primary", "127.0.0.1:5434/billing"]
    assert named[0].labels["team"] == "shop"


def test_one_dsn_is_a_fleet_of_one(tmp_path: Path) -> None:
    cfg = load(tmp_path, f'dsn = "{A}"\nserver_name = "main"\n')
    assert cfg.servers == ()
    assert fleet(cfg) == (ServerEntry("main", A),)
    assert fleet(Settings(dsn=B)) == (ServerEntry("127.0.0.1:5434/billing", B),)


def test_dsn_repeated_is_a_fleet_named_from_each_dsn(tmp_path: Path) -> None:
    cfg = load(tmp_path, "", {"dsn": [A, B]})
    assert [(e.name, e.dsn) for e in fleet(cfg)] == [
        ("127.0.0.1:5433/shop", A),
        ("127.0.0.1:5434/billing", B),
    ]


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"dsn": [A]}, {}, ["127.0.0.1:5433/shop"]),  # a flag replaces the file's servers
        ({"dsn": A}, {}, ["127.0.0.1:5433/shop"]),
        ({}, {"QUERYWATCH_DSN": A}, ["127.0.0.1:5433/shop"]),  # so does the environment
        ({}, {}, ["shop-primary", "127.0.0.1:5434/billing"]),
        ({"server_name": "shop-primary"}, {}, ["shop-primary"]),  # --server picks one
    ],
)
def test_precedence_flag_environment_file(
    tmp_path: Path, flags: dict[str, object], env: dict[str, str], expected: list[str]
) -> None:
    assert [e.name for e in fleet(load(tmp_path, TWO, flags, **env))] == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[servers]]\nname = 'x'\n", "[[servers]] #1: dsn is missing"),
        ("[[servers]]\ndsn = 'a'\nport = 1\n", "[[servers]] #1: unknown key 'port'"),
        ("[[servers]]\ndsn = 5\n", "dsn: 5 is not text"),
        ("[[servers]]\ndsn = 'a'\nlabels = 'prod'\n", "labels must be a table"),
        ("[[servers]]\ndsn = 'a'\nlabels = { 'bad-name' = 'x' }\n", "label name 'bad-name'"),
        ("[[servers]]\ndsn = 'a'\nlabels = { server = 'x' }\n", "label name 'server'"),
        ("[[servers]]\ndsn = 'a'\nlabels = { env = ['x'] }\n", "label env = ['x'] is not text"),
        ("[servers]\ndsn = 'a'\n", "servers must be [[servers]] tables"),
        ("servers = 3\n", "servers must be [[servers]] tables"),
        ("dsn = 'a'\n[[servers]]\ndsn = 'b'\n", "either dsn or [[servers]]"),
        (
            "[[servers]]\nname = 'x'\ndsn = 'a'\n[[servers]]\nname = 'x'\ndsn = 'b'\n",
            "server name 'x' is given twice",
        ),
    ],
)
def test_bad_servers_tables_are_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_servers_named_alike_from_their_dsn_are_an_error(tmp_path: Path) -> None:
    cfg = load(tmp_path, f'[[servers]]\ndsn = "{A}"\n[[servers]]\ndsn = "{A} user=other"\n')
    with pytest.raises(ConfigError, match=r"two servers are named .127\.0\.0\.1:5433/shop."):
        fleet(cfg)


def test_unknown_server_picked_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server 'nope' is not configured \(known: 'shop-pri"):
        fleet(load(tmp_path, TWO, {"server_name": "nope"}))


def test_watch_with_a_bad_servers_table_exits_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "querywatch.toml"
    path.write_text("[[servers]]\nname = 'x'\n")
    result = CliRunner().invoke(
        app, ["watch", "--store", str(tmp_path / "qw.db")], env={"QUERYWATCH_CONFIG": str(path)}
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "dsn is missing" in str(result.exception)
