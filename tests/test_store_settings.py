"""The PostgreSQL store's pool size is the setting ``store_pool_size`` (querywatch.toml and
QUERYWATCH_STORE_POOL_SIZE): a whole number from 1 to 64, else a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import pg_location

from querywatch import settings
from querywatch.clikit import open_store
from querywatch.errors import ConfigError
from querywatch.store.postgres import PgStore


def load(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> settings.Settings:
    config = tmp_path / "querywatch.toml"
    config.write_text(toml)
    return settings.load({}, {"QUERYWATCH_CONFIG": str(config), **(env or {})})


def test_the_pool_size_defaults_to_4_and_reads_toml_then_environment(tmp_path: Path) -> None:
    assert load(tmp_path).store_pool_size == 4
    assert load(tmp_path, "store_pool_size = 64\n").store_pool_size == 64
    env = {"QUERYWATCH_STORE_POOL_SIZE": " 1 "}
    assert load(tmp_path, "store_pool_size = 9\n", env).store_pool_size == 1


@pytest.mark.parametrize("raw", ["0", "65", "-1", "2.5", "four", "", "1e1", "007x"])
def test_a_bad_pool_size_from_the_environment_is_one_line(tmp_path: Path, raw: str) -> None:
    env = {"QUERYWATCH_STORE_POOL_SIZE": raw}
    if raw == "":  # an empty variable does not override (as for every setting)
        assert load(tmp_path, env=env).store_pool_size == 4
        return
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env=env)
    assert str(caught.value) == (
        f"store_pool_size: {raw!r} is not a whole number from 1 to {settings.POOL_SIZE_MAX}"
    )


@pytest.mark.parametrize("raw", ["0", "65", "2.5", "true", '"many"', "[4]"])
def test_a_bad_pool_size_in_querywatch_toml_is_one_line(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^store_pool_size: .* is not a whole number from 1 to"):
        load(tmp_path, f"store_pool_size = {raw}\n")


def test_the_cli_refuses_a_bad_pool_size_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QUERYWATCH_CONFIG": str(tmp_path / "none.toml"),
        "QUERYWATCH_STORE": str(tmp_path / "s.db"),
        "QUERYWATCH_STORE_POOL_SIZE": "100",
    }
    run = subprocess.run(
        [sys.executable, "-m", "querywatch", "status"], env=env, capture_output=True, text=True
    )
    assert run.returncode == ConfigError.exit_code
    assert run.stderr.splitlines() == [
        "querywatch: error: store_pool_size: '100' is not a whole number from 1 to 64"
    ]


def test_the_postgresql_store_opens_a_pool_of_that_size(tmp_path: Path, pg_store_base: str) -> None:
    location = pg_location(pg_store_base, "pool")
    cfg = load(tmp_path, env={"QUERYWATCH_STORE": location, "QUERYWATCH_STORE_POOL_SIZE": "2"})
    with open_store(cfg) as store:
        assert isinstance(store, PgStore)
        assert store._pool.max_size == 2
        store.server("s1")  # the pool serves
    cfg = load(tmp_path, env={"QUERYWATCH_STORE": location})
    with open_store(cfg) as store:
        assert isinstance(store, PgStore)
        assert store._pool.max_size == 4
        assert [s.name for s in store.servers()] == ["s1"]
