"""The collection loop: snapshot every interval, sample activity in between, store the deltas.

One connection per server, timeouts on every query (set by the source), reconnect with backoff when
the server goes away, and a clean stop: a stop request is honoured between steps, so the write in
progress always completes and nothing is half-written.

Restarts: each stored interval also stores its later snapshot (same transaction), with the server's
identity. ``start()`` loads it; ``run()`` then takes a snapshot at once and stores the interval
since the stored one, a *catch-up* that covers the time the collector was down (or a gap when the
server restarted, its statistics were reset, or it is another server). So ``collect --once`` from
cron records what ran between two runs without waiting: only a first run, with nothing stored,
waits one interval. A collector killed with SIGKILL loses nothing either: the snapshot on disk is
the one of the last interval stored.

A store that cannot be written (a full disk, "database or disk is full", or any write error) does
not stop collection: intervals wait in memory, oldest first, at most ``BACKLOG_S`` of them (the
oldest is dropped beyond, and said), and are written in order as soon as a write succeeds again.
``on_store_error`` is called once per outage (the watch pages through the dispatcher) and
``on_store_back`` once the backlog has landed.

Running statements: right after each snapshot one more pg_stat_activity sample is taken; with it,
:class:`querywatch.activity.RunningTime` counts the time of statements still running, which
pg_stat_statements adds only when they finish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import activity, collector
from .durations import clock, human
from .errors import ConnectError, SourceError, StoreError
from .fingerprint import Fingerprinter, normalize
from .model import (
    ActivitySample,
    ActivitySummary,
    Gap,
    GapReason,
    Interval,
    Snapshot,
    StatementKey,
)
from .source.kcache import KcacheUsage
from .source.postgres import PostgresSource, describe_dsn
from .source.queries import MARKER
from .store.protocol import StoreProtocol
from .store.snapshots import StoredSnapshot

log = logging.getLogger("querywatch.watcher")

MAINTAIN_EVERY_S = 60.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
BACKLOG_S = 3600.0  # intervals kept in memory while the store cannot be written: 1 hour


@dataclass
class CollectorStatus:
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    intervals: int = 0
    gaps: int = 0
    dealloc: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


IntervalHook = Callable[[int, Interval], None]
StoreHook = Callable[[str], None]
FailureHook = Callable[[SourceError], None]


@dataclass(frozen=True)
class PendingInterval:
    """An interval collected and not yet written (the store failed): all ``record_interval``
    needs, but the snapshot the store holds, which is known only when it is written."""

    interval: Interval
    fingerprints: dict[StatementKey, str]
    texts: dict[str, str]
    activity: ActivitySummary | None
    own: frozenset[str]
    snapshot: StoredSnapshot
    kcache: KcacheUsage | None = None


@dataclass
class Watcher:
    """Collects one server into one store until ``stop()``."""

    source: PostgresSource
    store: StoreProtocol
    server_name: str
    interval_s: float = 10.0
    activity_interval_s: float = 1.0
    on_interval: IntervalHook | None = None
    clock: Callable[[], float] = time.time
    status: CollectorStatus = field(default_factory=CollectorStatus)
    on_store_error: StoreHook | None = None  # called once per outage of the store, with why
    on_store_back: StoreHook | None = None  # called once the intervals kept meanwhile are written
    backlog_s: float = BACKLOG_S  # intervals kept in memory while the store fails, at most
    on_failure: FailureHook | None = None  # called when the server could not be read

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._fingerprints = Fingerprinter()
        self._previous: Snapshot | None = None
        self._samples: list[ActivitySample] = []
        self._server_id: int | None = None
        self._last_maintain = 0.0
        self._down_since: float | None = None
        self._own: set[str] = set()  # fingerprints of querywatch's own monitoring statements
        self._placeholders: set[StatementKey] = set()  # stored before their text could be read
        self._system_id: int | None = None  # the server's system identifier, when readable
        self._stored: StoredSnapshot | None = None  # a previous run's snapshot, to continue from
        self._saved: Snapshot | None = None  # the snapshot the store holds for this server
        self._running = activity.RunningTime()  # time of statements still running (activity.py)
        self._backlog: deque[PendingInterval] = deque()  # collected, not written yet, oldest first
        self._store_error = ""  # why the store cannot be written, while it cannot
        self._dropped = 0  # intervals dropped from a full backlog during this outage
        self._dropped_span: tuple[float, float] | None = None  # the time they covered

    # -- control ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when stopped meanwhile (a fleet's retry before a start)."""
        self._stop.wait(seconds)

    def note_failure(self, exc: SourceError) -> None:
        """A failure outside collection (a start that could not connect): in the status, with
        the time from which the server is unreachable (a gap once it is reached)."""
        self._failed(exc)

    @property
    def server_id(self) -> int | None:
        return self._server_id

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Connect, then load the snapshot a previous run stored (the first interval continues
        from it) or take a first one; errors here are the user's to fix (bad DSN...)."""
        caps = self.source.connect()
        target = describe_dsn(self.source.dsn)
        server = self.store.server(self.server_name, target=target, version=caps.version)
        self._server_id = server.id
        self._system_id = self.source.system_identifier()
        self._stored = self._saved = None
        stored = self.store.last_snapshot(server.id)
        if stored is not None:
            self._stored, self._saved = stored, stored.snapshot
            log.info("continuing from the snapshot of %s", clock(stored.snapshot.taken_at))
        else:
            self._previous = self.source.snapshot()
            self._unwatched_gap(server.id, self._previous.taken_at)
        self._mark_success()

    def _unwatched_gap(self, server_id: int, now: float) -> None:
        """Stored intervals but no snapshot to continue from (a store from before snapshots
        were kept): the time since the last interval is unknown, a gap (querywatch.status)."""
        last = self.store.last_interval_end(server_id)
        if last is None or last >= now:
            return
        detail = "not watched: no stored snapshot to continue from"
        self.store.record_gap(server_id, Gap(last, now, GapReason.DOWN, detail, False))
        log.warning("%s since %s: a gap", detail, clock(last))

    @property
    def resuming(self) -> bool:
        """True until the interval from a previous run's snapshot is stored."""
        return self._stored is not None

    def run(self, *, once: bool = False) -> None:
        """Collect until stopped; with ``once``, one interval and return. When ``start()`` found
        a stored snapshot, the first interval (the catch-up) is collected at once."""
        if self._server_id is None:
            self.start()
        if self.resuming and not self.stopping:
            stored = self.collect_once()
            if once and stored is not None:
                return
        next_snapshot = time.monotonic() + self.interval_s
        while not self.stopping:
            self._sample_until(next_snapshot)
            if self.stopping:
                break
            next_snapshot += self.interval_s
            self.collect_once()
            if once:
                break
            next_snapshot = max(next_snapshot, time.monotonic() + 0.1)

    # -- one interval -----------------------------------------------------------------------------
    def collect_once(self) -> int | None:
        """Take a snapshot, store the interval since the previous one; returns its id."""
        try:
            if not self.source.connected:
                self._reconnect()
            snapshot = self.source.snapshot()
        except SourceError as exc:  # unreachable, timed out, or the server changed under us
            self._failed(exc)
            return None
        self._sample()  # just after the snapshot: which statements it does not hold yet
        return self._store_interval(snapshot)

    def _store_interval(self, snapshot: Snapshot) -> int | None:
        previous, self._previous = self._previous, snapshot
        samples, self._samples = self._samples, []
        interval = self._catch_up(snapshot) if self._stored is not None else None
        if interval is None:
            if previous is None:
                return None
            interval = collector.delta(previous, snapshot)
        self._retry_placeholders()
        fingerprints, texts = self._identify(interval)
        texts.update(self._activity_texts(samples, texts))
        if interval.complete:
            running = self._running.account(samples, interval.start, interval.end)
        else:  # a restart or reset: what ran before is not continued
            self._running.reset()
            running = {}
        usage = self.source.kcache_usage  # pg_stat_kcache's CPU time etc., when the server has it
        if usage is not None and (usage.start, usage.end) != (interval.start, interval.end):
            usage = None
        self._stored = None
        self._keep(
            PendingInterval(
                interval,
                fingerprints,
                texts,
                activity.summarize(samples, running),
                frozenset(self._own),
                StoredSnapshot(snapshot, self._system_id),
                usage,
            )
        )
        return self._write_backlog()

    # -- writing, and keeping intervals while the store cannot be written --------------------------
    def _keep(self, pending: PendingInterval) -> None:
        self._backlog.append(pending)

    def _trim(self) -> None:
        """Drop the oldest kept intervals beyond ``backlog_s`` (the store failed again)."""
        limit = max(1, math.ceil(self.backlog_s / max(self.interval_s, 0.001)))
        while len(self._backlog) > limit:
            dropped = self._backlog.popleft()
            self._dropped += 1
            start = self._dropped_span[0] if self._dropped_span else dropped.interval.start
            self._dropped_span = (start, dropped.interval.end)
            log.error(
                "store unwritable for %s: the interval of %s is dropped (%d so far)",
                human(self.backlog_s),
                clock(dropped.interval.start),
                self._dropped,
            )

    @property
    def backlog(self) -> int:
        """Intervals collected and waiting for the store to be writable again."""
        return len(self._backlog)

    def _write_backlog(self) -> int | None:
        """Write the kept intervals oldest first; the id of the last one written (None when the
        store still fails: they stay in memory)."""
        last_id = None
        while self._backlog:
            pending = self._backlog[0]
            try:
                interval_id = self._write(pending)
            except StoreError as exc:
                self._trim()
                self._store_failed(exc)
                return None
            self._backlog.popleft()
            last_id = interval_id
            self._written(interval_id, pending.interval)
        if self._store_error:
            self._store_recovered()
        return last_id

    def _write(self, pending: PendingInterval) -> int:
        assert self._server_id is not None
        interval_id = self.store.record_interval(
            self._server_id,
            pending.interval,
            pending.fingerprints,
            pending.texts,
            pending.activity,
            pending.own,
            snapshot=pending.snapshot,
            snapshot_base=self._saved,
        )
        self._saved = pending.snapshot.snapshot
        if pending.kcache is not None:
            try:
                self.store.record_kcache(self._server_id, interval_id, pending.kcache)
            except StoreError as exc:  # the interval is stored: never write it twice
                log.warning("pg_stat_kcache figures of one interval not stored: %s", exc)
        return interval_id

    def _written(self, interval_id: int, interval: Interval) -> None:
        self._account(interval)
        try:
            self._maintain()
            if self.on_interval is not None:
                self.on_interval(interval_id, interval)
        except StoreError as exc:  # detection's own writes: the next interval tries again
            log.warning("after storing the interval of %s: %s", clock(interval.start), exc)

    def _store_failed(self, exc: StoreError) -> None:
        first = not self._store_error
        self._store_error = str(exc)
        log.warning(
            "cannot write the store, %d intervals kept in memory: %s", len(self._backlog), exc
        )
        if first and self.on_store_error is not None:
            self.on_store_error(self._store_error)

    def _store_recovered(self) -> None:
        log.warning(
            "the store is writable again: the intervals kept meanwhile are written (%d dropped)",
            self._dropped,
        )
        why, self._store_error, self._dropped = self._store_error, "", 0
        self._record_dropped_gap(why)
        if self.on_store_back is not None:
            self.on_store_back(why)

    def _record_dropped_gap(self, why: str) -> None:
        """The intervals dropped from a full backlog are a gap (their figures are lost)."""
        span, self._dropped_span = self._dropped_span, None
        if span is None or self._server_id is None:
            return
        detail = f"the store could not be written ({why}): the intervals collected were dropped"
        try:
            self.store.record_gap(self._server_id, Gap(*span, GapReason.DOWN, detail, False))
            self.status.gaps += 1
        except StoreError as exc:
            log.warning("cannot store the gap of the intervals dropped: %s", exc)

    def _catch_up(self, snapshot: Snapshot) -> Interval | None:
        """The interval from the stored snapshot: a catch-up, or a gap (restart, reset, another
        server), never invented figures; None when the stored one is not older (a clock set
        back): collection then starts afresh from ``snapshot``."""
        assert self._stored is not None
        stored = self._stored.snapshot
        if stored.taken_at >= snapshot.taken_at:
            log.warning(
                "the stored snapshot is dated %s, not before now: starting afresh",
                clock(stored.taken_at),
            )
            self._stored = None
            return None
        interval = collector.catch_up(
            stored, snapshot, self._stored.system_identifier, self._system_id
        )
        if interval.catch_up:
            log.info("caught up %s since the last run's snapshot", human(interval.seconds))
        else:
            reasons = "; ".join(g.detail for g in interval.gaps if not g.partial)
            log.warning("no catch-up since the last run's snapshot, a gap: %s", reasons)
        return interval

    def _identify(self, interval: Interval) -> tuple[dict[StatementKey, str], dict[str, str]]:
        assert self._server_id is not None
        known = self.store.known_keys(self._server_id)
        new_keys = [d.key for d in interval.statements if d.key not in known]
        if not new_keys:
            return {}, {}
        unseen = [k.queryid for k in new_keys if k.queryid not in self._fingerprints]
        raw_texts = self._texts(unseen)
        fingerprints: dict[StatementKey, str] = {}
        texts: dict[str, str] = {}
        for key in new_keys:
            text = raw_texts.get(key.queryid, "")
            if text or key.queryid in self._fingerprints:
                fp = self._fingerprints.for_queryid(key.queryid, text)
            else:  # no text yet (a timeout, or evicted meanwhile): a placeholder, retried later
                fp = f"qid{key.queryid & 0xFFFFFFFFFFFFFFFF:016x}"
                self._placeholders.add(key)
            fingerprints[key] = fp
            if text.lstrip().startswith(MARKER.strip()):
                self._own.add(fp)
            if text and not self.store.has_text(fp):
                texts[fp] = normalize(text)
        return fingerprints, texts

    def _retry_placeholders(self) -> None:
        """Statements stored without a text get their real fingerprint once the text is read."""
        if not self._placeholders or self._server_id is None:
            return
        found = self._texts(sorted({k.queryid for k in self._placeholders}))
        for key in [k for k in self._placeholders if k.queryid in found]:
            text = found[key.queryid]
            fp = self._fingerprints.for_queryid(key.queryid, text)
            try:
                self.store.set_fingerprint(self._server_id, key, fp, normalize(text))
            except StoreError as exc:  # retried with the next interval
                log.warning("cannot store the text of queryid %d: %s", key.queryid, exc)
                return
            if text.lstrip().startswith(MARKER.strip()):
                self._own.add(fp)
            self._placeholders.discard(key)

    def _activity_texts(
        self, samples: list[ActivitySample], known: dict[str, str]
    ) -> dict[str, str]:
        """Normalized texts of sampled statements the store lacks (e.g. a blocker's last query)."""
        texts: dict[str, str] = {}
        for sample in samples:
            for s in sample.sessions:
                fp = s.fingerprint
                if (
                    fp
                    and s.query
                    and fp not in known
                    and fp not in texts
                    and not self.store.has_text(fp)
                ):
                    texts[fp] = s.query
        return texts

    def _texts(self, queryids: list[int]) -> dict[int, str]:
        if not queryids:
            return {}
        try:
            return self.source.texts(queryids)
        except SourceError as exc:
            log.warning("could not fetch %d query texts: %s", len(queryids), exc)
            return {}

    def _sample_until(self, deadline: float) -> None:
        while not self.stopping:
            now = time.monotonic()
            if now >= deadline:
                return
            self._stop.wait(min(self.activity_interval_s, deadline - now))
            if self.stopping or time.monotonic() >= deadline:
                return
            self._sample()

    def _sample(self) -> None:
        if not self.source.connected:
            return
        try:
            self._samples.append(self.source.sample_activity())
        except SourceError as exc:
            log.warning("activity sample failed: %s", exc)

    # -- failures ---------------------------------------------------------------------------------
    def _reconnect(self) -> None:
        delay = BACKOFF_START_S
        while not self.stopping:
            try:
                self.source.connect()
                self._system_id = self.source.system_identifier()
                self.status.reconnects += 1
                self._record_down_gap()
                log.info("reconnected to %s", self.server_name)
                return
            except ConnectError as exc:
                self._failed(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        raise ConnectError("stopped while reconnecting")

    def _failed(self, exc: SourceError) -> None:
        now = self.clock()
        if self._down_since is None and isinstance(exc, ConnectError):
            self._down_since = now  # the server is unreachable from now on: a DOWN gap
        log.warning("collection failed, will retry: %s", exc)
        self.status.last_error = str(exc)
        self.status.last_error_at = now
        self._samples = []
        self._save_status()
        if self.on_failure is not None:
            self.on_failure(exc)

    def _record_down_gap(self) -> None:
        if self._down_since is None or self._server_id is None:
            return
        gap = Gap(self._down_since, self.clock(), GapReason.DOWN, "server unreachable", False)
        try:
            self.store.record_gap(self._server_id, gap)
        except StoreError as exc:
            log.warning("cannot store the gap of the server's downtime: %s", exc)
            return  # tried again at the next success
        self.status.gaps += 1
        self._down_since = None

    # -- bookkeeping ------------------------------------------------------------------------------
    def _account(self, interval: Interval) -> None:
        self.status.intervals += 1
        self.status.gaps += sum(1 for g in interval.gaps if not g.partial)
        self.status.dealloc += interval.dealloc
        self._mark_success()

    def _mark_success(self) -> None:
        if self._down_since is not None and self.source.connected:
            self._record_down_gap()
        self.status.last_success = self.clock()
        self._save_status()

    def _save_status(self) -> None:
        try:
            self.store.set_status(f"collector:{self.server_name}", self.status.as_dict())
        except StoreError as exc:  # the store is full or read-only: collection goes on
            log.debug("status not stored: %s", exc)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now - self._last_maintain >= MAINTAIN_EVERY_S:
            self._last_maintain = now
            self.store.maintain()
