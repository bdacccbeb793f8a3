"""Pure: one function per dashboard page, page context -> HTML (the context of views.py).

Verdicts, detection rules and plan findings link to their page of the documentation site that
the same server serves at /docs/ (querywatch.docs ids), so the links work offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from . import charts
from .layout import badge, code, link, num, page, ranges, table

Context = Mapping[str, Any]


def docs_link(href: str | None, doc_id: str, text: str = "what to do") -> str:
    """A link to an id's documentation page (the context's ``docs_url``), or nothing."""
    if not href:
        return ""
    return f' <a class="docs" data-doc="{escape(doc_id)}" href="{escape(href)}">{escape(text)}</a>'


def overview(ctx: Context) -> str:
    v = ctx["verdict"]
    incident = (
        f" {link('/incidents/' + v['incident'], 'incident ' + v['incident'])}"
        if v["incident"]
        else ""
    )
    what = docs_link(v.get("docs_url"), f"verdicts/{v['verdict']}")
    body = (
        f'<section id="verdict" class="verdict verdict-{escape(v["verdict"])}">'
        f"<strong>{escape(v['verdict'].replace('_', ' '))}</strong> "
        f"{escape(v['summary'])}{incident}{what}</section>"
        + ranges(ctx["range"], ctx["ranges"], "/")
        + "<h2>Database time per second, by statement</h2>"
        + charts.stacked(ctx["chart"], "db-time", "ms/s")
        + charts.legend(ctx["chart"]["series"])
        + f"<p class=note>{num(ctx['seconds_covered'], 0)} s of data from {escape(ctx['window']['start'])}"
        f" to {escape(ctx['window']['end'])}</p>"
        + "<h2>Top statements</h2>"
        + _statements_table(ctx["statements"])
    )
    return page("Overview", "overview", body, f"/index.json?range={ctx['range']}", ctx["server"])


def _statements_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ("#", "share", "DB ms/s", "calls/s", "mean ms", "rows/call", "statement"),
        (
            (
                str(r["rank"]),
                f"{r['share']:.1%}",
                num(r["db_time_ms_per_s"]),
                num(r["calls_per_s"]),
                num(r["mean_ms"], 3),
                num(r["rows_per_call"], 1),
                f'<a class="statement" href="{escape(r["href"])}">{code(r["query"] or r["fingerprint"])}</a>',
            )
            for r in rows
        ),
        "statements",
    )


def statement(ctx: Context) -> str:
    chart = ctx["chart"]
    times, step = chart["times"], chart["step_s"]
    marks, bands = ctx["markers"], ctx["bands"]
    graphs = [
        ("calls_per_s", "calls per second", "calls/s"),
        ("mean_ms", "mean time per call", "ms"),
        ("rows_per_s", "rows per second", "rows/s"),
        ("share", "share of database time", "share"),
    ]
    figures = "".join(
        f"<figure><figcaption>{caption}</figcaption>"
        + charts.line(times, step, chart["series"][key], key.replace("_", "-"), unit, marks, bands)
        + "</figure>"
        for key, caption, unit in graphs
    )
    t = ctx["totals"]
    body = (
        "<h1>Statement</h1>"
        f'<pre class="sql">{escape(ctx["query"] or "(text not captured)")}</pre>'
        f"<p class=note>fingerprint <code>{escape(ctx['fingerprint'])}</code> · queryids "
        f"{escape(', '.join(ctx['queryids']))}</p>"
        f"<p>{num(t['calls'])} calls ({num(t['calls_per_s'])}/s), mean {num(t['mean_ms'], 3)} ms, "
        f"{num(t['db_time_ms_per_s'])} ms of database time per second</p>"
        + _capacity(ctx.get("capacity"))
        + ranges(ctx["range"], ctx["ranges"], f"/statements/{ctx['fingerprint']}")
        + f'<div class="grid">{figures}</div>'
        + _plans(ctx["plans"])
        + _advice(ctx["advice"])
        + "<h2>Deploys in this window</h2>"
        + table(
            ("version", "at", "note"),
            ((escape(m["label"]), escape(m["at"]), escape(m["note"])) for m in marks),
        )
        + "<h2>Incidents involving this statement</h2>"
        + _incidents_table(ctx["incidents"])
    )
    json_href = f"/statements/{ctx['fingerprint']}.json?range={ctx['range']}"
    return page("Statement", "overview", body, json_href, ctx["server"])


def _capacity(cap: Mapping[str, Any] | None) -> str:
    """The statement's capacity against the server's cores, and whether a replica could run it."""
    if not cap:
        return ""
    where = (
        "it only reads: a replica could serve it"
        if cap["read_only"]
        else f"not for a replica: {cap['read_only_reason']}"
    )
    return f'<p id="capacity">capacity: {escape(cap["sentence"])} · {escape(where)}</p>'


def _plans(plans: Sequence[Mapping[str, Any]]) -> str:
    if not plans:
        return "<h2>Plans</h2><p class=note>no plan recorded (run `querywatch advise`)</p>"
    parts = ["<h2>Plans</h2>"]
    for p in plans:
        findings = "".join(
            f"<li>{badge(f['severity'])} {escape(f['message'])}"
            + (f" <em>fix:</em> <code>{escape(f['fix'])}</code>" if f["fix"] else "")
            + docs_link(f.get("docs_url"), f"findings/{f['rule']}", "docs")
            + "</li>"
            for f in p["findings"]
        )
        parts.append(
            f'<article class="plan"><p>plan <code>{escape(p["plan_hash"][:12])}</code>, cost '
            f"{num(p['total_cost'], 1)}, seen {escape(p['first_seen'] or '')} to "
            f"{escape(p['last_seen'] or '')}</p><pre>{escape(chr(10).join(p['shape']))}</pre>"
            f'<ul class="findings">{findings}</ul></article>'
        )
    return "".join(parts)


def _advice(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return ""
    parts = []
    for item in items:
        rows = "".join(f"<dt>{escape(str(k))}</dt><dd>{_value(v)}</dd>" for k, v in item.items())
        parts.append(f'<dl class="advice">{rows}</dl>')
    return "<h2>Advice</h2>" + "".join(parts)


def _value(v: object) -> str:
    if isinstance(v, str) and ("\n" in v or v.upper().startswith(("CREATE", "SELECT", "EXPLAIN"))):
        return f"<pre>{escape(v)}</pre>"
    return escape(str(v))


def _incidents_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ("incident", "state", "opened", "resolved", "verdict", "summary"),
        (
            (
                f'<a class="incident" href="{escape(r["href"])}">{escape(r["id"])}</a>',
                badge(r["state"]),
                escape(r["opened_at"] or ""),
                escape(r["resolved_at"] or "–"),
                escape(r["verdict"])
                + docs_link(r.get("docs_url"), f"verdicts/{r['verdict']}", "docs"),
                escape(r["summary"]),
            )
            for r in rows
        ),
        "incidents",
    )


def incidents(ctx: Context) -> str:
    body = "<h1>Incidents</h1>" + _incidents_table(ctx["incidents"])
    return page("Incidents", "incidents", body, "/incidents.json", ctx["server"])


def incident(ctx: Context) -> str:
    d = ctx["diagnosis"]
    what = docs_link(ctx.get("docs_url"), f"verdicts/{ctx['verdict'] or ''}")
    rules = _rules(ctx["rules"], ctx.get("rules_docs", {}))
    head = (
        f"<h1>Incident {escape(ctx['id'])} {badge(ctx['state'])}</h1>"
        f'<section class="verdict verdict-{escape(ctx["verdict"] or "unknown")}">'
        f"<strong>{escape((ctx['verdict'] or 'no diagnosis').replace('_', ' '))}</strong> "
        f"{escape(ctx['summary'])}{what}</section>"
        f"<p class=note>opened {escape(ctx['opened_at'] or '')}, fired {escape(ctx['fired_at'] or '–')}, "
        f"resolved {escape(ctx['resolved_at'] or '–')}; rules {rules}</p>"
    )
    body = (
        head
        + "<h2>Database time per second around the incident</h2>"
        + charts.stacked(ctx["chart"], "incident-db-time", "ms/s")
        + charts.legend(ctx["chart"]["series"])
        + incident_diagnosis(d, ctx["culprits"])
        + "<h2>Timeline</h2>"
        + table(
            ("at", "state", "detail"),
            ((escape(e["at"]), badge(e["state"]), escape(e["detail"])) for e in ctx["timeline"]),
        )
    )
    return page(
        f"Incident {ctx['id']}", "incidents", body, f"/incidents/{ctx['id']}.json", ctx["server"]
    )


def _rules(rules: Sequence[str], pages: Mapping[str, str]) -> str:
    """The incident's detection rules, each linked to its page."""
    return ", ".join(docs_link(pages.get(r), f"rules/{r}", r).lstrip() or escape(r) for r in rules)


def incident_diagnosis(d: Mapping[str, Any], culprits: Sequence[Mapping[str, Any]]) -> str:
    """An incident's stored diagnosis: culprits with evidence, headroom, deploys."""
    if not d:
        return "<h2>Diagnosis</h2><p class=note>no diagnosis was stored with this incident</p>"
    window = d.get("window", {})
    parts = [
        "<h2>Diagnosis</h2>",
        f"<p>window {escape(str(window.get('start')))} to {escape(str(window.get('end')))}, "
        f"traffic x{num(d.get('traffic_factor'))}</p>",
    ]
    for c in culprits:
        evidence = "".join(f"<li>{escape(str(e))}</li>" for e in c.get("evidence", []))
        calls, mean = c.get("calls_per_s", {}), c.get("mean_ms", {})
        parts.append(
            '<article class="culprit">'
            f'<p><a class="statement" href="{escape(c["href"])}">{code(str(c.get("query", "")))}</a></p>'
            f"<p>{escape(str(c.get('kind', '')))}: {float(c.get('excess_share', 0)):.0%} of the excess; "
            f"calls/s {num(calls.get('baseline'))} → {num(calls.get('window'))}, "
            f"mean {num(mean.get('baseline'))} → {num(mean.get('window'))} ms, "
            f"since {escape(str(c.get('onset') or '–'))}</p>"
            f'<ul class="evidence">{evidence}</ul></article>'
        )
    headroom = (d.get("capacity") or {}).get("lines") or []
    if headroom:  # the culprit's capacity, the headroom left, replicas (querywatch.capacity)
        items = "".join(f"<li>{escape(str(line))}</li>" for line in headroom)
        parts.append(f'<h3>Headroom</h3><ul id="headroom">{items}</ul>')
    deploys = d.get("deploys", [])
    if deploys:
        rows = (
            (
                escape(str(x.get("version"))),
                escape(str(x.get("at"))),
                "suspect" if x.get("suspect") else "not suspect",
            )
            for x in deploys
        )
        parts.append("<h3>Deploys</h3>" + table(("version", "at", "verdict"), rows))
    return "".join(parts)


def deploys(ctx: Context) -> str:
    rows = (
        (escape(d["version"]), escape(d["at"]), escape(d["note"]), escape(str(d["audit"] or "–")))
        for d in ctx["deploys"]
    )
    body = (
        "<h1>Deploys</h1>"
        + table(("version", "at", "note", "audit"), rows, "deploys")
        + "<p class=note>Record a deploy from a pipeline: <code>POST /api/deploys</code> with "
        '<code>{"version": "v2.3"}</code> and <code>Authorization: Bearer TOKEN</code>, '
        "or <code>querywatch mark deploy v2.3</code>.</p>"
    )
    return page("Deploys", "deploys", body, "/deploys.json")


def health(ctx: Context) -> str:
    findings = table(
        ("", "check", "finding", "fix"),
        (
            (badge(f["level"]), escape(f["name"]), escape(f["message"]), escape(f["fix"]))
            for f in ctx["findings"]
        ),
        "findings",
    )
    collectors = table(
        ("server", "last snapshot", "intervals", "gaps", "dealloc", "reconnects", "last error"),
        (
            (
                escape(c["server"]),
                escape(c["last_success"] or "never"),
                num(c["intervals"]),
                num(c["gaps"]),
                num(c["dealloc"]),
                num(c["reconnects"]),
                escape(c["last_error"] or "–"),
            )
            for c in ctx["collectors"]
        ),
    )
    gaps = table(
        ("start", "end", "reason", "detail"),
        (
            (escape(g["start"]), escape(g["end"]), escape(g["reason"]), escape(g["detail"]))
            for g in ctx["gaps"]
        ),
    )
    store = ctx["store"]
    body = (
        "<h1>Health</h1>"
        + findings
        + "<h2>Collectors</h2>"
        + collectors
        + "<h2>Gaps in the last 24 hours</h2>"
        + gaps
        + f"<p class=note>store {escape(store['path'])}, {store['bytes'] / 1e6:,.1f} MB</p>"
    )
    return page("Health", "health", body, "/health.json", ctx["server"])


def api(ctx: Context) -> str:
    rows = (
        (escape(e["method"]), f"<code>{escape(e['path'])}</code>", escape(e["summary"]))
        for e in ctx["endpoints"]
    )
    body = (
        "<h1>JSON API</h1><p>The OpenAPI 3 description is at "
        '<a href="/openapi.json">/openapi.json</a>. Every page also has a <code>.json</code> twin '
        "with exactly what the page shows.</p>" + table(("method", "path", "what"), rows, "api")
    )
    return page("API", "api", body, "/openapi.json")


def not_found(what: str) -> str:
    return page("Not found", "", f"<h1>Not found</h1><p>{escape(what)}</p>")
