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


# -- the one declaration ----------------------------------------------------------------------------
README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES = {
    "text": ("x", "x"),
    "duration": ("7s", 7.0),
    "whole number": ("7", 7),
    "TCP port": ("7", 7),
    "whole number 1-64": ("7", 7),
    "URL": ("https://qw.example.com/docs/", "https://qw.example.com/docs/"),
}
BAD = {
    "text": 5,
    "duration": "soon",
    "whole number": "many",
    "TCP port": 70000,
    "whole number 1-64": 65,
    "URL": "qw.example.com/docs",
}


def test_readme_table_is_the_generated_one() -> None:
    readme = README.read_text(encoding="utf-8")
    assert settings.README_MARKER in readme
    assert settings.with_table(readme) == readme, (
        "the README's settings table is stale: python -m querywatch.settings --readme README.md"
    )


def test_table_lists_every_setting_once(capsys: pytest.CaptureFixture[str]) -> None:
    settings.main(["--markdown"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [s.name for s in settings.SETTINGS]
    assert len(rows) == 15


def test_regenerating_replaces_only_the_table(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\n{settings.README_MARKER}\n| old | table |\n|---|---|\n\nafter\n")
    settings.main(["--readme", str(path)])
    text = path.read_text()
    assert text.startswith(f"# x\n\n{settings.README_MARKER}\n| setting |")
    assert text.endswith("|\n\nafter\n") and "| old |" not in text
    with pytest.raises(ConfigError, match="settings table"):
        settings.with_table("# no marker\n")


@pytest.mark.parametrize("declared", settings.SETTINGS, ids=lambda s: s.name)
def test_declared_default_is_valid_and_shown_as_itself(declared: settings.Setting) -> None:
    assert declared.parse(declared.default) == declared.default
    assert getattr(settings.Settings(), declared.name) == declared.default
    if declared.literal:  # "10s" in --help and the README reads back as the default
        assert declared.parse(declared.shown) == declared.default


@pytest.mark.parametrize("declared", settings.SETTINGS, ids=lambda s: s.name)
def test_every_setting_reads_its_environment_variable(
    declared: settings.Setting, tmp_path: Path
) -> None:
    raw, expected = SAMPLES[declared.kind.label]
    environ = {"QUERYWATCH_CONFIG": str(tmp_path / "none.toml"), declared.env: raw}
    assert declared.env == "QUERYWATCH_" + declared.name.upper()
    assert getattr(settings.load({}, environ), declared.name) == expected


@pytest.mark.parametrize("declared", settings.SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_validated_from_toml(declared: settings.Setting, tmp_path: Path) -> None:
    bad = BAD[declared.kind.label]
    text = f"{declared.name} = {bad!r}\n".replace("'", '"')
    with pytest.raises(ConfigError, match=declared.name):
        settings.load({}, {"QUERYWATCH_CONFIG": str(write(tmp_path, text))})


def test_help_shows_the_declared_default_and_variable() -> None:
    from typer.testing import CliRunner

    from querywatch.cli import app

    result = CliRunner().invoke(app, ["collect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "(env QUERYWATCH_INTERVAL, default 10s)" in result.output
    assert "(env QUERYWATCH_STORE, default querywatch.db)" in result.output
    served = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "(env QUERYWATCH_PORT, default 8080)" in served.output
