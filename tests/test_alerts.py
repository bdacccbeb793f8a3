"""Alert channels and the dispatcher, against real HTTP servers on 127.0.0.1.

Each channel's request is checked against its service's documented format: the contract webhook,
Slack incoming webhooks (Block Kit), PagerDuty Events API v2 and Alertmanager API v2.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from querywatch.alerts import (
    AlertmanagerChannel,
    Channel,
    Dispatcher,
    Notification,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    alertmanager,
    channels_from_settings,
    pagerduty,
    slack,
    webhook,
)
from querywatch.errors import ConfigError

QUERY = "SELECT id, total FROM orders WHERE lower(email) = $1 AND created_at < $2"
SUMMARY = (
    "87% of the extra database time since 10:31 comes from one query; its calls per second "
    "went up 14x right after deploy v2.3; traffic rose only 1.2x, so this is not a traffic surge."
)
T_FIRE = 1_793_615_460.0  # 2026-11-02T10:31:00Z
T_RESOLVE = T_FIRE + 600.0


def sample_diagnosis(verdict: str = "query_regression") -> dict[str, Any]:
    """A diagnosis shaped like DESIGN.md's ``diagnose --format json`` object."""
    culprits = [
        {
            "queryid": "-4383120987654321",
            "fingerprint": "a1b2c3d4e5f60718",
            "query": QUERY,
            "kind": "frequency",
            "excess_share": 0.87,
            "calls_per_s": {"baseline": 2.0, "window": 28.0},
            "mean_ms": {"baseline": 40.1, "window": 41.0},
            "onset": "2026-11-02T10:31:00Z",
            "evidence": ["calls/s x14 since 10:31", "seq scan on orders (2.1M rows)"],
        },
        {
            "queryid": "77",
            "fingerprint": "ffee",
            "query": "SELECT 1",
            "kind": "latency",
            "excess_share": 0.05,
            "calls_per_s": {"baseline": 1.0, "window": 1.0},
            "mean_ms": {"baseline": 1.0, "window": 2.0},
            "onset": "2026-11-02T10:32:00Z",
            "evidence": [],
        },
    ]
    return {
        "window": {"start": "2026-11-02T10:30:00Z", "end": "2026-11-02T10:40:00Z"},
        "baseline": {"start": "2026-11-02T10:00:00Z", "end": "2026-11-02T10:30:00Z"},
        "verdict": verdict,
        "summary": SUMMARY,
        "traffic_factor": 1.2,
        "culprits": culprits if verdict != "healthy" else [],
        "deploys": [{"version": "v2.3", "at": "2026-11-02T10:30:00Z", "suspect": True}],
    }


def note(status: str = "firing", incident: str = "inc-1", **kw: Any) -> Notification:
    at = T_FIRE if status == "firing" else T_RESOLVE
    return Notification(status, incident, sample_diagnosis(), at, **kw)  # type: ignore[arg-type]


# --- a recording HTTP server ---------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: Mapping[str, str]
    body: Any


@dataclass
class Recorder:
    """What a test server received, and how it answers: ``statuses`` in turn, then ``default``."""

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    gate: threading.Event | None = None  # when set, each answer waits for the gate to open
    requests: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, item: Received) -> int:
        with self.cond:
            self.requests.append(item)
            self.cond.notify_all()
            return self.statuses.pop(0) if self.statuses else self.default

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.requests) >= count, timeout)

    def bodies(self) -> list[Any]:
        with self.cond:
            return [r.body for r in self.requests]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timed-out sender) is expected here, not an error."""


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = recorder.record(Received(self.path, dict(self.headers), json.loads(raw)))
            if recorder.gate is not None:
                recorder.gate.wait(30)
            answer = json.dumps({"status": "success", "message": "Event processed"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


Serve = Callable[..., tuple[str, Recorder]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start recording servers on 127.0.0.1: ``serve(statuses=[500, 200]) -> (base_url, rec)``."""
    started: list[tuple[_QuietServer, Recorder]] = []

    def start(**kw: Any) -> tuple[str, Recorder]:
        recorder = Recorder(**kw)
        server = _QuietServer(("127.0.0.1", 0), _handler(recorder))
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        started.append((server, recorder))
        return f"http://127.0.0.1:{server.server_address[1]}", recorder

    yield start
    for server, recorder in started:
        if recorder.gate is not None:
            recorder.gate.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def dispatch() -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(channels: Sequence[Channel], **kw: Any) -> Dispatcher:
        kw.setdefault("timeout", 2.0)
        kw.setdefault("backoff", 0.01)
        made.append(Dispatcher(channels, **kw))
        return made[-1]

    yield make
    for d in made:
        d.close()


def send_all(d: Dispatcher, *notes: Notification) -> None:
    for n in notes:
        d.notify(n)
    assert d.flush(10.0)


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"{text!r} has no time zone"
    return value


# --- the contract webhook ------------------------------------------------------------------


def test_webhook_receives_exactly_the_contract_payload(serve: Serve, dispatch: Any) -> None:
    url, rec = serve()
    d = dispatch([WebhookChannel(url + "/hook")])
    send_all(d, note("firing"), note("resolved"))
    assert [r.path for r in rec.requests] == ["/hook", "/hook"]
    assert rec.requests[0].headers["Content-Type"] == "application/json"
    firing, resolved = rec.bodies()
    keys = {"status", "incident", "diagnosis", "docs_url"}  # the contract + the docs link
    assert set(firing) == keys
    docs_url = "http://127.0.0.1:8080/docs/reference/verdicts/query_regression/"
    assert firing == {
        "status": "firing",
        "incident": "inc-1",
        "diagnosis": sample_diagnosis(),
        "docs_url": docs_url,
    }
    assert resolved["status"] == "resolved" and set(resolved) == keys
    assert d.status()[0].sent == 2 and d.status()[0].failed == 0


# --- Slack ---------------------------------------------------------------------------------


def _check_slack(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Block Kit rules for incoming webhooks: fallback text, <= 50 blocks, typed text objects."""
    assert isinstance(body["text"], str) and body["text"]
    blocks = body["blocks"]
    assert isinstance(blocks, list) and 0 < len(blocks) <= 50
    for block in blocks:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= 3000
        else:
            assert block["type"] == "context"
            assert 0 < len(block["elements"]) <= 10
            assert all(e["type"] == "mrkdwn" and e["text"] for e in block["elements"])
    return list(blocks)


def test_slack_receives_blocks_with_summary_and_culprit(serve: Serve, dispatch: Any) -> None:
    url, rec = serve()
    d = dispatch([SlackChannel(url + "/services/T0/B0/secret")])
    send_all(d, note("firing", link="http://127.0.0.1:8080/incidents/inc-1"), note("resolved"))
    firing, resolved = rec.bodies()
    blocks = _check_slack(firing)
    assert blocks[0]["type"] == "header" and "FIRING" in blocks[0]["text"]["text"]
    assert SUMMARY in blocks[1]["text"]["text"]
    culprit = blocks[2]["text"]["text"]
    escaped = QUERY.replace("<", "&lt;")
    assert escaped in culprit and "87%" in culprit and "calls/s x14 since 10:31" in culprit
    assert "<http://127.0.0.1:8080/incidents/inc-1|" in blocks[-1]["elements"][0]["text"]
    assert SUMMARY in firing["text"]
    resolved_blocks = _check_slack(resolved)
    assert "RESOLVED" in resolved_blocks[0]["text"]["text"]


def test_slack_escapes_markup_and_clips_long_text() -> None:
    diagnosis = sample_diagnosis() | {"summary": "<!channel> & " + "x" * 5000}
    body = slack.payload(Notification("firing", "i" * 300, diagnosis, T_FIRE))
    blocks = _check_slack(body)
    assert "<!channel>" not in json.dumps(blocks) and "&lt;!channel&gt; &amp; " in json.dumps(
        blocks
    )
    assert blocks[1]["text"]["text"].endswith("…")


# --- PagerDuty -----------------------------------------------------------------------------

ROUTING_KEY = "R0123456789abcdef0123456789abcde"


def test_pagerduty_trigger_then_resolve_with_the_same_dedup_key(
    serve: Serve, dispatch: Any
) -> None:
    url, rec = serve(default=202)
    d = dispatch([PagerDutyChannel(ROUTING_KEY, url + "/v2/enqueue")])
    send_all(d, note("firing", source="db1:5432/shop"), note("resolved", source="db1:5432/shop"))
    assert [r.path for r in rec.requests] == ["/v2/enqueue", "/v2/enqueue"]
    trigger, resolve = rec.bodies()
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert isinstance(trigger["dedup_key"], str) and 0 < len(trigger["dedup_key"]) <= 255
    p = trigger["payload"]
    assert {"summary", "source", "severity"} <= set(p)
    assert p["summary"] == SUMMARY and len(p["summary"]) <= 1024
    assert p["source"] == "db1:5432/shop"
    assert p["severity"] == "critical"
    assert parse_time(p["timestamp"]).timestamp() == T_FIRE
    assert all(isinstance(p[k], str) and p[k] for k in ("component", "group", "class"))
    assert p["class"] == "query_regression"
    assert QUERY in p["custom_details"]["culprit"]
    assert p["custom_details"]["culprit_detail"]["fingerprint"] == "a1b2c3d4e5f60718"
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    assert d.status()[0].sent == 2


@pytest.mark.parametrize(
    ("verdict", "severity"),
    [
        ("query_regression", "critical"),
        ("lock_contention", "critical"),
        ("traffic_surge", "warning"),
        ("healthy", "info"),
        ("something_new", "error"),
    ],
)
def test_pagerduty_severity_is_one_of_the_documented_values(verdict: str, severity: str) -> None:
    n = Notification("firing", "i", sample_diagnosis(verdict), T_FIRE)
    body = pagerduty.payload(n, ROUTING_KEY)
    assert body["payload"]["severity"] == severity  # type: ignore[index]


def test_pagerduty_summary_is_clipped_to_1024() -> None:
    n = Notification("firing", "i", {"summary": "s" * 2000}, T_FIRE)
    summary = pagerduty.payload(n, ROUTING_KEY)["payload"]["summary"]  # type: ignore[index]
    assert len(summary) == 1024 and summary.endswith("…")


# --- Alertmanager --------------------------------------------------------------------------


def _check_alertmanager(body: Any) -> Mapping[str, Any]:
    """API v2 postableAlerts: an array; labels (required) and annotations map strings to strings."""
    assert isinstance(body, list) and len(body) == 1
    alert = body[0]
    assert set(alert) <= {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert alert["labels"]["alertname"]
    for key in ("labels", "annotations"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in alert[key].items())
    return dict(alert)


def test_alertmanager_receives_firing_then_resolved_with_ends_at(
    serve: Serve, dispatch: Any
) -> None:
    url, rec = serve()
    d = dispatch([AlertmanagerChannel(url + "/")])
    started = note("firing", link="http://127.0.0.1:8080/incidents/inc-1")
    ended = note("resolved", started_at=T_FIRE, link="http://127.0.0.1:8080/incidents/inc-1")
    send_all(d, started, ended)
    assert [r.path for r in rec.requests] == ["/api/v2/alerts", "/api/v2/alerts"]
    firing, resolved = (_check_alertmanager(b) for b in rec.bodies())
    assert firing["annotations"]["summary"] == SUMMARY
    assert QUERY in firing["annotations"]["description"]
    assert parse_time(firing["startsAt"]).timestamp() == T_FIRE
    assert "endsAt" not in firing
    assert firing["generatorURL"] == "http://127.0.0.1:8080/incidents/inc-1"
    assert resolved["labels"] == firing["labels"], "a resolve must match the firing alert's labels"
    assert parse_time(resolved["endsAt"]).timestamp() == T_RESOLVE
    assert parse_time(resolved["startsAt"]) <= parse_time(resolved["endsAt"])


def test_alertmanager_resolved_without_known_start_omits_starts_at() -> None:
    alert = alertmanager.payload(note("resolved"))[0]
    assert "startsAt" not in alert and parse_time(str(alert["endsAt"])).timestamp() == T_RESOLVE


def test_alertmanager_firing_incident_is_resent_until_resolved(serve: Serve, dispatch: Any) -> None:
    url, rec = serve()
    d = dispatch([AlertmanagerChannel(url, resend_interval=0.05)])
    d.notify(note("firing"))
    assert rec.wait_for(3), "a firing alert is re-sent so Alertmanager does not time it out"
    d.notify(note("resolved"))
    assert d.flush(5.0)
    count = len(rec.requests)
    time.sleep(0.2)
    bodies = rec.bodies()
    assert len(bodies) == count, "nothing is re-sent after the resolve"
    assert all("endsAt" not in b[0] for b in bodies[:-1]) and "endsAt" in bodies[-1][0]


# --- every format carries the same summary and culprit ------------------------------------


@pytest.mark.parametrize(
    "render",
    [
        webhook.payload,
        slack.payload,
        lambda n: pagerduty.payload(n, ROUTING_KEY),
        alertmanager.payload,
    ],
    ids=["webhook", "slack", "pagerduty", "alertmanager"],
)
def test_every_format_carries_summary_and_culprit(render: Callable[[Notification], Any]) -> None:
    text = json.dumps(render(note("firing")))
    assert SUMMARY in text
    assert "lower(email) = $1" in text
    assert "SELECT 1" in text  # every culprit: one incident may hold several statements


def test_healthy_diagnosis_without_culprits_still_formats() -> None:
    n = Notification("firing", "i", sample_diagnosis("healthy"), T_FIRE)
    blocks: Any = slack.payload(n)["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "context"]
    event: Any = pagerduty.payload(n, ROUTING_KEY)
    assert event["payload"]["component"] == "postgresql"
    alert: Any = alertmanager.payload(n)[0]
    assert alert["annotations"]["description"] == SUMMARY


# --- retries, timeouts and isolation -------------------------------------------------------


def test_server_failing_twice_gets_three_attempts_and_succeeds(serve: Serve, dispatch: Any) -> None:
    url, rec = serve(statuses=[500, 500])
    d = dispatch([WebhookChannel(url)], retries=3, backoff=0.05)
    began = time.monotonic()
    send_all(d, note())
    assert len(rec.requests) == 3
    assert time.monotonic() - began >= 0.05 + 0.1, "backoff doubles: 0.05 s then 0.1 s"
    status = d.status()[0]
    assert (status.sent, status.failed, status.last_error) == (1, 0, None)
    assert status.last_success_at is not None


def test_retries_are_bounded_and_client_errors_are_not_retried(
    serve: Serve, dispatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    down, rec_down = serve(default=503)
    bad, rec_bad = serve(default=400)
    d = dispatch([WebhookChannel(down), SlackChannel(bad)], retries=2)
    with caplog.at_level(logging.WARNING, logger="querywatch.alerts"):
        send_all(d, note())
    assert len(rec_down.requests) == 3, "one try and two retries"
    assert len(rec_bad.requests) == 1, "a 400 means the request is wrong: no retry"
    down_status, bad_status = d.status()
    assert down_status.failed == 1 and down_status.last_error is not None
    assert down_status.last_error.startswith("HTTP 503")
    assert bad_status.failed == 1 and bad_status.last_error is not None
    assert bad_status.last_error.startswith("HTTP 400")
    warnings = [r for r in caplog.records if r.name == "querywatch.alerts"]
    assert len(warnings) == 2 and all(r.exc_info is None for r in warnings)


def test_unreachable_and_hanging_channels_do_not_block_notify_or_others(
    serve: Serve, dispatch: Any, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    hang_url, hang = serve(gate=threading.Event())
    good_url, good = serve()
    channels = [
        WebhookChannel(f"http://127.0.0.1:{closed_port}/hook"),
        WebhookChannel(hang_url + "/hook"),
        SlackChannel(good_url + "/services/T/B/secret"),
    ]
    d = dispatch(channels, timeout=0.3, retries=1, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="querywatch.alerts"):
        began = time.perf_counter()
        d.notify(note())
        assert time.perf_counter() - began < 0.05, "notify only queues"
        assert good.wait_for(1, timeout=5.0)
        assert d.status()[1].failed == 0, "the good channel was served while the other hung"
        assert d.flush(10.0)
    refused, hung, ok = d.status()
    assert (ok.sent, ok.failed) == (1, 0)
    assert refused.failed == 1 and refused.last_error is not None
    assert "ConnectError" in refused.last_error
    assert refused.last_failure_at is not None
    assert hung.failed == 1 and hung.last_error == "no answer within 0.3 s"
    assert len(hang.requests) == 2, "the timed-out send was retried once"
    lines = [r.getMessage() for r in caplog.records if r.name == "querywatch.alerts"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert f"127.0.0.1:{closed_port}/hook" in lines[0] and "webhook" in lines[0]
    assert all(r.exc_info is None for r in caplog.records)


def test_full_queue_drops_the_oldest(serve: Serve, dispatch: Any) -> None:
    gate = threading.Event()
    url, rec = serve(gate=gate)
    d = dispatch([WebhookChannel(url)], timeout=10.0, queue_size=2)
    d.notify(note(incident="1"))
    assert rec.wait_for(1), "the first notification is in flight"
    for incident in "2345":
        d.notify(note(incident=incident))
    assert d.status()[0].dropped == 2 and d.status()[0].pending == 2
    gate.set()
    assert d.flush(10.0)
    assert [b["incident"] for b in rec.bodies()] == ["1", "4", "5"]


def test_notify_after_close_is_dropped_without_error(serve: Serve) -> None:
    url, rec = serve()
    d = Dispatcher([WebhookChannel(url)])
    d.close()
    d.notify(note())
    d.close()
    assert rec.requests == [] and d.status()[0].sent == 0


def test_a_body_that_is_not_json_fails_the_delivery_not_the_caller(
    serve: Serve, dispatch: Any
) -> None:
    url, rec = serve()
    d = dispatch([WebhookChannel(url)])
    send_all(d, Notification("firing", "x", {"bad": object()}, T_FIRE), note())
    status = d.status()[0]
    assert (status.failed, status.sent) == (1, 1) and "TypeError" in str(status.last_error)
    assert len(rec.requests) == 1


# --- settings ------------------------------------------------------------------------------


def test_channels_from_settings_builds_each_kind_with_secrets_hidden() -> None:
    channels = channels_from_settings(
        ["https://user:pw@example.com/hooks/abc?token=t0p"],
        ["https://hooks.slack.com/services/T0/B0/sl4ckSecret"],
        [ROUTING_KEY],
        "https://events.pagerduty.com/v2/enqueue",
        ["http://127.0.0.1:9093"],
    )
    assert [type(c) for c in channels] == [
        WebhookChannel,
        SlackChannel,
        PagerDutyChannel,
        AlertmanagerChannel,
    ]
    targets = [c.target for c in channels]
    assert targets == [
        "https://example.com/hooks/…",
        "https://hooks.slack.com/services/…",
        "https://events.pagerduty.com/v2/… key …bcde",
        "http://127.0.0.1:9093",
    ]
    assert channels[3].request(note())[0] == "http://127.0.0.1:9093/api/v2/alerts"


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "hooks.slack.com/services/x", "http://", "http://h:99999/", ""]
)
def test_malformed_url_is_a_one_line_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_settings([url], [], [], "https://events.pagerduty.com/v2/enqueue", [])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("alert webhook: ")
    assert "not an http(s) url" in message.lower()


def test_bad_routing_key_and_bad_policy_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="pagerduty routing key"):
        PagerDutyChannel("has space")
    with pytest.raises(ConfigError, match="alert sending"):
        Dispatcher([], timeout=0)
