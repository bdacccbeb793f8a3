"""/metrics: exact figures with bounded labels, `promtool check metrics`, a real Prometheus scrape,
and the Grafana dashboard built on the same names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import webstore
from conftest import missing
from prometheus_client.parser import text_string_to_metric_families
from workload import closed_port, wait_until

from querywatch.store import Store
from querywatch.web import create_app, start_in_thread

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "contrib" / "grafana" / "querywatch.json"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    now = time.time()
    s = webstore.synthetic(tmp_path_factory.mktemp("m") / "m.db", now, hours=0.3, statements=15)
    s.clock = lambda: now  # type: ignore[method-assign]
    yield s
    s.close()


def scrape(store: Store) -> str:
    now = store.clock()
    response = webstore.Client(create_app(store, clock=lambda: now)).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_top_statements_plus_other_with_exact_rates(store: Store) -> None:
    got = samples(scrape(store))
    db_time = {
        dict(k)["fingerprint"]: v
        for k, v in got["querywatch_statement_db_time_seconds_per_second"].items()
    }
    # fa and fb: 20 ms per 10 s; f003..f015: n ms per 10 s; top 10 kept, f003..f007 are "other"
    assert set(db_time) == {"fa", "fb", *(f"f{n:03d}" for n in range(8, 16)), "other"}
    assert db_time["fa"] == pytest.approx(0.002)
    assert db_time["f015"] == pytest.approx(0.0015)
    assert db_time["other"] == pytest.approx((3 + 4 + 5 + 6 + 7) / 10 / 1000)
    calls = {
        dict(k)["fingerprint"]: v for k, v in got["querywatch_statement_calls_per_second"].items()
    }
    assert calls["fb"] == pytest.approx(0.5) and calls["other"] == pytest.approx(2.5)
    mean = {dict(k)["fingerprint"]: v for k, v in got["querywatch_statement_mean_seconds"].items()}
    assert mean["fb"] == pytest.approx(0.004)
    labels = next(iter(got["querywatch_statement_calls_per_second"]))
    assert dict(labels)["server"] == webstore.SERVER
    assert got["querywatch_statement_window_seconds"][(("server", "webtest"),)] == 60
    assert got["querywatch_collector_intervals_total"][(("server", "webtest"),)] == 1080
    assert got["querywatch_collector_dealloc_total"][(("server", "webtest"),)] == 3
    incidents = {dict(k)["state"]: v for k, v in got["querywatch_incidents"].items()}
    assert incidents == {"pending": 0, "firing": 0, "resolved": 1}
    assert got["querywatch_deploys_total"][()] == 1


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (apt-get install prometheus)")
    return path


def test_promtool_accepts_the_exposition(store: Store, pg_dsn: str, tmp_path: Path) -> None:
    texts = [scrape(store)]
    collected = webstore.collected(pg_dsn, tmp_path)  # (cached: built once per session)
    with Store(collected.path, create=False) as real:
        texts.append(webstore.Client(create_app(real)).get("/metrics").text)
    for text in texts:
        result = subprocess.run(
            [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout


def test_a_real_prometheus_scrapes_it(store: Store, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus is not installed (apt-get install prometheus)")
    web = start_in_thread(store.path, "127.0.0.1", 0, "")
    port = closed_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: querywatch\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{web.port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"

        def query(expr: str) -> list[dict[str, object]]:
            try:
                body = httpx.get(api, params={"query": expr}, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return []
            return list(body.get("data", {}).get("result", []))

        found = wait_until(lambda: query("querywatch_collector_intervals_total"), 45, 0.5)
        assert found, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert found[0]["metric"]["server"] == webstore.SERVER  # type: ignore[index]
        assert float(found[0]["value"][1]) == 1080  # type: ignore[index]
        up = query('up{job="querywatch"}')
        assert up and up[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        web.stop()


def test_grafana_dashboard_uses_only_exported_metrics(store: Store) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = scrape(store)
    exported = set(samples(text)) | set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"querywatch_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert {"querywatch_statement_db_time_seconds_per_second", "querywatch_incidents"} <= used
    assert dashboard["uid"] == "querywatch"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "server"}
