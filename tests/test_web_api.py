"""The dashboard's pages, their JSON twins and the JSON API, in-process and over real HTTP.

Figures are checked two ways: against a store a real collector run filled (shape, links, the
culprit) and against a synthetic store whose every number is known (exact values at every range,
so double-counted or missing rollups fail).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import webstore
from workload import closed_port, wait_until

from querywatch.durations import iso
from querywatch.store import Store
from querywatch.web import create_app, render_incident_report, start_in_thread
from querywatch.web.app import token_ok

NOW = 1_800_000_000.0  # on an hour boundary
PAGES = ("/", "/incidents", "/deploys", "/health", "/api")


@pytest.fixture(scope="session")
def collected(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> webstore.Collected:
    return webstore.collected(pg_dsn, tmp_path_factory.mktemp("web"))


@pytest.fixture
def client(collected: webstore.Collected) -> Iterator[webstore.Client]:
    with Store(collected.path, create=False) as store:
        yield webstore.Client(create_app(store))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = webstore.synthetic(tmp_path_factory.mktemp("syn") / "s.db", NOW)
    yield store
    store.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Store]:
    """A small synthetic store of its own, for tests that write to it."""
    store = webstore.synthetic(tmp_path / "fresh.db", NOW, hours=0.5)
    yield store
    store.close()


def fixed_client(store: Store, **kwargs: Any) -> webstore.Client:
    return webstore.Client(create_app(store, clock=lambda: NOW, **kwargs))


# -- over a store a real collector filled -----------------------------------------------------------
def test_overview_twin_shows_chart_deploy_incident_and_culprit(
    client: webstore.Client, collected: webstore.Collected
) -> None:
    ctx = client.get("/index.json").json()
    chart = ctx["chart"]
    keys = [s["key"] for s in chart["series"]]
    assert collected.hot_fingerprint in keys
    assert all(len(s["values"]) == len(chart["times"]) for s in chart["series"])
    hot = next(s for s in chart["series"] if s["key"] == collected.hot_fingerprint)
    assert max(v for v in hot["values"] if v is not None) > 0
    assert [(m["label"], m["t"]) for m in chart["markers"]] == [
        (webstore.DEPLOY, collected.deploy_at)
    ]
    assert collected.incident_id in [b["label"] for b in chart["bands"]]
    assert ctx["statements"][0]["query"] == webstore.HOT_SQL
    assert ctx["verdict"]["verdict"] in {"healthy", "query_regression"}
    html = client.get("/").text
    for row in ctx["statements"]:
        assert f'href="{row["href"]}"' in html
    assert 'data-chart="db-time"' in html and f'data-version="{webstore.DEPLOY}"' in html


def test_statement_twin_totals_match_the_store(
    client: webstore.Client, collected: webstore.Collected
) -> None:
    fp = collected.hot_fingerprint
    ctx = client.get(f"/statements/{fp}.json").json()
    assert ctx["query"] == webstore.HOT_SQL
    assert collected.incident_id in [i["id"] for i in ctx["incidents"]]
    assert set(ctx["chart"]["series"]) == {"calls_per_s", "mean_ms", "rows_per_s", "share"}
    assert max(v for v in ctx["chart"]["series"]["calls_per_s"] if v is not None) > 5
    with Store(collected.path, create=False) as store:
        srv = store.servers()[0]
        rows, _ = store.totals(srv.id, 0, time.time() + 1)  # the CLI's own reading path
    expected = next(r.counters for r in rows if r.fingerprint == fp)
    assert ctx["totals"]["calls"] == int(expected.calls)
    assert ctx["totals"]["mean_ms"] == pytest.approx(expected.mean_ms, rel=1e-3)
    assert client.get(f"/statements/{fp}").status_code == 200


def test_incident_twin_and_page(client: webstore.Client, collected: webstore.Collected) -> None:
    listed = client.get("/incidents.json").json()["incidents"]
    assert collected.incident_id in [i["id"] for i in listed]
    ctx = client.get(f"/incidents/{collected.incident_id}.json").json()
    assert ctx["diagnosis"]["verdict"] == "query_regression"
    assert ctx["culprits"][0]["query"] == webstore.HOT_SQL
    assert ctx["culprits"][0]["href"] == f"/statements/{collected.hot_fingerprint}"
    assert "firing" in [e["state"] for e in ctx["timeline"]]
    assert webstore.DEPLOY in [m["label"] for m in ctx["chart"]["markers"]]
    page = client.get(f"/incidents/{collected.incident_id}").text
    assert "query regression" in page and "Timeline" in page


def test_api_diagnosis_is_the_cli_contract(
    client: webstore.Client, collected: webstore.Collected
) -> None:
    start, end = iso(collected.deploy_at - 5), iso(collected.deploy_at + 8)
    api = client.get("/api/diagnosis", params={"start": start, "end": end}).json()
    command = ["diagnose", "--store", str(collected.path), "--start", str(start), "--end", str(end)]
    cli = subprocess.run(
        [sys.executable, "-m", "querywatch", *command, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = json.loads(cli.stdout)
    # the docs link of the verdict: on this server for the API, at the docs_url base for the CLI
    page = f"/docs/reference/verdicts/{api['verdict']}/"
    assert api.pop("docs_url") == page and printed.pop("docs_url") == f"http://127.0.0.1:8080{page}"
    assert api == printed
    assert api["culprits"][0]["query"] == webstore.HOT_SQL


def test_every_page_has_no_parameter_value(
    client: webstore.Client, collected: webstore.Collected
) -> None:
    fp, incident = collected.hot_fingerprint, collected.incident_id
    paths = [*PAGES, f"/statements/{fp}", f"/incidents/{incident}", "/metrics"]
    paths += ["/index.json", f"/statements/{fp}.json", f"/incidents/{incident}.json"]
    paths += ["/health.json", "/deploys.json", "/api/statements?limit=100", "/api/incidents"]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert webstore.EMAIL_DOMAIN not in response.text, path
    with Store(collected.path, create=False) as store:
        report = render_incident_report(store, incident)
    assert webstore.EMAIL_DOMAIN not in report


def test_incident_report_is_one_standalone_file(collected: webstore.Collected) -> None:
    with Store(collected.path, create=False) as store:
        report = render_incident_report(store, collected.incident_id)
    assert report.startswith("<!doctype html>") and "<style>" in report
    assert "/static/" not in report and "<script" not in report
    docs = "http://127.0.0.1:8080/docs/reference/verdicts/query_regression/"
    assert f'href="{docs}"' in report  # the one kind of outside link: its documentation
    external = report.replace('xmlns="http://www.w3.org/2000/svg"', "")
    external = re.sub(r'href="http://127\.0\.0\.1:8080/docs/[^"]*"', "", external)
    assert "http://" not in external and "https://" not in external
    assert "SELECT count(*) FROM web_items WHERE category = $1" in report


def test_bad_input_is_a_clear_4xx(client: webstore.Client) -> None:
    assert client.get("/?range=2y").status_code == 422
    r = client.get("/api/diagnosis?since=soon")
    assert r.status_code == 400 and "is not a duration" in r.json()["error"]
    r = client.get("/api/diagnosis?since=1m&start=2026-01-01T00:00:00Z")
    assert r.status_code == 400
    assert client.get("/incidents/nope.json").json() == {"error": "incident is not in the store"}
    assert client.get("/statements/nope").status_code == 404
    assert client.get("/index.json?server=elsewhere").status_code == 400


# -- exact figures ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("range_name", "seconds"),
    [("15m", 900), ("1h", 3600), ("3h", 10800), ("24h", 10800), ("7d", 10800)],
)
def test_every_range_counts_each_interval_once(
    synthetic: Store, range_name: str, seconds: int
) -> None:
    with fixed_client(synthetic) as c:
        ctx = c.get(f"/index.json?range={range_name}").json()
    assert ctx["seconds_covered"] == seconds
    rows = {r["fingerprint"]: r for r in ctx["statements"]}
    assert rows["fa"]["calls"] == seconds  # 10 calls every 10 s
    assert rows["fb"]["calls"] == seconds // 2
    assert rows["fa"]["db_time_ms_per_s"] == pytest.approx(2.0)
    assert rows["fa"]["share"] == pytest.approx(0.5)
    for line in ctx["chart"]["series"]:
        values = [v for v in line["values"] if v is not None]
        assert values and all(v == pytest.approx(2.0) for v in values), line["key"]
    expected = ["v1.0"] if seconds > 900 else []  # the deploy was 30 minutes ago
    assert [m["label"] for m in ctx["chart"]["markers"]] == expected


def test_statement_series_exact(synthetic: Store) -> None:
    with fixed_client(synthetic) as c:
        ctx = c.get("/statements/fb.json?range=1h").json()
    series = ctx["chart"]["series"]
    assert {v for v in series["calls_per_s"] if v is not None} == {0.5}
    assert {v for v in series["mean_ms"] if v is not None} == {4.0}
    assert {v for v in series["share"] if v is not None} == {0.5}
    assert ctx["totals"] == {
        "calls": 1800,
        "calls_per_s": 0.5,
        "mean_ms": 4.0,
        "rows": 1800,
        "db_time_ms_per_s": 2.0,
    }
    assert ctx["incidents"] == []


def test_health_findings_from_status(synthetic: Store) -> None:
    with fixed_client(synthetic) as c:
        ctx = c.get("/health.json").json()
    levels = {(f["name"], f["level"]) for f in ctx["findings"]}
    assert ("collector webtest", "ok") in levels
    dealloc = [f for f in ctx["findings"] if "dealloc" in f["message"]]
    assert dealloc and "pg_stat_statements.max" in dealloc[0]["fix"]
    assert ctx["collectors"][0]["dealloc"] == 3


# -- security --------------------------------------------------------------------------------------
def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()


def test_post_needs_the_token(fresh: Store) -> None:
    with fixed_client(fresh, token="s3cret") as c:
        r = c.post("/api/deploys", json={"version": "v9"})
        assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
        wrong = {"Authorization": "Bearer s3cre"}
        assert c.post("/api/deploys", json={"version": "v9"}, headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        r = c.post(
            "/api/deploys", json={"version": " v9 ", "at": "2027-01-15T07:45:00Z"}, headers=ok
        )
        assert r.status_code == 201
        assert r.json() == {"version": "v9", "at": "2027-01-15T07:45:00Z", "note": ""}
        r = c.post(
            "/api/deploys", json={"version": "v10"}, headers={"Authorization": basic("s3cret")}
        )
        assert r.status_code == 201 and r.json()["at"] == iso(NOW)
        versions = [d["version"] for d in c.get("/deploys.json").json()["deploys"]]
        assert versions[:2] == ["v10", "v9"]  # newest first
        assert c.get("/").status_code == 200  # reading on loopback needs no token
        bad = c.post("/api/deploys", json={"version": "v11", "at": "tomorrow"}, headers=ok)
        assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]


def test_non_loopback_needs_the_token_for_everything_but_healthz(synthetic: Store) -> None:
    with fixed_client(synthetic, token="s3cret", loopback=False) as c:
        r = c.get("/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.get("/", headers={"Authorization": basic("s3cret")}).status_code == 200
        r = c.get("/index.json", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_headers_and_host_check(synthetic: Store) -> None:
    with fixed_client(synthetic, allowed_hosts=("127.0.0.1", "localhost")) as c:
        r = c.get("/")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/", headers={"Host": "evil.example"}).status_code == 421


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer t0k", True),
        ("bearer t0k", True),
        ("Bearer t0k2", False),
        ("Token t0k", False),
        ("Basic !!!", False),
        ("", False),
    ],
)
def test_token_ok(header: str, ok: bool) -> None:
    assert token_ok(header, "t0k") is ok
    assert token_ok(header, "") is False


# -- real servers ---------------------------------------------------------------------------------
def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    return {**env, **extra}


@pytest.mark.parametrize("how", ["flag", "env"])
def test_non_loopback_bind_without_token_refuses(
    synthetic: Store, how: str, tmp_path: Path
) -> None:
    args = ["--host", "0.0.0.0"] if how == "flag" else []
    env = _cli_env(QUERYWATCH_HOST="0.0.0.0") if how == "env" else _cli_env()
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "serve", "--store", str(synthetic.path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "'0.0.0.0' is not a loopback address, so the web server needs a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_command_over_real_http(fresh: Store, tmp_path: Path) -> None:
    port = closed_port()
    cmd = [sys.executable, "-m", "querywatch", "serve", "--store", str(fresh.path)]
    env = _cli_env(QUERYWATCH_PORT=str(port), QUERYWATCH_TOKEN="t0k")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=out, stdout=out, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _answers(base + "/healthz"), 30), "serve did not start"
        assert httpx.post(base + "/api/deploys", json={"version": "v-http"}).status_code == 401
        auth = {"Authorization": "Bearer t0k"}
        r = httpx.post(base + "/api/deploys", json={"version": "v-http"}, headers=auth)
        assert r.status_code == 201
        assert "v-http" in httpx.get(base + "/deploys").text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "deploy v-http recorded" in text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_start_in_thread_serves_and_stops(synthetic: Store) -> None:
    handle = start_in_thread(synthetic.path, "127.0.0.1", 0, "")
    try:
        assert handle.port > 0
        r = httpx.get(handle.url + "/index.json?range=3h")
        assert r.status_code == 200 and r.json()["server"] == webstore.SERVER
    finally:
        handle.stop()
    assert not handle.thread.is_alive()


def test_an_empty_store_still_renders(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.db") as store:
        c = webstore.Client(create_app(store))
        for path in (*PAGES, "/index.json", "/health.json", "/metrics", "/api/statements"):
            assert c.get(path).status_code == 200, path
        ctx = c.get("/index.json").json()
        assert ctx["verdict"]["verdict"] == "unknown" and ctx["statements"] == []
        assert all(v is None for s in ctx["chart"]["series"] for v in s["values"])
        findings = c.get("/health.json").json()["findings"]
        assert findings[0]["level"] == "fail" and "no collector" in findings[0]["message"]
