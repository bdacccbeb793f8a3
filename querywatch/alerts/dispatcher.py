"""Sending alerts apart from collection.

Each channel gets its own background thread and bounded queue (a *lane*), so a channel that is
down or hangs never delays the collector (``notify`` only appends to the queues) nor the other
channels. Every POST has a timeout; a failed one is retried with exponential backoff
(``backoff``, ``2 × backoff``, ``4 × backoff``, ...) when the failure may pass (no answer, a 5xx,
408 or 429) and given up at once otherwise (another 4xx: the request itself is wrong). A delivery
that fails for good logs one WARNING line and shows in :meth:`Dispatcher.status`. Nothing here
raises into the caller.

Given a store, the dispatcher delivers from the store's outbox instead of memory
(querywatch.alerts.outbox): retries go on with capped backoff until ``max_age`` (24 h by
default, ``[alerts] max_age`` in querywatch.toml), across restarts, in order per channel.
Without one (tests, one-off sends) the in-memory lanes below keep their bounded queue and retries.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from querywatch.alerts.alertmanager import AlertmanagerChannel
from querywatch.alerts.channel import Channel
from querywatch.alerts.message import Notification, clip, docs_link
from querywatch.alerts.outbox import (
    OutboxLane,
    OutboxStore,
    channel_key,
    entries,
    idempotency_key,
    sweep,
)
from querywatch.alerts.pagerduty import EVENTS_URL, PagerDutyChannel
from querywatch.alerts.slack import SlackChannel
from querywatch.alerts.webhook import WebhookChannel
from querywatch.doclinks import DEFAULT_BASE
from querywatch.durations import parse_duration
from querywatch.errors import ConfigError, InputError, StoreError

if TYPE_CHECKING:
    from querywatch.store.outbox import OutboxEntry

log = logging.getLogger("querywatch.alerts")

USER_AGENT = "querywatch"
RETRYABLE_STATUS = frozenset({408, 429})
MAX_AGE_S = 86400.0  # how long an undelivered notification is retried (outbox)
MAX_BACKOFF_S = 60.0  # the longest wait between two tries (outbox)


@dataclass(frozen=True)
class ChannelStatus:
    """How one channel is doing; times are POSIX seconds."""

    name: str
    target: str
    sent: int
    failed: int
    dropped: int
    pending: int
    last_error: str | None
    last_success_at: float | None
    last_failure_at: float | None


@dataclass(frozen=True)
class Attempt:
    ok: bool
    error: str = ""
    retry: bool = False


def post(
    client: httpx.Client,
    url: str,
    body: object,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> Attempt:
    """One POST of ``body`` as JSON; any failure becomes an :class:`Attempt`, never an exception."""
    try:
        response = client.post(url, json=body, timeout=timeout, headers=headers)
    except httpx.TimeoutException:
        return Attempt(ok=False, error=f"no answer within {timeout:g} s", retry=True)
    except httpx.TransportError as exc:
        return Attempt(ok=False, error=f"{type(exc).__name__}: {exc}", retry=True)
    except Exception as exc:  # a body that is not JSON, a closed client: report, never raise
        return Attempt(ok=False, error=f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return Attempt(ok=True)
    code = response.status_code
    retry = code >= 500 or code in RETRYABLE_STATUS
    return Attempt(ok=False, error=f"HTTP {code}: {clip(response.text.strip(), 200)}", retry=retry)


@dataclass(frozen=True)
class OutboxSettings:
    """The ``[alerts]`` table: how long an undelivered notification is retried (``max_age``)
    and the longest wait between two tries (``max_backoff``), in seconds."""

    max_age: float = MAX_AGE_S
    max_backoff: float = MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.max_age <= 0 or self.max_backoff <= 0:
            raise ConfigError(
                f"[alerts]: max_age {self.max_age!r} and max_backoff {self.max_backoff!r} "
                "must be more than zero"
            )


@dataclass(frozen=True)
class Policy:
    """How hard to try: per-POST timeout, retries after the first try, first backoff delay."""

    timeout: float
    retries: int
    backoff: float
    queue_size: int


class _Lane:
    """One channel's queue, thread and counters."""

    def __init__(
        self,
        channel: Channel,
        send: Callable[[str, object, Mapping[str, str]], Attempt],
        policy: Policy,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self.channel = channel
        self._send, self._policy, self._stop, self._clock = send, policy, stop, clock
        self._queue: deque[Notification] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._firing: dict[str, Notification] = {}
        self._resend_at: dict[str, float] = {}
        self._sent = self._failed = self._dropped = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._last_failure_at: float | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"querywatch-alerts-{channel.name}", daemon=True
        )
        self._thread.start()

    def put(self, n: Notification) -> None:
        with self._cond:
            if len(self._queue) >= self._policy.queue_size:
                old = self._queue.popleft()
                self._dropped += 1
                log.warning(
                    "alert dropped: channel %s, target %s: queue full, oldest (%s %s) dropped",
                    self.channel.name, self.channel.target, old.status, old.incident,
                )  # fmt: skip
            self._queue.append(n)
            self._track(n)
            self._cond.notify_all()

    def _track(self, n: Notification) -> None:
        if self.channel.resend_interval is None:
            return
        if n.status == "firing":
            self._firing[n.incident] = n
        else:
            self._firing.pop(n.incident, None)
            self._resend_at.pop(n.incident, None)

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def status(self) -> ChannelStatus:
        with self._cond:
            return ChannelStatus(
                name=self.channel.name,
                target=self.channel.target,
                sent=self._sent,
                failed=self._failed,
                dropped=self._dropped,
                pending=len(self._queue),
                last_error=self._last_error,
                last_success_at=self._last_success_at,
                last_failure_at=self._last_failure_at,
            )

    def _run(self) -> None:
        while (n := self._next()) is not None:
            try:
                self._deliver(n)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _next(self) -> Notification | None:
        """The next notification to send: queued first, then a firing incident due a re-send."""
        with self._cond:
            while not self._stop.is_set():
                if self._queue:
                    self._busy = True
                    return self._queue.popleft()
                due, wait = self._due_resend()
                if due is not None:
                    self._busy = True
                    return due
                self._cond.wait(wait)
            return None

    def _due_resend(self) -> tuple[Notification | None, float | None]:
        now = time.monotonic()
        for incident, at in sorted(self._resend_at.items(), key=lambda item: item[1]):
            if at <= now and incident in self._firing:
                return self._firing[incident], None
            return None, at - now
        return None, None

    def _deliver(self, n: Notification) -> None:
        try:
            url, body = self.channel.request(n)
        except Exception as exc:  # a channel bug must not kill the lane
            self._record(n, Attempt(ok=False, error=f"{type(exc).__name__}: {exc}"), 0)
            return
        attempt, tries = self._try(url, body, {"Idempotency-Key": idempotency_key(n)})
        self._record(n, attempt, tries)

    def _try(self, url: str, body: object, headers: Mapping[str, str]) -> tuple[Attempt, int]:
        attempt = Attempt(ok=False, error="not sent: shutting down")
        for tries in range(self._policy.retries + 1):
            if tries and self._stop.wait(self._policy.backoff * 2 ** (tries - 1)):
                return attempt, tries
            attempt = self._send(url, body, headers)
            if attempt.ok or not attempt.retry:
                return attempt, tries + 1
            log.debug("alert attempt %d to %s failed: %s", tries + 1, self.channel.target, attempt)
        return attempt, self._policy.retries + 1

    def _record(self, n: Notification, attempt: Attempt, tries: int) -> None:
        now = self._clock()
        with self._cond:
            if n.incident in self._firing and n.status == "firing":
                interval = self.channel.resend_interval or 0.0
                self._resend_at[n.incident] = time.monotonic() + interval
            if attempt.ok:
                self._sent += 1
                self._last_success_at = now
                return
            self._failed += 1
            self._last_error = attempt.error
            self._last_failure_at = now
        log.warning(
            "alert not delivered: channel %s, target %s, %s incident %s after %d attempt(s): %s",
            self.channel.name, self.channel.target, n.status, n.incident, tries, attempt.error,
        )  # fmt: skip


class _AnyLane(Protocol):
    channel: Channel

    def put(self, n: Notification) -> None: ...

    def wake(self) -> None: ...

    def wait_idle(self, timeout: float) -> bool: ...

    def join(self, timeout: float) -> None: ...


class Dispatcher:
    """Delivers notifications to channels in the background; see the module docstring.

    ``store`` turns on the outbox: ``outbox.max_age`` bounds how long a notification is retried
    and ``outbox.max_backoff`` the wait between tries (``retries`` and ``queue_size`` then do not
    apply). ``docs_base`` is the base URL of the documentation (the ``docs_url`` setting): every
    notification without its own ``docs_url`` gets the page of its verdict there.
    """

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 1.0,
        client: httpx.Client | None = None,
        queue_size: int = 100,
        clock: Callable[[], float] = time.time,
        store: OutboxStore | None = None,
        outbox: OutboxSettings = OutboxSettings(),
        docs_base: str = DEFAULT_BASE,
    ) -> None:
        self._docs_base = docs_base
        policy = Policy(timeout=timeout, retries=retries, backoff=backoff, queue_size=queue_size)
        _check(policy)
        self._policy, self._store, self._clock = policy, store, clock
        self._channels = list(channels)
        self._owns_client = client is None
        self._client = client or httpx.Client(headers={"User-Agent": USER_AGENT})
        self._stop = threading.Event()
        self._lanes: list[_AnyLane] = []
        self._memory: list[_Lane] = []  # when the outbox cannot be written (a full disk)
        if store is None:
            self._lanes += [_Lane(c, self._post, policy, self._stop, clock) for c in channels]
            return
        _sweep_and_tell(store, channels, outbox.max_age, clock())
        limits = (backoff, outbox.max_backoff, outbox.max_age)
        self._lanes += [
            OutboxLane(c, self._post, store, limits, self._stop, clock) for c in channels
        ]

    def _post(self, url: str, body: object, headers: Mapping[str, str]) -> Attempt:
        return post(self._client, url, body, self._policy.timeout, headers)

    def entries(self, n: Notification) -> list[OutboxEntry]:
        """The outbox rows of ``n``, one per channel, for the caller to write in its own
        transaction (``Store.save_incident(..., notify=...)``); none without a store."""
        if self._store is None or not self._channels:
            return []
        n = self._with_docs(n)
        try:
            return entries(self._channels, n, self._clock())
        except (TypeError, ValueError) as exc:  # a diagnosis that is not JSON: sent from memory
            log.warning("alert %s incident %s cannot be stored: %s", n.status, n.incident, exc)
            return []

    def _with_docs(self, n: Notification) -> Notification:
        if n.docs_url is not None:
            return n
        return dataclasses.replace(n, docs_url=docs_link(n, self._docs_base))

    def notify(self, n: Notification) -> None:
        """Queue ``n`` for every channel (in the outbox when there is a store) and return."""
        n = self._with_docs(n)
        if self._stop.is_set():
            log.warning(
                "alert dropped: %s incident %s after the dispatcher closed", n.status, n.incident
            )
            return
        if self._store is not None:
            try:
                self._store.add_outbox(self.entries(n))  # a repeat of a stored row is ignored
            except StoreError as exc:
                log.warning(
                    "alert %s incident %s not stored, sent from memory: %s",
                    n.status, n.incident, exc,
                )  # fmt: skip
                self._from_memory(n)
                return
        for lane in self._lanes:
            lane.put(n)

    def _from_memory(self, n: Notification) -> None:
        """The outbox cannot be written (e.g. the disk is full, which is what ``n`` may say):
        in-memory lanes send it with their bounded retries instead of losing it."""
        if not self._memory:
            self._memory = [
                _Lane(c, self._post, self._policy, self._stop, self._clock) for c in self._channels
            ]
        for lane in self._memory:
            lane.put(n)

    def status(self) -> list[ChannelStatus]:
        return [_status(lane) for lane in self._lanes]

    def flush(self, timeout: float) -> bool:
        """Wait until every queue is drained and nothing is in flight; False on timeout.
        With the outbox, rows waiting for a retry are left for later (or the next run)."""
        deadline = time.monotonic() + timeout
        lanes = [*self._lanes, *self._memory]
        return all(lane.wait_idle(max(deadline - time.monotonic(), 0.0)) for lane in lanes)

    def close(self) -> None:
        """Stop the lanes (queued notifications are dropped, outbox rows stay for the next run;
        call :meth:`flush` first to send)."""
        if self._stop.is_set():
            return
        self._stop.set()
        lanes = [*self._lanes, *self._memory]
        for lane in lanes:
            lane.wake()
        for lane in lanes:
            lane.join(self._policy.timeout + 1.0)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(lane: _AnyLane) -> ChannelStatus:
    if isinstance(lane, _Lane):
        return lane.status()
    assert isinstance(lane, OutboxLane)
    return ChannelStatus(
        name=lane.channel.name,
        target=lane.channel.target,
        sent=lane.sent,
        failed=lane.failed,  # failed tries: the row stays pending and is tried again
        dropped=lane.expired,
        pending=lane.pending(),
        last_error=lane.last_error,
        last_success_at=lane.last_success_at,
        last_failure_at=lane.last_failure_at,
    )


def _sweep_and_tell(
    store: OutboxStore, channels: Sequence[Channel], max_age: float, now: float
) -> None:
    """Expire what is too old, then say what an earlier run left to send."""
    try:
        sweep(store, max_age, now)
        for lane_channel in channels:
            left = [r for r in store.outbox_rows(channel_key(lane_channel)) if r.state == "pending"]
            if left:
                log.info(
                    "%d alert(s) left pending by an earlier run for channel %s, target %s: "
                    "sending them", len(left), lane_channel.name, lane_channel.target,
                )  # fmt: skip
    except StoreError as exc:
        log.warning("alert outbox unreadable: %s", exc)


def outbox_settings(table: Mapping[str, object]) -> OutboxSettings:
    """The ``[alerts]`` table of querywatch.toml: ``max_age`` (how long an undelivered
    notification is retried, default 24h) and ``max_backoff`` (default 60s), as durations.

    >>> outbox_settings({"max_age": "2h"})
    OutboxSettings(max_age=7200.0, max_backoff=60.0)
    """
    unknown = sorted(set(table) - {"max_age", "max_backoff"})
    if unknown:
        raise ConfigError(f"[alerts]: unknown setting {unknown[0]!r} (known: max_age, max_backoff)")
    try:
        values = {
            key: parse_duration(
                value if isinstance(value, int | float) else str(value), f"[alerts] {key}"
            )
            for key, value in table.items()
        }
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    return OutboxSettings(**values)


def _check(policy: Policy) -> None:
    if policy.timeout <= 0 or policy.retries < 0 or policy.backoff < 0 or policy.queue_size < 1:
        raise ConfigError(
            f"alert sending: timeout {policy.timeout!r}, retries {policy.retries!r}, "
            f"backoff {policy.backoff!r} or queue size {policy.queue_size!r} out of range "
            "(timeout > 0, retries >= 0, backoff >= 0, queue size >= 1)"
        )


def channels_from_settings(
    webhooks: Sequence[str],
    slack: Sequence[str],
    pagerduty_keys: Sequence[str],
    pagerduty_url: str = EVENTS_URL,
    alertmanager: Sequence[str] = (),
) -> list[Channel]:
    """The channels the ``--alert-webhook``, ``--slack-webhook``, ``--pagerduty-routing-key``
    and ``--alertmanager-url`` flags ask for; a malformed URL raises ConfigError."""
    channels: list[Channel] = [WebhookChannel(url) for url in webhooks]
    channels += [SlackChannel(url) for url in slack]
    channels += [PagerDutyChannel(key, pagerduty_url) for key in pagerduty_keys]
    channels += [AlertmanagerChannel(url) for url in alertmanager]
    return channels
