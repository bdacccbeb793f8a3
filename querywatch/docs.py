"""Documentation ids and links: every verdict, detection rule, plan finding, health check and
alert channel the code can emit, read from the code itself, and the URL of its page.

An id is ``<kind>/<name>`` with kind one of :data:`KINDS`; its page is
``docs/reference/<kind>/<name>.md`` (it must have a ``## Fix`` section), served at
``<docs_url>reference/<kind>/<name>/`` (MkDocs directory URLs). The base URL is the ``docs_url``
setting; by default the ``/docs/`` of ``querywatch serve`` on its own address, so links work
offline.

The ids are enumerated from the code, never from a hand list: verdicts from
:class:`querywatch.model.Verdict` (and the verdicts alerts add, ``alerts.message.SEVERITY_BY_VERDICT``),
detection rules from ``detect.rules.RULES``, plan findings from ``advise.findings.RULES``, health
checks from the codes ``advise/health.py`` passes to ``HealthFinding``, alert channels from the
channel classes ``querywatch.alerts`` exports.

>>> link("verdicts/query_regression", "http://127.0.0.1:8080/docs/")
'http://127.0.0.1:8080/docs/reference/verdicts/query_regression/'
>>> base_url("", "0.0.0.0", 9000)
'http://127.0.0.1:9000/docs/'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from querywatch.doclinks import (
    DEFAULT_BASE,
    DOCS_PATH,
    INSTALL,
    REFERENCE,
    anchor,
    base_url,
    check_link,
    page_url,
    reference_url,
)
from querywatch.errors import ConfigError

if TYPE_CHECKING:
    from querywatch.settings import Settings

__all__ = [
    "DEFAULT_BASE",
    "DOCS_PATH",
    "INSTALL",
    "KINDS",
    "REFERENCE",
    "anchor",
    "base_url",
    "check_link",
    "configured_base",
    "ids",
    "known",
    "link",
    "page_url",
    "reference_url",
    "verdict_link",
]

KINDS = ("verdicts", "rules", "findings", "health", "alerts")
TITLES: Mapping[str, str] = {
    "verdicts": "Verdicts",
    "rules": "Detection rules",
    "findings": "Plan findings",
    "health": "Health checks",
    "alerts": "Alert channels",
}
FIX_HEADING = "## Fix"


# -- links -------------------------------------------------------------------------------------
def configured_base(cfg: Settings | None = None) -> str:
    """The base URL the settings give (``docs_url``, ``host``, ``port``; loaded when not given)."""
    from querywatch.settings import load

    cfg = load() if cfg is None else cfg
    return base_url(cfg.docs_url, cfg.host, cfg.port)


def known(doc_id: str) -> bool:
    return doc_id in ids()


def link(doc_id: str, base: str = DEFAULT_BASE) -> str:
    """The URL of an id's page; the reference index for an id the code does not emit (a link
    must never lead nowhere)."""
    return reference_url(doc_id, base) if known(doc_id) else page_url(REFERENCE, base)


def verdict_link(verdict: str, base: str = DEFAULT_BASE) -> str:
    return link(f"verdicts/{verdict}", base)


# -- the registry: ids read from the code --------------------------------------------------------
def verdicts() -> tuple[str, ...]:
    from querywatch.alerts.message import SEVERITY_BY_VERDICT
    from querywatch.model import Verdict

    return _unique([*(v.value for v in Verdict), *SEVERITY_BY_VERDICT])


def rules() -> tuple[str, ...]:
    from querywatch.detect.rules import RULES
    from querywatch.replication import RULE_IDS

    return _unique([*(rule.__name__ for rule in RULES), *_names(RULE_IDS)])


def findings() -> tuple[str, ...]:
    from querywatch.advise.findings import RULES
    from querywatch.replication import FINDING_IDS

    return _unique([*(rule.__name__ for rule in RULES), *_names(FINDING_IDS)])


def _names(doc_ids: Iterable[str]) -> list[str]:
    """``<kind>/<name>`` ids as their names (a module that keeps its ids as a table)."""
    return [doc_id.split("/", 1)[1] for doc_id in doc_ids]


def health_checks() -> tuple[str, ...]:
    from querywatch.advise import health

    return _unique(emitted(health, "HealthFinding", 0))


def alert_channels() -> tuple[str, ...]:
    from querywatch import alerts

    names = []
    for export in alerts.__all__:
        cls = getattr(alerts, export)
        if dataclasses.is_dataclass(cls) and isinstance(cls, type):
            by_field = {f.name: f.default for f in dataclasses.fields(cls)}
            if isinstance(by_field.get("name"), str):
                names.append(str(by_field["name"]))
    return _unique(names)


ENUMERATORS: Mapping[str, Callable[[], tuple[str, ...]]] = {
    "verdicts": verdicts,
    "rules": rules,
    "findings": findings,
    "health": health_checks,
    "alerts": alert_channels,
}


@functools.cache
def ids() -> tuple[str, ...]:
    """Every id the code can emit, kind by kind in :data:`KINDS` order."""
    return tuple(f"{kind}/{name}" for kind in KINDS for name in ENUMERATORS[kind]())


def by_kind() -> dict[str, tuple[str, ...]]:
    return {
        kind: tuple(i.split("/", 1)[1] for i in ids() if i.startswith(kind + "/")) for kind in KINDS
    }


def page_path(doc_id: str, docs_dir: Path = Path("docs")) -> Path:
    """The Markdown source of an id's page."""
    return docs_dir / REFERENCE / f"{doc_id}.md"


def emitted(module: ModuleType, callee: str, position: int) -> list[str]:
    """The string literals ``module``'s source passes as argument ``position`` of ``callee(...)``
    (how the codes a module emits are read when it keeps no table of them)."""
    tree = ast.parse(inspect.getsource(module))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or len(node.args) <= position:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        arg = node.args[position]
        if name == callee and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.append((arg.lineno, arg.value))
    return [value for _, value in sorted(found)]


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# -- generated text: the reference index and the nav --------------------------------------------
def reference_index() -> str:
    """``docs/reference/index.md``: every id with a link to its page, kind by kind."""
    lines = [
        "# Reference",
        "",
        "One page per id that querywatch can emit. Alerts, CLI output, dashboard cards and incident",
        "reports link to these pages; the id is `<kind>/<name>`. This page is generated from the code",
        "(`python -m querywatch.docs --write`); a test fails when it is out of date.",
        "",
    ]
    for kind, names in by_kind().items():
        lines += [f"## {TITLES[kind]}", ""]
        lines += [f"- [`{kind}/{n}`]({kind}/{n}.md)" for n in names]
        lines.append("")
    return "\n".join(lines)


NAV_START = "  # reference nav: generated by python -m querywatch.docs --write"
NAV_END = "  # end of reference nav"


def reference_nav() -> str:
    """The Reference part of mkdocs.yml's nav, between :data:`NAV_START` and :data:`NAV_END`."""
    lines = [NAV_START, "  - Reference:", "      - reference/index.md"]
    for kind, names in by_kind().items():
        lines.append(f"      - {TITLES[kind]}:")
        lines += [f"          - {n}: reference/{kind}/{n}.md" for n in names]
    lines.append(NAV_END)
    return "\n".join(lines) + "\n"


def with_nav(config: str) -> str:
    """``config`` (mkdocs.yml's text) with its reference nav replaced by :func:`reference_nav`."""
    head, start, rest = config.partition(NAV_START)
    _, end, tail = rest.partition(NAV_END)
    if not start or not end:
        raise ConfigError(f"mkdocs.yml has no {NAV_START.strip()!r} ... {NAV_END.strip()!r} block")
    return head + reference_nav() + tail.removeprefix("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m querywatch.docs", description="documentation ids and generated pages"
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ids", action="store_true", help="print every id")
    group.add_argument("--write", action="store_true", help="rewrite the index and the nav")
    args = parser.parse_args(argv)
    if args.ids:
        print("\n".join(ids()))
        return
    root: Path = args.root
    (root / "docs" / REFERENCE / "index.md").write_text(reference_index(), encoding="utf-8")
    config = root / "mkdocs.yml"
    config.write_text(with_nav(config.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
