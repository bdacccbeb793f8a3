"""`querywatch demo`: replay the outage end to end on a throwaway PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..clikit import out as console


def demo(
    fast: Annotated[bool, typer.Option("--fast", help="shorter phases (for tests)")] = False,
    out: Annotated[Path, typer.Option("--out", help="folder for the report and logs")] = Path(
        "querywatch-demo"
    ),
) -> None:
    """Replay the outage: rollout, alert, diagnosis, fix, recovery, then a traffic surge."""
    from .report import write_report  # the demo's stack loads only when it runs
    from .story import FAST, NORMAL, Demo

    console.print("[bold]querywatch demo[/]: the five-hour outage, replayed in a few minutes\n")
    started = time.monotonic()
    facts = Demo(FAST if fast else NORMAL, out, console).run()  # DemoError: a one-line error
    path = write_report(facts, out)
    console.print(f"\nincident report: {path} (HTML: {facts.html_report})")
    console.print(f"diagnosis: {out / 'diagnosis.json'}  ·  logs: {out}/watch.log, {out}/api.log")
    console.print(
        f"demo finished in {time.monotonic() - started:.0f} s; everything it started has stopped"
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
