"""Documentation ids (querywatch.docs): every verdict, detection rule, plan finding, health check
and alert channel the code can emit has a page with a Fix section, the registry reads what the
code really emits, and the generated reference index and nav are up to date."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from querywatch import docs
from querywatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "querywatch"
SECTION = re.compile(r"^## (.+)$", re.M)
PLACEHOLDER = re.compile(r"\b(TODO|TBD|placeholder|lorem ipsum)\b", re.I)


def _fix_section(text: str) -> str:
    """The body of the page's ``## Fix`` section (up to the next ``## `` heading)."""
    start = text.find(docs.FIX_HEADING + "\n")
    if start < 0:
        return ""
    body = text[start + len(docs.FIX_HEADING) + 1 :]
    following = SECTION.search(body)
    return body[: following.start()] if following else body


@pytest.mark.parametrize("doc_id", docs.ids())
def test_every_id_has_a_page_with_a_fix(doc_id: str) -> None:
    page = docs.page_path(doc_id, DOCS)
    assert page.is_file(), f"{doc_id}: no page {page.relative_to(ROOT)} (what it means, fix...)"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# "), f"{page.name}: no title"
    fix = _fix_section(text)
    assert fix.strip(), f"{doc_id}: the page has no '## Fix' section (or an empty one)"
    assert "`" in fix, f"{doc_id}: the Fix section gives no exact SQL or command"
    assert not PLACEHOLDER.search(text), f"{doc_id}: the page is still a placeholder"


def test_every_reference_page_is_an_id_the_code_emits() -> None:
    pages = {
        str(p.relative_to(DOCS / "reference").with_suffix(""))
        for p in (DOCS / "reference").glob("*/*.md")
    }
    assert pages - set(docs.ids()) == set(), "pages of ids the code cannot emit"


def test_ids_are_unique_kinds_known_and_names_plain() -> None:
    ids = docs.ids()
    assert len(ids) == len(set(ids))
    for doc_id in ids:
        kind, name = doc_id.split("/")
        assert kind in docs.KINDS and re.fullmatch(r"[a-z0-9_]+", name), doc_id
    assert {i.split("/")[0] for i in ids} == set(docs.KINDS)


# -- the registry reads what the code emits -------------------------------------------------------
def _string_args(path: Path, callee: str, position: int) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and len(node.args) > position:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            arg = node.args[position]
            if name == callee and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _names(kind: str) -> set[str]:
    return {i.split("/", 1)[1] for i in docs.ids() if i.startswith(kind + "/")}


def test_detection_rules_are_the_names_their_anomalies_carry() -> None:
    emitted = _string_args(PACKAGE / "detect" / "rules.py", "_anomaly", 1)
    assert emitted and emitted <= _names("rules"), emitted - _names("rules")
    from querywatch.detect.rules import RULES

    assert {r.__name__ for r in RULES} == emitted


def test_plan_findings_are_the_rule_codes_findings_carry() -> None:
    emitted = _string_args(PACKAGE / "advise" / "findings.py", "Finding", 0)
    assert emitted and emitted <= _names("findings"), emitted - _names("findings")
    from querywatch.advise.findings import RULES

    assert {r.__name__ for r in RULES} == emitted


def test_health_checks_are_every_code_health_findings_carry() -> None:
    emitted = _string_args(PACKAGE / "advise" / "health.py", "HealthFinding", 0)
    assert {"unused_index", "invalid_index", "server_version"} <= emitted
    assert emitted <= _names("health")


def _verdict_literals() -> dict[str, str]:
    """Every ``"verdict": "<literal>"`` the package writes into a dict (an alert's diagnosis)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "verdict"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    found[value.value] = str(path.relative_to(ROOT))
    return found


def test_every_verdict_the_code_writes_is_an_id() -> None:
    from querywatch.model import Verdict

    assert {v.value for v in Verdict} <= _names("verdicts")
    from querywatch.alerts.message import SEVERITY_BY_VERDICT

    # alerts link a verdict to its page when SEVERITY_BY_VERDICT names it (alerts.message)
    assert set(SEVERITY_BY_VERDICT) == _names("verdicts")
    written = _verdict_literals()
    # the overview card's states before any verdict (no detector yet, still learning): no alert
    assert {written.pop("unknown"), written.pop("learning")} == {"querywatch/web/views.py"}
    unknown = {v: where for v, where in written.items() if v not in _names("verdicts")}
    assert unknown == {}, "verdicts written without a page id (add them to SEVERITY_BY_VERDICT)"


def test_alert_channels_are_the_channel_classes() -> None:
    from querywatch.alerts.dispatcher import channels_from_settings

    made = channels_from_settings(
        ["http://127.0.0.1:9/a"],
        ["http://127.0.0.1:9/b"],
        ["key0123456789"],
        "http://127.0.0.1:9/",
        ["http://127.0.0.1:9/c"],
    )
    assert (
        {c.name for c in made}
        == _names("alerts")
        == {"webhook", "slack", "pagerduty", "alertmanager"}
    )


# -- generated text -----------------------------------------------------------------------------
def test_reference_index_is_generated() -> None:
    text = (DOCS / "reference" / "index.md").read_text(encoding="utf-8")
    assert text == docs.reference_index(), "stale: python -m querywatch.docs --write"


def test_mkdocs_nav_lists_every_id() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert docs.with_nav(config) == config, "stale: python -m querywatch.docs --write"
    for doc_id in docs.ids():
        assert f"reference/{doc_id}.md" in config, doc_id


def test_write_rewrites_only_the_generated_parts(tmp_path: Path) -> None:
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    config = "site_name: x\nnav:\n  - Home: index.md\n" + docs.NAV_START + "\n" + docs.NAV_END
    (tmp_path / "mkdocs.yml").write_text(config + "\n  - After: after.md\n")
    docs.main(["--root", str(tmp_path), "--write"])
    written = (tmp_path / "mkdocs.yml").read_text()
    assert written.startswith("site_name: x\nnav:\n  - Home: index.md\n" + docs.NAV_START)
    assert written.endswith(docs.NAV_END + "\n  - After: after.md\n")
    assert "      - reference/index.md" in written
    assert (tmp_path / "docs" / "reference" / "index.md").read_text() == docs.reference_index()
    with pytest.raises(ConfigError, match="reference nav"):
        docs.with_nav("nav: []\n")


# -- links ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("docs_url", "host", "port", "base"),
    [
        ("", "127.0.0.1", 8080, "http://127.0.0.1:8080/docs/"),
        ("", "0.0.0.0", 9000, "http://127.0.0.1:9000/docs/"),
        ("", "::1", 8080, "http://[::1]:8080/docs/"),
        ("", "qw.internal", 80, "http://qw.internal:80/docs/"),
        ("https://qw.example.com/docs", "127.0.0.1", 8080, "https://qw.example.com/docs/"),
    ],
)
def test_base_url(docs_url: str, host: str, port: int, base: str) -> None:
    assert docs.base_url(docs_url, host, port) == base


def test_links_of_known_and_unknown_ids() -> None:
    base = "https://qw.example.com/docs/"
    for doc_id in docs.ids():
        assert docs.link(doc_id, base) == f"{base}reference/{doc_id}/"
    assert docs.link("verdicts/learning", base) == f"{base}reference/"  # never nowhere
    assert docs.verdict_link("lock_contention", base).endswith("/verdicts/lock_contention/")
    assert docs.page_url(docs.INSTALL, base) == f"{base}install/"


def test_configured_base_reads_the_setting() -> None:
    from querywatch.settings import load

    env = {"QUERYWATCH_CONFIG": "/nonexistent.toml", "QUERYWATCH_PORT": "9999"}
    assert docs.configured_base(load({}, env)) == "http://127.0.0.1:9999/docs/"
    env["QUERYWATCH_DOCS_URL"] = "https://qw.example.com/runbooks"
    assert docs.configured_base(load({}, env)) == "https://qw.example.com/runbooks/"
