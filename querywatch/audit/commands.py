"""`querywatch audit --deploy VERSION`: the before/after verdict of one deploy (exit 0 pass, 1 not)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from ..clikit import StoreOpt, load_settings, open_store, out, pick_server
from ..durations import parse_duration


class AuditFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


def audit_command(
    deploy: Annotated[str, typer.Option("--deploy", help="the deploy marker's version")],
    before: Annotated[str, typer.Option(help="window before the deploy")] = "30m",
    after: Annotated[str, typer.Option(help="window after the deploy")] = "15m",
    fmt: Annotated[
        AuditFormat, typer.Option("--format", help="text, markdown or json")
    ] = AuditFormat.text,
    store: StoreOpt = None,
    server: Annotated[str | None, typer.Option("--server", help="server name in the store")] = None,
) -> None:
    """Per statement before vs after a deploy: new, gone, calls, latency, DB time, verdict."""
    from .report import audit_to_json, audit_to_markdown, audit_to_text
    from .run import find_deploy, run_audit

    cfg = load_settings(store=store, server_name=server)
    before_s = parse_duration(before, "--before")
    after_s = parse_duration(after, "--after")
    with open_store(cfg, create=False) as st:
        srv = pick_server(st, cfg)
        marker = find_deploy(st, deploy)
        report = run_audit(st, srv.id, marker, before_s, after_s)
    if fmt is AuditFormat.json:
        out.print_json(json.dumps(audit_to_json(report)))
    elif fmt is AuditFormat.markdown:
        out.print(audit_to_markdown(report), markup=False)
    else:
        out.print(audit_to_text(report), markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
