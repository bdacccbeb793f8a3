"""`querywatch gate record|check -- PYTEST ARGS`: the query gate around a test suite, for CI.

Both run the suite once under pytest with the gate plugin capturing statements per test.
``record`` writes the baseline to commit; ``check`` compares with it and exits 1 naming each test
and statement over budget (exit 2 when the suite itself fails).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..clikit import out
from ..errors import InputError

if TYPE_CHECKING:
    from .baseline import Capture

DEFAULT_BASELINE = "querywatch-gate.json"
PLUGIN = "querywatch.gate.plugin"

gate_app = typer.Typer(
    help="Query gate for CI: record statements per test, then fail on N+1, seq scans, costs.",
    no_args_is_help=True,
)

BaselineOpt = Annotated[Path, typer.Option("--baseline", help="the baseline file (commit it)")]
ArgsArg = Annotated[
    list[str] | None, typer.Argument(help="pytest arguments, after --", show_default=False)
]


def plugin_args() -> list[str]:
    """``-p querywatch.gate.plugin`` unless an installed entry point already loads it."""
    from importlib.metadata import entry_points

    loaded = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))
    return [] if loaded else ["-p", PLUGIN]


def run_suite(mode: str, target: Path, args: list[str]) -> int:
    """Run pytest with the plugin in ``mode``; its exit code."""
    argv = [sys.executable, "-m", "pytest", *plugin_args(), f"--querywatch-gate-{mode}={target}"]
    return subprocess.run([*argv, *args], check=False).returncode


def captured(args: list[str], keep: Path | None = None) -> tuple[Capture, int]:
    from .baseline import load

    with tempfile.TemporaryDirectory(prefix="querywatch-gate-") as folder:
        target = Path(folder) / "capture.json"
        code = run_suite("capture", target, args)
        if not target.exists():
            raise InputError(f"gate: pytest exited {code} before any test ran (see its output)")
        capture = load(target)
    return capture, code


@gate_app.command("record")
def record(baseline: BaselineOpt = Path(DEFAULT_BASELINE), args: ArgsArg = None) -> None:
    """Run the suite and write the baseline (the current statements are accepted)."""
    from .baseline import Capture, load, save

    budget = load(baseline).budget if baseline.exists() else None
    capture, code = captured(args or [])
    if code != 0:
        raise InputError(f"gate record: the test suite failed (pytest exit {code})")
    if budget is not None:
        capture = Capture(capture.statements, budget)
    save(capture, baseline)
    tests = len(capture.tests())
    out.print(
        f"gate: baseline {baseline} written: {len(capture.statements)} statements in {tests} tests",
        markup=False,
    )


@gate_app.command("check")
def check_command(baseline: BaselineOpt = Path(DEFAULT_BASELINE), args: ArgsArg = None) -> None:
    """Run the suite and fail on statements over the baseline's budget."""
    from .baseline import load
    from .rules import check

    known = load(baseline)
    capture, code = captured(args or [])
    violations = check(known, capture)
    for v in violations:
        out.print(v.line(), markup=False)
    if code != 0:
        out.print(f"gate: the test suite failed (pytest exit {code})", markup=False)
        raise typer.Exit(2)
    if violations:
        out.print(f"gate: {len(violations)} violations against {baseline}", markup=False)
        raise typer.Exit(1)
    out.print(f"gate: pass ({len(capture.tests())} tests within {baseline})", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(gate_app, name="gate")
