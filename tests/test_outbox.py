"""The alert outbox: notifications survive a channel that is down (500, hanging, refusing) and a
restart, and are delivered exactly once each, in order, with an idempotency key.

Receivers are real HTTP servers on 127.0.0.1; the store is a real SQLite file. Backoffs are short
parameters here; the end-to-end test at the bottom runs `querywatch watch` through a 2-minute
outage with a kill -9 in the middle.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import storekit
from workload import Load, Statement, learned, wait_until

from querywatch.alerts import (
    AlertmanagerChannel,
    Channel,
    Dispatcher,
    Notification,
    OutboxSettings,
    PagerDutyChannel,
    WebhookChannel,
)
from querywatch.alerts.dispatcher import outbox_settings
from querywatch.alerts.outbox import channel_key
from querywatch.errors import ConfigError, StoreError
from querywatch.model import Incident, IncidentState
from querywatch.store import Store

T0 = 1_793_615_460.0
TIMEOUT = 0.5  # per POST; a hanging receiver sleeps longer than this
FAST = OutboxSettings(max_age=3600.0, max_backoff=0.2)


def note(status: str, incident: str = "inc-1") -> Notification:
    diagnosis = {"verdict": "query_regression", "summary": f"{incident} is slow", "culprits": []}
    at = T0 if status == "firing" else T0 + 60
    return Notification(status, incident, diagnosis, at, source="db1")  # type: ignore[arg-type]


# --- a receiver that can be down in each way -------------------------------------------------


@dataclass
class Hit:
    mode: str  # how the receiver answered: ok, 500, hang
    key: str | None
    body: Any


@dataclass
class Flaky:
    """A webhook on a fixed 127.0.0.1 port that answers ``mode``: ``ok`` (200), ``500``, ``400``,
    ``hang`` (answers only after the sender gave up) or ``refused`` (nothing listens)."""

    mode: str = "ok"
    hang_s: float = TIMEOUT * 3  # longer than the sender's timeout
    hits: list[Hit] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._server: ThreadingHTTPServer | None = None
        self.set(self.mode)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "refused" and self._server is not None:
            self._stop()
        elif mode != "refused" and self._server is None:
            self._start()

    def delivered(self) -> list[Any]:
        """Bodies answered with a 2xx while the sender waited: what a receiver acted on."""
        with self.cond:
            return [h.body for h in self.hits if h.mode == "ok"]

    def wait_delivered(self, count: int, timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.delivered()) >= count, timeout)

    def _start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mode = owner.mode
                with owner.cond:
                    owner.hits.append(
                        Hit(mode, self.headers.get("Idempotency-Key"), json.loads(raw))
                    )
                    owner.cond.notify_all()
                if mode == "hang":
                    time.sleep(owner.hang_s)
                self.send_response({"500": 500, "400": 400}.get(mode, 200))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        self._server = server

    def _stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def close(self) -> None:
        if self._server is not None:
            self._stop()


@pytest.fixture
def flaky() -> Iterator[Callable[..., Flaky]]:
    made: list[Flaky] = []

    def make(mode: str = "ok", hang_s: float = TIMEOUT * 3) -> Flaky:
        made.append(Flaky(mode, hang_s))
        return made[-1]

    yield make
    for f in made:
        f.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "qw.db") as st:
        yield st


def outboxed(
    store: Store, channels: Sequence[Channel], settings: OutboxSettings = FAST, **kw: Any
) -> Dispatcher:
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("backoff", 0.05)
    return Dispatcher(channels, store=store, outbox=settings, **kw)


def eventually(probe: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def states(store: Store, channel: Channel) -> list[tuple[str, str]]:
    return [(r.entry.status, r.state) for r in store.outbox_rows(channel_key(channel))]


# --- delivery through an outage --------------------------------------------------------------


@pytest.mark.parametrize("down", ["500", "hang", "refused"])
def test_outage_then_back_delivers_firing_and_resolved_once_in_order(
    down: str, flaky: Callable[..., Flaky], store: Store
) -> None:
    hook = flaky(down)
    channel = WebhookChannel(hook.url)
    with outboxed(store, [channel]) as d:
        d.notify(note("firing"))
        d.notify(note("resolved"))
        time.sleep(1.5)  # several tries fail meanwhile
        assert hook.delivered() == []
        assert states(store, channel) == [("firing", "pending"), ("resolved", "pending")]
        hook.set("ok")
        assert hook.wait_delivered(2), f"not delivered after the {down} outage"
        assert d.flush(5.0)
        time.sleep(0.3)  # anything extra would come now
    assert [b["status"] for b in hook.delivered()] == ["firing", "resolved"]
    assert states(store, channel) == [("firing", "sent"), ("resolved", "sent")]
    tries = [h for h in hook.hits if h.mode != "ok"]
    if down != "refused":
        assert len(tries) >= 2, "the receiver saw the failed tries"
        assert all(h.body["status"] == "firing" for h in tries), "no resolved before its firing"
    assert {h.key for h in hook.hits} == {"querywatch/inc-1/firing", "querywatch/inc-1/resolved"}


def test_restart_while_down_then_back_delivers_each_once(
    tmp_path: Path, flaky: Callable[..., Flaky]
) -> None:
    hook = flaky("refused")
    channel = WebhookChannel(hook.url)
    with Store(tmp_path / "qw.db") as first, outboxed(first, [channel]) as d:
        d.notify(note("firing"))
        time.sleep(0.5)
        d.notify(note("resolved"))
        time.sleep(0.5)
    assert hook.hits == []
    hook.set("500")
    with Store(tmp_path / "qw.db") as second, outboxed(second, [channel]) as d:
        time.sleep(1.0)
        assert hook.delivered() == [] and len(hook.hits) >= 2, "the restarted lane tries again"
        hook.set("ok")
        assert hook.wait_delivered(2)
        assert d.flush(5.0)
        time.sleep(0.3)
        assert states(second, channel) == [("firing", "sent"), ("resolved", "sent")]
    assert [b["status"] for b in hook.delivered()] == ["firing", "resolved"]


def test_without_a_store_the_dispatcher_sends_from_memory_with_the_same_key(
    flaky: Callable[..., Flaky],
) -> None:
    hook = flaky("500")
    with Dispatcher([WebhookChannel(hook.url)], timeout=TIMEOUT, retries=1, backoff=0.01) as d:
        d.notify(note("firing"))
        assert d.flush(5.0)
    assert [h.key for h in hook.hits] == ["querywatch/inc-1/firing"] * 2, "one try, one retry"
    assert d.status()[0].failed == 1, "then given up, as before the outbox"


def test_a_clock_set_back_does_not_hold_a_retry_for_hours(
    flaky: Callable[..., Flaky], store: Store
) -> None:
    hook = flaky("500")
    channel = WebhookChannel(hook.url)
    ahead = outboxed(store, [channel], clock=lambda: time.time() + 3600.0)
    ahead.notify(note("firing"))
    assert eventually(lambda: bool(hook.hits))
    ahead.close()
    hook.set("ok")
    with outboxed(store, [channel]):  # the clock is an hour earlier now
        assert hook.wait_delivered(1, timeout=5.0), "the retry waited for the old clock"


def test_a_repeated_notification_is_stored_and_sent_once(
    flaky: Callable[..., Flaky], store: Store
) -> None:
    hook = flaky("ok")
    channel = WebhookChannel(hook.url)
    with outboxed(store, [channel]) as d:
        entries = d.entries(note("firing"))
        assert len(entries) == 1 and entries[0].key == "querywatch/inc-1/firing"
        incident = Incident("inc-1", "fp", IncidentState.FIRING, T0, T0, None, ("calls_spike",))
        store.save_incident(store.server("db1").id, incident, {}, notify=entries)
        for _ in range(3):  # the monitor's notify after the save, a re-fired incident...
            d.notify(note("firing"))
        assert hook.wait_delivered(1)
        assert d.flush(5.0)
        time.sleep(0.3)
    assert len(hook.hits) == 1
    assert len(store.outbox_rows(channel_key(channel))) == 1


def test_each_channel_has_its_own_rows_and_pace(flaky: Callable[..., Flaky], store: Store) -> None:
    down, up = flaky("hang"), flaky("ok")
    slow, fast = WebhookChannel(down.url), WebhookChannel(up.url)
    with outboxed(store, [slow, fast]) as d:
        began = time.monotonic()
        d.notify(note("firing"))
        assert time.monotonic() - began < 0.1, "notify only writes and wakes"
        d.notify(note("resolved"))
        assert up.wait_delivered(2, timeout=5.0)
        assert down.delivered() == [], "the good channel did not wait for the hanging one"
        assert states(store, slow) == [("firing", "pending"), ("resolved", "pending")]
        assert eventually(lambda: states(store, fast) == [("firing", "sent"), ("resolved", "sent")])
        status = {s.target: s for s in d.status()}
        assert status[fast.target].sent == 2 and status[fast.target].pending == 0
    summary = {s.channel: s for s in store.outbox_summary()}
    assert summary[channel_key(slow)].pending == 2 and summary[channel_key(fast)].sent == 2
    assert summary[channel_key(slow)].oldest_pending_at is not None


def test_rows_older_than_max_age_expire_and_are_logged_once(
    flaky: Callable[..., Flaky], store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    hook = flaky("500")
    channel = WebhookChannel(hook.url)
    short = OutboxSettings(max_age=0.6, max_backoff=0.1)
    with caplog.at_level(logging.INFO, logger="querywatch.alerts"):
        with outboxed(store, [channel], short) as d:
            d.notify(note("firing"))
            time.sleep(1.5)
            tries = len(hook.hits)
            time.sleep(0.3)
            assert len(hook.hits) == tries, "an expired row is not tried again"
            assert d.status()[0].dropped == 1 and d.status()[0].pending == 0
        with outboxed(store, [channel], short):  # a restart finds nothing to send or expire
            time.sleep(0.3)
    assert states(store, channel) == [("firing", "expired")]
    expired = [r for r in caplog.records if "expired" in r.getMessage()]
    assert len(expired) == 1 and "HTTP 500" in expired[0].getMessage()
    first = [r for r in caplog.records if "not delivered yet" in r.getMessage()]
    assert len(first) == 1 and first[0].levelno == logging.WARNING, "one warning, then debug"
    assert store.outbox_summary()[0].expired == 1


def test_a_channel_no_longer_configured_expires_at_start(
    flaky: Callable[..., Flaky], store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    old = WebhookChannel(flaky("refused").url)
    with outboxed(store, [old], OutboxSettings(max_age=0.3, max_backoff=10.0)) as d:
        d.notify(note("firing"))
        time.sleep(0.2)
    time.sleep(0.3)
    with (
        caplog.at_level(logging.WARNING, logger="querywatch.alerts"),
        outboxed(store, [], OutboxSettings(max_age=0.3)),
    ):
        pass
    assert states(store, old) == [("firing", "expired")]
    assert sum("expired" in r.getMessage() for r in caplog.records) == 1


def test_a_refused_request_fails_at_once_and_the_next_goes_out(
    flaky: Callable[..., Flaky], store: Store
) -> None:
    hook = flaky("400")
    channel = WebhookChannel(hook.url)
    with outboxed(store, [channel]) as d:
        d.notify(note("firing", "a"))
        assert d.flush(5.0)
        hook.set("ok")
        d.notify(note("firing", "b"))
        assert hook.wait_delivered(1)
        assert d.flush(5.0)
    assert len(hook.hits) == 2, "a 400 is not retried"
    assert states(store, channel) == [("firing", "failed"), ("firing", "sent")]
    assert store.outbox_rows(channel_key(channel))[0].last_error == "HTTP 400: "


def test_pagerduty_and_alertmanager_repeat_harmlessly(
    flaky: Callable[..., Flaky], store: Store
) -> None:
    """A crash between the POST and marking the row sent sends it again: PagerDuty dedups on
    dedup_key, Alertmanager on the labels; both carry the same ones on every try."""
    hook = flaky("hang")
    pd = PagerDutyChannel("R0UT1NGKEY0123456789abcdef012345", hook.url)
    am = AlertmanagerChannel(f"http://127.0.0.1:{hook.port}", resend_interval=None)
    with outboxed(store, [pd, am]) as d:
        d.notify(note("firing"))
        time.sleep(2.0)
        hook.set("ok")
        assert hook.wait_delivered(2)
    events = [h.body for h in hook.hits if isinstance(h.body, dict)]
    alerts = [h.body[0] for h in hook.hits if isinstance(h.body, list)]
    assert len(events) >= 2 and len(alerts) >= 2, "each was tried while the receiver hung"
    assert {e["dedup_key"] for e in events} == {"querywatch/inc-1"}
    assert len({json.dumps(a["labels"], sort_keys=True) for a in alerts}) == 1


def test_alertmanager_firing_is_resent_from_the_outbox_until_resolved(
    flaky: Callable[..., Flaky], store: Store
) -> None:
    hook = flaky("ok")
    am = AlertmanagerChannel(f"http://127.0.0.1:{hook.port}", resend_interval=0.1)
    with outboxed(store, [am]) as d:
        d.notify(note("firing"))
        assert hook.wait_delivered(3), "a firing alert is re-sent so Alertmanager keeps it"
        d.notify(note("resolved"))
        assert d.flush(5.0)
        count = len(hook.hits)
        time.sleep(0.4)
    assert len(hook.hits) == count, "nothing is re-sent after the resolve"
    assert "endsAt" in hook.delivered()[-1][0]
    assert states(store, am) == [("firing", "sent"), ("resolved", "sent")]


def test_store_maintenance_prunes_old_done_rows_only(store: Store) -> None:
    from querywatch.store.outbox import KEEP_S, SENT

    channel = WebhookChannel("http://127.0.0.1:9/hook")
    assert store.add_outbox(_entries(channel, "firing") + _entries(channel, "resolved")) == 2
    first, second = store.outbox_rows(channel_key(channel))
    assert store.outbox_done(first.id, SENT, T0)
    assert not store.outbox_done(first.id, SENT, T0), "a done row is not closed twice"
    store.maintain(now=T0 + KEEP_S + 1)
    assert [r.id for r in store.outbox_rows(channel_key(channel))] == [second.id]


def _entries(channel: Channel, status: str) -> list[Any]:
    from querywatch.alerts.outbox import entries

    return entries([channel], note(status), T0)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, OutboxSettings()),
        ({"max_age": "2h", "max_backoff": 5}, OutboxSettings(7200.0, 5.0)),
    ],
)
def test_alerts_table_of_the_settings(table: dict[str, Any], expected: OutboxSettings) -> None:
    assert outbox_settings(table) == expected


@pytest.mark.parametrize(
    "table", [{"max_age": "soon"}, {"max_age": 0}, {"max_backoff": -1}, {"retries": 3}]
)
def test_bad_alerts_table_is_a_one_line_config_error(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        outbox_settings(table)
    assert "\n" not in str(caught.value) and "[alerts]" in str(caught.value)


# --- `querywatch status` shows what is pending, from the store --------------------------------


def status_of(store: Path, fmt: str = "json") -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUERYWATCH_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-m", "querywatch", "status", "--store", str(store), "--format", fmt],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout) if fmt == "json" else result.stdout


def test_status_shows_pending_alerts_per_channel(
    tmp_path: Path, flaky: Callable[..., Flaky]
) -> None:
    down, up = flaky("refused"), flaky("ok")
    path = tmp_path / "qw.db"
    with Store(path) as st, outboxed(st, [WebhookChannel(down.url), WebhookChannel(up.url)]) as d:
        d.notify(note("firing"))
        d.notify(note("resolved"))
        assert up.wait_delivered(2)
        assert eventually(lambda: st.outbox_summary()[0].attempts >= 2)
    shown = {c["target"]: c for c in status_of(path)["outbox"]}
    pending, done = shown[down.url], shown[up.url]
    assert (pending["pending"], pending["sent"], pending["name"]) == (2, 0, "webhook")
    assert "ConnectError" in pending["last_error"] and pending["failed_tries"] >= 2
    assert pending["oldest_pending_age_s"] >= 0 and pending["oldest_pending_at"].endswith("Z")
    assert (done["pending"], done["sent"], done["last_error"]) == (0, 2, None)
    text = status_of(path, "text")
    assert f"alert outbox webhook {down.url}: 2 pending for " in text
    assert f"alert outbox webhook {up.url}: nothing pending; 2 sent" in text


# --- end to end: `querywatch watch` through a 2-minute outage with a kill -9 ------------------

OUTAGE_S = 120.0  # the acceptance: the webhook is down for 2 minutes during an incident


@pytest.fixture(scope="module")
def items(pg_dsn: str) -> str:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS ob_items")
        c.execute(
            "CREATE TABLE ob_items AS SELECT g AS id, g % 100 AS category, md5(g::text) AS note "
            "FROM generate_series(1, 50000) g"
        )
        c.execute("ALTER TABLE ob_items ADD PRIMARY KEY (id)")
        c.execute("ANALYZE ob_items")
    return pg_dsn


def steady() -> dict[str, Statement]:
    return {
        "lookup": Statement(
            "SELECT * FROM ob_items WHERE id = %s", 100, lambda r: (r.randint(1, 50000),)
        ),
        "scan": Statement(
            "SELECT count(*) FROM ob_items WHERE note LIKE %s",
            3,
            lambda r: (f"%{r.randint(10, 99)}%",),
        ),
        "hot": Statement(
            "SELECT count(*) FROM ob_items WHERE category = %s", 4, lambda r: (r.randint(0, 99),)
        ),
    }


@contextmanager
def watching(dsn: str, store: Path, hook: str) -> Iterator[subprocess.Popen[str]]:
    """`querywatch watch` at 1 s intervals, retrying alerts at most 2 s apart ([alerts] in
    its querywatch.toml); the test may SIGKILL it, else it is stopped with SIGTERM (exit 0)."""
    config = store.with_name("querywatch.toml")
    config.write_text('[alerts]\nmax_backoff = "2s"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYWATCH_")}
    env |= {"QUERYWATCH_ACTIVITY_INTERVAL": "0.25", "QUERYWATCH_CONFIG": str(config)}
    args = ["watch", "--dsn", dsn, "--store", str(store), "--interval", "1s"]
    with store.with_suffix(f".{time.monotonic_ns()}.log").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querywatch", *args, "--alert-webhook", hook],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    text = Path(out.name).read_text()
    assert "Traceback" not in text, text
    assert code in (0, -signal.SIGKILL), text


def outbox_states(store: Path) -> list[tuple[str, str, str]]:
    try:
        rows = storekit.rows(store, "SELECT incident, status, state FROM outbox ORDER BY id")
    except StoreError:
        return []
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


@pytest.mark.slow
def test_watch_through_a_two_minute_outage_and_a_kill_delivers_each_once(
    items: str, tmp_path: Path, flaky: Callable[..., Flaky]
) -> None:
    hook = flaky("500", hang_s=8.0)  # watch's POST timeout is 5 s
    store = tmp_path / "qw.db"
    modes: list[tuple[str, float]] = []
    with Load(items, steady()) as load:
        with watching(items, store, hook.url) as first:
            assert learned(store), "the detector never left its learning period"
            time.sleep(3)
            load.set_rate("hot", 40)
            assert wait_until(lambda: outbox_states(store), 20), "no incident fired"
            down_at = time.monotonic()
            modes.append(("500", down_at))
            time.sleep(5)
            load.set_rate("hot", 4)
            hook.set("hang")
            modes.append(("hang", time.monotonic()))
            assert wait_until(lambda: len(outbox_states(store)) == 2, 30), "no resolve"
            time.sleep(max(0.0, down_at + OUTAGE_S / 2 - time.monotonic()))
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        hook.set("refused")
        modes.append(("refused", time.monotonic()))
        during, then = status_of(store)["outbox"], len(outbox_states(store))
        with watching(items, store, hook.url):
            time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
            hook.set("ok")
            back_at = time.monotonic()
            stored = len(outbox_states(store))  # 2, or more if the load made more incidents
            assert hook.wait_delivered(stored, timeout=30), "not delivered after the outage"
            delivered_after = time.monotonic() - back_at
            time.sleep(3)  # a duplicate would come now
    after = status_of(store)["outbox"]
    bodies = hook.delivered()
    rows = outbox_states(store)
    assert [(b["incident"], b["status"], "sent") for b in bodies] == rows, "each once, in order"
    incidents = {b["incident"] for b in bodies}
    for incident in incidents:
        statuses = [b["status"] for b in bodies if b["incident"] == incident]
        assert statuses in (["firing"], ["firing", "resolved"]), (incident, statuses)
    hot = [b for b in bodies if "category = $1" in b["diagnosis"]["summary"]]
    assert [b["status"] for b in hot] == ["firing", "resolved"], "the test's incident"
    assert [c["pending"] for c in during] == [then], "status showed them pending while down"
    assert [(c["pending"], c["sent"]) for c in after] == [(0, len(rows))]
    tried = {mode: sum(h.mode == mode for h in hook.hits) for mode in ("500", "hang")}
    assert tried["500"] >= 2 and tried["hang"] >= 2, tried
    first = bodies[0]
    assert all(h.body == first for h in hook.hits if h.mode != "ok"), "oldest first, no skipping"
    print(
        f"outage {back_at - down_at:.0f} s "
        f"({', '.join(m for m, _ in modes)}, watch killed at {OUTAGE_S / 2:.0f} s), "
        f"failed tries {tried}, delivered {delivered_after:.1f} s after the webhook came back"
    )
