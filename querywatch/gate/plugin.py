"""The pytest plugin of the query gate: capture per test, record a baseline, or fail tests.

Enable it with ``-p querywatch.gate.plugin`` (or the package's ``pytest11`` entry point) and one of:

* ``--querywatch-gate-record=FILE``: write the baseline (keeps FILE's budget when it exists);
* ``--querywatch-gate-check=FILE``: fail each test that breaks the baseline's budget, with the
  statement and the numbers in the failure;
* ``--querywatch-gate-capture=FILE``: only write what ran (``querywatch gate check`` compares it).

Without these options the plugin does nothing (psycopg is not instrumented). Only the test's call
phase is counted, not its fixtures' setup and teardown.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .baseline import Budget, Capture, StatementRecord, load, save
from .capture import Recorder
from .plans import Explainer
from .rules import Violation, amplification, plan_cost, seq_scan

MODES = ("record", "check", "capture")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("querywatch-gate", "querywatch query gate")
    for mode in MODES:
        group.addoption(
            f"--querywatch-gate-{mode}",
            metavar="FILE",
            default=None,
            help=f"querywatch gate: {mode} statements per test (baseline JSON file)",
        )


def pytest_configure(config: pytest.Config) -> None:
    chosen = [(m, config.getoption(f"querywatch_gate_{m}")) for m in MODES]
    chosen = [(m, p) for m, p in chosen if p]
    if not chosen:
        return
    if len(chosen) > 1:
        raise pytest.UsageError(
            "querywatch gate: give one of --querywatch-gate-record/check/capture"
        )
    mode, path = chosen[0]
    config.pluginmanager.register(GateSession(mode, Path(path)), "querywatch-gate-session")


class GateSession:
    def __init__(self, mode: str, path: Path) -> None:
        self.mode = mode
        self.path = path
        self.baseline: Capture | None = load(path) if mode == "check" else None
        self.budget = self._budget()
        self.recorder = Recorder()
        self.explainer = Explainer(self.budget.large_rows)
        self.plans: dict[str, Any] = {}
        self.violations: list[Violation] = []
        self.recorder.install()

    def _budget(self) -> Budget:
        if self.baseline is not None:
            return self.baseline.budget
        if self.mode == "record" and self.path.exists():
            return load(self.path).budget
        return Budget()

    def capture(self) -> Capture:
        statements = {}
        for fp, seen in self.recorder.seen.items():
            calls = {t: c[fp] for t, c in self.recorder.counts.items() if fp in c}
            statements[fp] = StatementRecord(fp, seen.query, self.plans.get(fp), calls)
        return Capture(statements, self.budget)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        self.recorder.current = item.nodeid
        try:
            return (yield)
        finally:
            self.recorder.current = None
            self._explain(item.nodeid)

    def _explain(self, test: str) -> None:
        for fp in self.recorder.counts.get(test, {}):
            if fp not in self.plans:
                seen = self.recorder.seen[fp]
                self.plans[fp] = self.explainer.plan(seen.conninfo, seen.raw)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if self.baseline is None or call.when != "call" or not report.passed:
            return report
        capture = self.capture()
        found = [
            v
            for rule in (amplification, seq_scan, plan_cost)
            for v in rule(self.baseline, capture, item.nodeid)
        ]
        if found:
            self.violations += found
            report.outcome = "failed"
            report.longrepr = "querywatch gate:\n" + "\n".join(f"  {v.line()}" for v in found)
        return report

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.recorder.uninstall()
        self.explainer.close()
        if self.mode in {"record", "capture"}:
            save(self.capture(), self.path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.mode == "record" or self.mode == "capture":
            terminalreporter.write_line(
                f"querywatch gate: {len(self.recorder.seen)} statements written to {self.path}"
            )
        elif self.violations:
            terminalreporter.section("querywatch gate")
            for v in self.violations:
                terminalreporter.write_line(v.line())
