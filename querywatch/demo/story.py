"""The scripted incident: baseline -> rollout -> alert -> diagnosis -> fix -> recovery -> surge.

Everything runs on this machine: a throwaway PostgreSQL (querywatch.localpg), the shop API and
`querywatch watch` as child processes, the traffic and the alert receiver in this process. All of
it stops on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console

from ..diagnose import diagnose
from ..durations import clock
from ..errors import DemoError
from ..localpg import LocalPostgres, free_port
from ..model import Diagnosis, IntervalSummary
from ..report import diagnosis_to_json
from ..store import Store
from . import shop
from .receiver import Alert, AlertReceiver
from .report import DemoFacts, Event
from .traffic import Traffic, percentile, shop_endpoints

ROLLOUT_VERSION = "v2.3"
FLAG = "order_history_v2"
FIX = "CREATE INDEX CONCURRENTLY customers_lower_email_idx ON customers (lower(email))"


@dataclass(frozen=True)
class Plan:
    """How long each act lasts."""

    interval: float = 2.0
    settle_s: float = 6.0
    alert_wait_s: float = 60.0
    incident_s: float = 4.0
    resolve_wait_s: float = 45.0
    surge_s: float = 30.0
    quiet_s: float = 12.0
    loadtest_rate: float = 50.0
    loadtest_s: float = 4.0
    shop: shop.ShopSize = field(default_factory=shop.ShopSize)


NORMAL = Plan()
FAST = Plan(
    interval=1.0,
    settle_s=2.0,
    alert_wait_s=30.0,
    incident_s=2.0,
    resolve_wait_s=25.0,
    surge_s=12.0,
    quiet_s=6.0,
    loadtest_s=2.0,
)


@contextmanager
def _child(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is always stopped (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


class Demo:
    def __init__(self, plan: Plan, out_dir: Path, console: Console) -> None:
        self.plan = plan
        self.out = out_dir
        self.console = console
        self.started = time.monotonic()
        self.events: list[Event] = []
        self.web_port = free_port()

    # -- printing -----------------------------------------------------------------------------
    def say(self, text: str, style: str = "") -> None:
        elapsed = time.monotonic() - self.started
        self.events.append(Event(time.time(), text))
        line = f"[dim]\\[{elapsed:6.1f}s][/] " + (f"[{style}]{text}[/]" if style else text)
        self.console.print(line, highlight=False, soft_wrap=True)

    # -- the story ------------------------------------------------------------------------------
    def run(self) -> DemoFacts:
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.glob("querywatch.db*"):
            old.unlink()
        with ExitStack() as stack:
            pg = self._postgres(stack)
            self._load(pg)
            api_url = self._api(stack, pg)
            receiver = stack.enter_context(_receiver())
            store_path = self.out / "querywatch.db"
            self._watch(stack, pg, store_path, receiver)
            traffic = Traffic(api_url, shop_endpoints()).start()
            stack.callback(traffic.stop)
            store = stack.enter_context(Store(store_path))
            return self._acts(pg, api_url, receiver, store, traffic)
        raise AssertionError("unreachable")

    def _postgres(self, stack: ExitStack) -> LocalPostgres:
        pg = LocalPostgres({"max_connections": "100", "shared_buffers": "256MB"})
        stack.callback(pg.cleanup)
        pg.start()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if pg.has_extension("hypopg"):
                conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        kind = "embedded wheel" if "embedded" in str(pg.bindir) else "system binaries"
        self.say(
            f"PostgreSQL {pg.major_version} started on 127.0.0.1:{pg.port} ({kind}, {pg.bindir})"
        )
        return pg

    def _load(self, pg: LocalPostgres) -> None:
        loaded = shop.load(pg.dsn, self.plan.shop)
        rows = ", ".join(f"{n:,} {t}" for t, n in loaded.rows.items())
        self.say(f"shop loaded in {loaded.seconds:.1f} s: {rows}")

    def _api(self, stack: ExitStack, pg: LocalPostgres) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "querywatch.demo.api", "--dsn", pg.dsn, "--port", str(port)]
        stack.enter_context(_child(argv, self.out / "api.log"))
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _healthy(url), 30, "the shop API did not start (see querywatch-demo/api.log)")
        self.say(
            f"shop API (FastAPI + uvicorn) on {url}: product page, cart, checkout, order history"
        )
        return url

    def _watch(
        self, stack: ExitStack, pg: LocalPostgres, store: Path, receiver: AlertReceiver
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
        argv = [
            sys.executable,
            "-m",
            "querywatch",
            "watch",
            "--dsn",
            pg.dsn,
            "--store",
            str(store),
            "--interval",
            f"{self.plan.interval:g}s",
            "--alert-webhook",
            receiver.url,
            "--web",
            "--port",
            str(self.web_port),
        ]
        self._watch_proc = stack.enter_context(_child(argv, self.out / "watch.log", env))
        self.say(
            f"querywatch watch: snapshot every {self.plan.interval:g} s, activity every 1 s, "
            f"alerts to {receiver.url}"
        )
        self.say(f"dashboard (while the demo runs): http://127.0.0.1:{self.web_port}/")

    def _acts(
        self,
        pg: LocalPostgres,
        api_url: str,
        receiver: AlertReceiver,
        store: Store,
        traffic: Traffic,
    ) -> DemoFacts:
        facts = DemoFacts(events=self.events, fix=FIX)
        self._baseline(store, traffic)
        rollout = self._rollout(api_url, store)
        facts.rollout_at = rollout
        firing = self._await_alert(receiver, rollout, store, traffic)
        facts.firing = firing.body
        facts.alert_delay_s = firing.received_at - rollout
        self._one_shot(pg)
        self._let_it_burn(store, traffic)
        facts.fix = self._advise(pg, firing.body, store, rollout)
        culprit_sql = firing.body["diagnosis"]["culprits"][0]["query"]
        before = self._loadtest(pg, culprit_sql, "before the fix")
        fix_started, fix_s = self._fix(pg, facts.fix)
        facts.fix_at, facts.fix_seconds = fix_started, fix_s
        resolved = self._await_resolved(receiver, fix_started, store, traffic)
        facts.resolved_delay_s = resolved.received_at - fix_started if resolved else None
        facts.verification = self._verify(store, firing.body, rollout, fix_started)
        after = self._loadtest(pg, culprit_sql, "after the fix")
        facts.loadtest = _compare(before, after)
        for line in facts.loadtest.splitlines():
            self.say("   " + line)
        facts.surge = self._surge(store, traffic, receiver)
        facts.replica = self._replica(pg, store, firing.body, rollout, fix_started)
        facts.html_report = self._html_report(store, firing.body["incident"])
        self.say("stopping the traffic, the API, querywatch watch and PostgreSQL")
        return facts

    def _replica(
        self, pg: LocalPostgres, store: Store, firing: dict[str, Any], rollout: float, fixed: float
    ) -> dict[str, Any]:
        """Act 3: the primary gets a streaming replica; could the culprit have run there?"""
        from .redistribute import incident_figures, replica_act

        self.say("act 3: the shop's primary gets a streaming replica (pg_basebackup)", "bold")
        culprit = (firing["diagnosis"].get("culprits") or [{}])[0]
        figures = incident_figures(store, culprit, rollout + self.plan.interval, fixed)
        if figures is None:
            self.say("   no figures of the culprit between the rollout and the fix", "yellow")
            return {}

        def loadtest(dsn: str) -> Any:
            from ..loadtest import run_loadtest

            rate, seconds = self.plan.loadtest_rate, self.plan.loadtest_s
            emails = [(f"customer{1 + (i * 7919) % 100_000}@example.com",) for i in range(500)]
            return run_loadtest(
                dsn, figures.query, rate, seconds, concurrency=4, params=emails, drain_s=2.0
            )

        act = replica_act(pg, figures, loadtest, self.say)
        for line in act.lines:
            self.say("   " + line, "bold green" if line.startswith("the culprit could") else "")
        return act.as_json()

    def _html_report(self, store: Store, incident_id: str) -> str:
        """The dashboard's standalone HTML page of the incident, saved beside the Markdown one."""
        from ..web import render_incident_report

        path = self.out / "incident-report.html"
        path.write_text(render_incident_report(store, incident_id), encoding="utf-8")
        return str(path)

    def _status(self, store: Store, traffic: Traffic, label: str) -> None:
        self._check_watch()
        window = self.plan.interval * 2
        samples = traffic.window(window)
        history = [s.latency_ms for s in samples if s.endpoint == "history"]
        latencies = [s.latency_ms for s in samples]
        db_ms = _db_ms_per_s(store)
        self.say(
            f"{label:<9} api p95 {percentile(latencies, 95):6.0f} ms · history p95 "
            f"{percentile(history, 95):6.0f} ms · {len(samples) / window:5.1f} req/s · "
            f"database time {db_ms:6.1f} ms/s"
        )

    def _check_watch(self) -> None:
        """Stop at once, with its last words, when `querywatch watch` died."""
        proc = getattr(self, "_watch_proc", None)
        if proc is not None and proc.poll() is not None:
            lines = (self.out / "watch.log").read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise DemoError(f"demo: querywatch watch exited with code {proc.returncode}: {last}")

    def _baseline(self, store: Store, traffic: Traffic) -> None:
        self.say("act 1: steady traffic while querywatch learns the baseline", "bold")
        deadline = time.monotonic() + 40 * self.plan.interval
        while _learning(store):
            if time.monotonic() > deadline:
                raise DemoError(
                    "demo: querywatch did not finish learning (see querywatch-demo/watch.log)"
                )
            time.sleep(self.plan.interval)
            self._status(store, traffic, "baseline")
        end = time.monotonic() + self.plan.settle_s
        while time.monotonic() < end:
            time.sleep(self.plan.interval)
            self._status(store, traffic, "baseline")

    def _rollout(self, api_url: str, store: Store) -> float:
        httpx.post(
            f"{api_url}/admin/flags/{FLAG}", params={"on": "true"}, timeout=10
        ).raise_for_status()
        at = time.time()
        store.add_deploy(ROLLOUT_VERSION, at, f"{FLAG} rolled out")
        self.say(
            f"deploy {ROLLOUT_VERSION}: {FLAG} rolled out (flag on, deploy marker recorded)",
            "bold yellow",
        )
        self.say(
            "   the new order history looks the customer up once per order line: an N+1 on lower(email)"
        )
        return at

    def _await_alert(
        self, receiver: AlertReceiver, rollout: float, store: Store, traffic: Traffic
    ) -> Alert:
        deadline = time.monotonic() + self.plan.alert_wait_s
        while (alert := receiver.first("firing", rollout)) is None:
            if time.monotonic() > deadline:
                raise DemoError("demo: no alert arrived (see querywatch-demo/watch.log)")
            time.sleep(self.plan.interval / 2)
            self._status(store, traffic, "rollout")
        delay = alert.received_at - rollout
        self.say(
            f"ALERT (webhook) {delay:.1f} s after the rollout: incident {alert.body['incident']}",
            "bold red",
        )
        for line in _diagnosis_lines(alert.body["diagnosis"]):
            self.say("   " + line)
        return alert

    def _one_shot(self, pg: LocalPostgres) -> None:
        """A responder without querywatch set up runs the one-shot diagnosis: no store, no
        watcher, the long-run averages pg_stat_statements holds (a failure here is only told)."""
        sample = max(3.0, 4 * self.plan.interval)
        self.say(
            f"meanwhile a responder with nothing set up runs: querywatch diagnose --dsn ... --now "
            f"--sample {sample:.0f}s",
            "bold",
        )
        argv = [sys.executable, "-m", "querywatch", "diagnose", "--dsn", pg.dsn, "--now"]
        argv += ["--sample", f"{sample:.0f}s", "--format", "json"]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=sample + 60)
        except subprocess.TimeoutExpired:
            self.say("   the one-shot diagnosis did not answer in time", "yellow")
            return
        took = time.monotonic() - started
        if done.returncode != 0:
            self.say(f"   the one-shot diagnosis failed: {done.stderr.strip()[-200:]}", "yellow")
            return
        self.say(f"   answered in {took:.1f} s, with no history of its own:")
        for line in _diagnosis_lines(json.loads(done.stdout))[:3]:
            self.say("   " + line)

    def _let_it_burn(self, store: Store, traffic: Traffic) -> None:
        end = time.monotonic() + self.plan.incident_s
        while time.monotonic() < end:
            time.sleep(self.plan.interval)
            self._status(store, traffic, "incident")

    def _advise(self, pg: LocalPostgres, firing: dict[str, Any], store: Store, since: float) -> str:
        """Ask the advisor about the culprit; its best verified index becomes the fix."""
        from ..advise.advisor import advise_statement
        from ..advise.records import QueryStats

        culprit = firing["diagnosis"]["culprits"][0]
        rows, seconds = store.totals(store.servers()[0].id, since, time.time())
        mine = next((r.counters for r in rows if r.fingerprint == culprit["fingerprint"]), None)
        stats = (
            QueryStats(mine.calls, mine.rows, mine.exec_ms, seconds, mine.temp_blks_written)
            if mine is not None and seconds > 0
            else None
        )
        advice = advise_statement(
            pg.dsn, culprit["query"], stats.db_ms_per_s if stats else 0.0, stats=stats
        )
        self.say("querywatch advise on the culprit (generic plan, no parameter values):", "bold")
        if advice.summary is not None:
            self.say(
                f"   plan: {' -> '.join(advice.summary.nodes[:3])} (cost {advice.summary.total_cost:,.0f})"
            )
        for finding in advice.findings[:3]:
            self.say(f"   finding: {finding.message}")
        if not advice.indexes:
            self.say(f"   no index advice ({advice.error or 'none found'}); applying the known fix")
            return FIX
        best = advice.indexes[0]
        state = "verified with hypopg" if best.verified else "unverified (hypopg is not installed)"
        self.say(
            f"   suggested: {best.ddl} ({state}; expected saving {best.saving:.0%} "
            f"by {best.basis.replace('_', ' ')})"
        )
        return best.ddl

    def _loadtest(self, pg: LocalPostgres, sql: str, label: str) -> Any:
        """`querywatch loadtest` on the culprit alone (open model), with real customers' e-mails."""
        from ..loadtest import run_loadtest

        rate, seconds = self.plan.loadtest_rate, self.plan.loadtest_s
        emails = [(f"customer{1 + (i * 7919) % 100_000}@example.com",) for i in range(500)]
        result = run_loadtest(pg.dsn, sql, rate, seconds, concurrency=4, params=emails, drain_s=2.0)
        self.say(f"querywatch loadtest {label}: {rate:g}/s for {seconds:g} s on the culprit")
        return result

    def _fix(self, pg: LocalPostgres, ddl: str) -> tuple[float, float]:
        started = time.time()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(ddl.rstrip(";"))
        seconds = time.time() - started
        self.say(f"the fix: {ddl.rstrip(';')} ({seconds:.1f} s)", "bold green")
        return started, seconds

    def _await_resolved(
        self, receiver: AlertReceiver, since: float, store: Store, traffic: Traffic
    ) -> Alert | None:
        deadline = time.monotonic() + self.plan.resolve_wait_s
        while (alert := receiver.first("resolved", since)) is None:
            if time.monotonic() > deadline:
                self.say("no resolved notification yet: the incident is still open", "bold red")
                return None
            time.sleep(self.plan.interval)
            self._status(store, traffic, "recovery")
        self.say(
            f"RESOLVED (webhook) {alert.received_at - since:.1f} s after the fix", "bold green"
        )
        return alert

    def _verify(
        self, store: Store, firing: dict[str, Any], rollout: float, fixed: float
    ) -> dict[str, Any]:
        culprit = (firing["diagnosis"].get("culprits") or [{}])[0]
        fp = culprit.get("fingerprint")
        server = store.servers()[0].id
        before = _mean_ms(store, server, fp, rollout, fixed)
        after = _mean_ms(store, server, fp, fixed + 2 * self.plan.interval, time.time())
        if before and after:
            self.say(
                f"verified: the culprit's mean time fell from {before:.2f} ms to {after:.3f} ms "
                f"({before / after:,.0f}x faster)"
            )
        return {"fingerprint": fp, "mean_ms_before": before, "mean_ms_after": after}

    def _surge(self, store: Store, traffic: Traffic, receiver: AlertReceiver) -> dict[str, Any]:
        self.say("act 2: back to normal traffic first, then it triples on every endpoint", "bold")
        quiet_start = time.time() + self.plan.interval
        end = time.monotonic() + self.plan.quiet_s
        while time.monotonic() < end:
            time.sleep(self.plan.interval)
            self._status(store, traffic, "normal")
        self.say(
            'traffic x3 on every endpoint (the "DDoS" the team chased for hours)', "bold yellow"
        )
        traffic.scale(3.0)
        surge_start = time.time()
        end = time.monotonic() + self.plan.surge_s
        while time.monotonic() < end:
            time.sleep(self.plan.interval)
            self._status(store, traffic, "surge")
        surge_end = time.time()
        traffic.scale(1.0)
        result = _diagnose_between(store, quiet_start, surge_start + self.plan.interval, surge_end)
        doc = diagnosis_to_json(result)
        alerts = [
            a.body["diagnosis"]["verdict"]
            for a in receiver.alerts
            if a.received_at >= surge_start and a.status == "firing"
        ]
        self.say(f"diagnosis of the surge: {doc['verdict']}", "bold")
        self.say("   " + str(doc["summary"]))
        if alerts:
            self.say(f"   alerts during the surge: {', '.join(alerts)}")
        (self.out / "surge-diagnosis.json").write_text(json.dumps(doc, indent=2))
        return {"diagnosis": doc, "alerts": alerts}


@contextmanager
def _receiver() -> Iterator[AlertReceiver]:
    receiver = AlertReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(probe: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise DemoError(f"demo: {message}")
        time.sleep(0.1)


def _learning(store: Store) -> bool:
    states = [v for k, v in store.status().items() if k.startswith("detector:")]
    return not states or any(s.get("learning", True) for s in states)


def _last_summary(store: Store) -> IntervalSummary | None:
    servers = store.servers()
    if not servers:
        return None
    now = time.time()
    summaries = [s for s in store.summaries(servers[0].id, now - 30, now + 1) if s.complete]
    return summaries[-1] if summaries else None


def _db_ms_per_s(store: Store) -> float:
    """Database (execution) time per second of the last stored interval: 1000 = one busy core."""
    last = _last_summary(store)
    if last is None or last.seconds <= 0:
        return 0.0
    return sum(c.exec_ms for c in last.by_fingerprint.values()) / last.seconds


def _mean_ms(store: Store, server: int, fp: str | None, start: float, end: float) -> float | None:
    if fp is None:
        return None
    calls = ms = 0.0
    for s in store.summaries(server, start, end):
        c = s.by_fingerprint.get(fp)
        if c is not None and s.start >= start:
            calls, ms = calls + c.calls, ms + c.exec_ms
    return ms / calls if calls else None


def _diagnose_between(store: Store, base_start: float, start: float, end: float) -> Diagnosis:
    server = store.servers()[0].id
    baseline = [s for s in store.summaries(server, base_start, start) if s.end <= start]
    window = [s for s in store.summaries(server, start, end) if s.start >= start]
    fps = sorted({fp for s in window for fp in s.by_fingerprint})
    return diagnose(baseline, window, store.statements(fps), store.deploys(base_start, end))


def _compare(before: Any, after: Any) -> str:
    from ..loadtest import compare_text

    return str(compare_text(before, after))


def _diagnosis_lines(doc: dict[str, Any]) -> list[str]:
    lines = [f"verdict {doc['verdict']}: {doc['summary']}"]
    for n, c in enumerate(doc.get("culprits", [])[:2], 1):
        calls, mean = c["calls_per_s"], c["mean_ms"]
        lines.append(
            f"culprit {n} ({c['kind']}, {c['excess_share']:.0%} of the extra DB time): "
            f"{' '.join(c['query'].split())[:100]}"
        )
        lines.append(
            f"   calls/s {calls['baseline']:.1f} -> {calls['window']:.1f}, mean {mean['baseline']:.2f} -> "
            f"{mean['window']:.2f} ms, since {clock(_ts(c['onset'])) if c.get('onset') else '?'} UTC"
        )
    for d in doc.get("deploys", []):
        lines.append(f"deploy {d['version']}: {'SUSPECT' if d['suspect'] else 'not a suspect'}")
    lines.extend((doc.get("capacity") or {}).get("lines", [])[:2])  # headroom, capacity
    return lines


def _ts(iso_text: str) -> float:
    from ..durations import parse_time

    return parse_time(iso_text)
