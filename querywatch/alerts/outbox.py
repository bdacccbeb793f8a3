"""Delivery from the store's outbox: no notification lost to a channel that is down for a while.

With a store, every notification becomes one outbox row per channel (written with the incident
when the monitor saves it), and each channel's lane sends its rows oldest first: a resolved never
goes before its incident's firing. A failed attempt that may pass (no answer, a 5xx, 408, 429) is
tried again after ``backoff × 2^attempts`` seconds, capped at ``max_backoff``, until the row is
older than ``max_age``: then it is marked expired and logged once. Another 4xx marks it failed at
once (the request itself is wrong). A restarted watcher's lanes pick the pending rows up where the
last one stopped. Every POST carries an ``Idempotency-Key`` header (``querywatch/<incident>/<status>``),
PagerDuty events their dedup key and Alertmanager alerts their labels, so a repeat (a crash after
the POST, before the row was marked sent) is harmless.

>>> n = Notification("firing", "ab12", {"verdict": "healthy"}, 5.0, source="db1")
>>> idempotency_key(n)
'querywatch/ab12/firing'
>>> from_json(to_json(n)) == n
True
>>> retry_delay(attempts=0, backoff=1.0, cap=60.0), retry_delay(10, 1.0, 60.0)
(1.0, 60.0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from querywatch.alerts.channel import Channel
from querywatch.alerts.message import Notification
from querywatch.durations import human, iso
from querywatch.errors import StoreError
from querywatch.store.outbox import EXPIRED, FAILED, SENT, OutboxEntry, OutboxRow, OutboxSummary

log = logging.getLogger("querywatch.alerts")

STORE_RETRY_S = 1.0  # a lane that cannot read its outbox tries again after this


class Attempted(Protocol):
    """What one POST gave (querywatch.alerts.dispatcher.Attempt)."""

    @property
    def ok(self) -> bool: ...

    @property
    def error(self) -> str: ...

    @property
    def retry(self) -> bool: ...


Send = Callable[[str, object, Mapping[str, str]], Attempted]


class OutboxStore(Protocol):
    """The Store methods the lanes use (querywatch.store.sqlite.Store)."""

    def add_outbox(self, entries: Sequence[OutboxEntry]) -> int: ...

    def outbox_head(self, channel: str) -> OutboxRow | None: ...

    def outbox_stale(self, created_before: float) -> list[OutboxRow]: ...

    def outbox_rows(self, channel: str) -> list[OutboxRow]: ...

    def outbox_done(
        self, row_id: int, state: str, at: float, tried: bool = True, error: str | None = None
    ) -> bool: ...

    def outbox_retry(self, row_id: int, next_at: float, error: str) -> None: ...


def idempotency_key(n: Notification) -> str:
    """The same notification gives the same key: the receiver can drop a repeat (an update of a
    page, which more statements joined, is another notification)."""
    update = f"/{n.revision}" if n.revision else ""
    return f"querywatch/{n.incident}/{n.status}{update}"


def channel_key(channel: Channel) -> str:
    """A channel's stable name across restarts: its kind and a hash of its settings (its URL or
    routing key), so two webhooks are two channels and no secret is stored."""
    digest = hashlib.sha256(repr(channel).encode()).hexdigest()[:16]
    return f"{channel.name}:{digest}"


def to_json(n: Notification) -> str:
    return json.dumps(
        {
            "status": n.status,
            "incident": n.incident,
            "diagnosis": n.diagnosis,
            "at": n.at,
            "source": n.source,
            "started_at": n.started_at,
            "link": n.link,
            "revision": n.revision,
            "docs_url": n.docs_url,
        }
    )


def from_json(text: str) -> Notification:
    d: dict[str, Any] = json.loads(text)
    return Notification(
        status="resolved" if d["status"] == "resolved" else "firing",
        incident=str(d["incident"]),
        diagnosis=dict(d["diagnosis"]),
        at=float(d["at"]),
        source=str(d["source"]),
        started_at=d.get("started_at"),
        link=d.get("link"),
        revision=int(d.get("revision") or 0),
        docs_url=d.get("docs_url"),
    )


def entries(channels: Sequence[Channel], n: Notification, now: float) -> list[OutboxEntry]:
    """One outbox row per channel for ``n`` (a diagnosis that is not JSON raises TypeError)."""
    body = to_json(n)
    return [
        OutboxEntry(
            channel=channel_key(c),
            target=c.target,
            source=n.source,
            key=idempotency_key(n),
            incident=n.incident,
            status=n.status,
            notification=body,
            created_at=now,
        )
        for c in channels
    ]


def retry_delay(attempts: int, backoff: float, cap: float) -> float:
    """Seconds before the next try after ``attempts + 1`` failed ones."""
    return float(min(backoff * 2 ** min(attempts, 32), cap))


class OutboxLane:
    """One channel's thread, sending its outbox rows oldest first; see the module docstring."""

    def __init__(
        self,
        channel: Channel,
        send: Send,
        store: OutboxStore,
        limits: tuple[float, float, float],  # backoff, max_backoff, max_age
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self.channel, self.key = channel, channel_key(channel)
        self._send, self._store, self._stop, self._clock = send, store, stop, clock
        self._backoff, self._max_backoff, self._max_age = limits
        self._cond = threading.Condition()
        self._busy = self._woken = False
        self.sent = self.failed = self.expired = 0  # this process' deliveries and failed tries
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self._firing: dict[str, Notification] = {}  # sent and not resolved: re-sent if asked
        self._resend_at: dict[str, float] = {}
        self._thread = threading.Thread(
            target=self._run, name=f"querywatch-outbox-{channel.name}", daemon=True
        )
        self._thread.start()

    # -- the dispatcher's side ----------------------------------------------------------------
    def put(self, n: Notification) -> None:
        """``n`` is in the store already: stop re-sending a resolved incident, wake the lane."""
        with self._cond:
            if n.status == "resolved":
                self._firing.pop(n.incident, None)
                self._resend_at.pop(n.incident, None)
            self._woken = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def pending(self) -> int:
        try:
            return sum(1 for r in self._store.outbox_rows(self.key) if r.state == "pending")
        except StoreError:
            return 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight and no row is due now (rows waiting for a retry
        stay in the store for later, or for the next run)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and not self._due(), timeout)

    def _due(self) -> bool:
        try:
            row = self._store.outbox_head(self.key)
        except StoreError:
            return False
        return row is not None and row.next_at <= self._clock() and not self._stop.is_set()

    # -- the lane's thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._step()
            except StoreError as exc:
                log.warning("alert outbox of channel %s unreadable: %s", self.channel.name, exc)
                wait = STORE_RETRY_S
            except Exception as exc:  # a bug must not end the lane: its rows would wait forever
                log.error("alert lane %s: %s: %s", self.channel.name, type(exc).__name__, exc)
                wait = STORE_RETRY_S
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                if wait != 0.0 and not self._woken and not self._stop.is_set():
                    self._cond.wait(wait)
                self._woken = False

    def _step(self) -> float | None:
        """Handle the head row if it is due; the seconds to wait (None: until woken, 0: none)."""
        now = self._clock()
        row = self._store.outbox_head(self.key)
        if row is None:
            return self._resend(now)
        if now - row.entry.created_at > self._max_age:
            self._expire(row, now)
            return 0.0
        if now < row.next_at <= now + self._max_backoff:  # further: the clock was set back
            return row.next_at - now
        with self._cond:
            self._busy = True
        self._deliver(row)
        return 0.0

    def _deliver(self, row: OutboxRow) -> None:
        try:
            n = from_json(row.entry.notification)
            url, body = self.channel.request(n)
        except Exception as exc:  # a channel bug or a damaged row must not kill the lane
            self._give_up(row, f"{type(exc).__name__}: {exc}")
            return
        attempt = self._send(url, body, {"Idempotency-Key": row.entry.key})
        now = self._clock()
        if attempt.ok:
            self._store.outbox_done(row.id, SENT, now)
            self._delivered(row, n, now)
        elif attempt.retry:
            self._retry(row, attempt.error, now)
        else:
            self._give_up(row, attempt.error)

    def _delivered(self, row: OutboxRow, n: Notification, now: float) -> None:
        with self._cond:
            self.sent += 1
            self.last_success_at = now
            if n.status == "firing" and self.channel.resend_interval is not None:
                self._firing[n.incident] = n
                self._resend_at[n.incident] = now + self.channel.resend_interval
            elif n.status == "resolved":
                self._firing.pop(n.incident, None)
                self._resend_at.pop(n.incident, None)
        if row.attempts:
            log.warning(
                "alert delivered: channel %s, target %s, %s incident %s after %d attempts",
                self.channel.name, self.channel.target, n.status, n.incident, row.attempts + 1,
            )  # fmt: skip

    def _failed(self, error: str) -> None:
        with self._cond:
            self.failed += 1
            self.last_error = error
            self.last_failure_at = self._clock()

    def _retry(self, row: OutboxRow, error: str, now: float) -> None:
        delay = retry_delay(row.attempts, self._backoff, self._max_backoff)
        self._store.outbox_retry(row.id, now + delay, error)
        self._failed(error)
        level = logging.WARNING if row.attempts == 0 else logging.DEBUG
        log.log(
            level,
            "alert not delivered yet: channel %s, target %s, %s incident %s, attempt %d: %s "
            "(retrying with backoff up to %g s, for up to %g s)",
            self.channel.name, self.channel.target, row.entry.status, row.entry.incident,
            row.attempts + 1, error, self._max_backoff, self._max_age,
        )  # fmt: skip

    def _give_up(self, row: OutboxRow, error: str) -> None:
        self._failed(error)
        if self._store.outbox_done(row.id, FAILED, self._clock(), error=error):
            log.warning(
                "alert not delivered: channel %s, target %s, %s incident %s: %s (not retried)",
                self.channel.name, self.channel.target, row.entry.status, row.entry.incident,
                error,
            )  # fmt: skip

    def _expire(self, row: OutboxRow, now: float) -> None:
        with self._cond:
            self.expired += 1
        expire(self._store, row, now)

    def _resend(self, now: float) -> float | None:
        """Re-send a delivered firing incident when its channel asks for it (Alertmanager);
        best effort: a failed re-send waits for the next one."""
        with self._cond:
            due = sorted(self._resend_at.items(), key=lambda item: item[1])
            if not due:
                return None
            incident, at = due[0]
            if at > now:
                return at - now
            n = self._firing[incident]
            self._resend_at[incident] = now + (self.channel.resend_interval or 0.0)
            self._busy = True
        try:
            url, body = self.channel.request(n)
        except Exception as exc:  # a channel bug: this re-send is skipped, the next one tried
            self._failed(f"{type(exc).__name__}: {exc}")
            return 0.0
        attempt = self._send(url, body, {"Idempotency-Key": idempotency_key(n)})
        if not attempt.ok:
            self._failed(attempt.error)
        return 0.0


def expire(store: OutboxStore, row: OutboxRow, now: float) -> None:
    """Mark ``row`` expired and log it, once (another process may have done it already)."""
    if store.outbox_done(row.id, EXPIRED, now, tried=False, error=row.last_error):
        log.warning(
            "alert expired undelivered: target %s, %s incident %s, %d attempts over %.0f s%s",
            row.entry.target, row.entry.status, row.entry.incident, row.attempts,
            now - row.entry.created_at,
            f"; last error: {row.last_error}" if row.last_error else "",
        )  # fmt: skip


def sweep(store: OutboxStore, max_age: float, now: float) -> int:
    """Expire the rows of every channel (configured or not any more) older than ``max_age``."""
    rows = store.outbox_stale(now - max_age)
    for row in rows:
        expire(store, row, now)
    return len(rows)


def summary_json(s: OutboxSummary, now: float) -> dict[str, object]:
    """One channel's outbox for ``querywatch status --format json``."""
    oldest = s.oldest_pending_at
    return {
        "channel": s.channel,
        "name": s.channel.partition(":")[0],
        "target": s.target,
        "pending": s.pending,
        "oldest_pending_at": iso(oldest),
        "oldest_pending_age_s": round(now - oldest, 3) if oldest is not None else None,
        "failed_tries": s.attempts,
        "last_error": s.last_error,
        "sent": s.sent,
        "failed": s.failed,
        "expired": s.expired,
    }


def summary_line(s: OutboxSummary, now: float) -> str:
    """One channel's outbox for ``querywatch status``: what is pending first.

    >>> line = OutboxSummary("webhook:ab", "http://h/hook", 2, 5, 0, 1, 40.0, 7, "HTTP 500")
    >>> for part in summary_line(line, 100.0).split("; "):
    ...     print(part)
    alert outbox webhook http://h/hook: 2 pending for 60s, 7 failed tries, last error: HTTP 500
    5 sent, 0 refused, 1 expired
    """
    head = f"alert outbox {s.channel.partition(':')[0]} {s.target}: "
    if s.pending and s.oldest_pending_at is not None:
        head += f"{s.pending} pending for {human(now - s.oldest_pending_at)}"
        head += f", {s.attempts} failed tries" if s.attempts else ""
        head += f", last error: {s.last_error}" if s.last_error else ""
    else:
        head += "nothing pending"
    return head + f"; {s.sent} sent, {s.failed} refused, {s.expired} expired"
