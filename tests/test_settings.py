"""Settings precedence: flag > QUERYWATCH_* environment > querywatch.toml > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from querywatch import settings
from querywatch.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "querywatch.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("flag", "env", "toml", "expected"),
    [
        (None, None, None, 10.0),
        (None, None, "30s", 30.0),
        (None, "20s", "30s", 20.0),
        ("5s", "20s", "30s", 5.0),
        ("2m", None, None, 120.0),
    ],
)
def test_precedence(
    tmp_path: Path, flag: str | None, env: str | None, toml: str | None, expected: float
) -> None:
    config = write(tmp_path, f'interval = "{toml}"\n') if toml else tmp_path / "none.toml"
    environ = {"QUERYWATCH_CONFIG": str(config)}
    if env:
        environ["QUERYWATCH_INTERVAL"] = env
    assert settings.load({"interval": flag}, environ).interval == expected


def test_sections_are_kept_for_their_modules(tmp_path: Path) -> None:
    config = write(tmp_path, 'store = "x.db"\n[detect]\nfar_factor = 3.0\n')
    loaded = settings.load({}, {"QUERYWATCH_CONFIG": str(config)})
    assert loaded.store == "x.db"
    assert loaded.sections["detect"] == {"far_factor": 3.0}


def test_empty_environment_value_does_not_override(tmp_path: Path) -> None:
    config = write(tmp_path, "port = 9000\n")
    loaded = settings.load({}, {"QUERYWATCH_CONFIG": str(config), "QUERYWATCH_PORT": ""})
    assert loaded.port == 9000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port = 70000\n", "port"),
        ("interval = -1\n", "interval"),
        ("dsn = 5\n", "dsn"),
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings.load({}, {"QUERYWATCH_CONFIG": str(write(tmp_path, text))})


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        settings.load({}, {}, config=tmp_path / "absent.toml")
