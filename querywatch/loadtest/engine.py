"""The open-model load generator: arrivals at a fixed rate, whatever the database does.

Request ``i`` is due at ``t0 + i / rate``. ``concurrency`` workers, each with its own connection,
take the next request number from a shared counter, wait until it is due, run it, and record
``completion - due`` (not ``completion - send``): when the database falls behind, requests wait for
a free worker and that queueing delay is in the latency, so coordinated omission cannot hide it.

After ``duration`` no request is due any more; the workers drain the backlog for up to ``drain_s``.
Requests still waiting then are *unfinished*: each is recorded with the time it had waited (a lower
bound of its latency) so the percentiles still show the backlog. Latencies go into one HDR
histogram per worker (microseconds, 3 significant digits), merged at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
DIGITS = 3
ERROR_SAMPLES = 5

C = TypeVar("C")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    duration_s: float
    due: int
    completed: int
    errors: int


@dataclass
class EngineResult:
    histogram: HdrHistogram
    due: int  # requests scheduled within the duration
    completed: int  # succeeded, at any time
    completed_in_window: int  # succeeded before t0 + duration
    errors: int
    unfinished: int
    error_samples: list[str]
    started_at: float  # wall clock (POSIX seconds) of t0
    elapsed_s: float  # t0 to the last completion


@dataclass
class _Worker:
    histogram: HdrHistogram = field(default_factory=new_histogram)
    completed: int = 0
    in_window: int = 0
    errors: int = 0
    last_done: float = 0.0
    error_samples: list[str] = field(default_factory=list)


class _Schedule:
    """Hands out request numbers; a number not handed out by the deadline is unfinished."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0
        self.unfinished_waits: list[float] = []
        self._lock = threading.Lock()

    def abandon(self, waited_s: float) -> None:
        with self._lock:
            self.unfinished_waits.append(waited_s)

    def take(self) -> int | None:
        with self._lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1


@dataclass
class OpenModel(Generic[C]):
    """``connect()`` opens one worker connection; ``execute(conn, i)`` runs request ``i``.

    ``execute`` raises ``recoverable`` errors for a failed request (counted, the run goes on);
    ``broken(conn)`` tells whether the connection must be replaced after one.
    """

    connect: Callable[[], C]
    execute: Callable[[C, int], None]
    close: Callable[[C], None]
    broken: Callable[[C], bool]
    recoverable: tuple[type[BaseException], ...] = (Exception,)
    clock: Callable[[], float] = time.perf_counter

    def run(
        self,
        rate: float,
        duration_s: float,
        concurrency: int,
        drain_s: float = 5.0,
        progress: Callable[[Progress], None] | None = None,
    ) -> EngineResult:
        schedule = _Schedule(max(round(rate * duration_s), 1))
        connections = [self.connect() for _ in range(concurrency)]
        workers = [_Worker() for _ in connections]
        t0 = self.clock() + 0.02
        wall0 = time.time() + (t0 - self.clock())
        deadline = t0 + duration_s + drain_s
        threads = [
            threading.Thread(
                target=self._work,
                args=(i, connections, w, schedule, t0, rate, duration_s, deadline),
                name=f"loadtest-{i}",
                daemon=True,
            )
            for i, w in enumerate(workers)
        ]
        for t in threads:
            t.start()
        self._watch(threads, workers, schedule, t0, duration_s, progress)
        for conn in connections:
            self.close(conn)
        return self._result(workers, schedule, t0, wall0, rate, deadline)

    def _watch(
        self,
        threads: list[threading.Thread],
        workers: list[_Worker],
        schedule: _Schedule,
        t0: float,
        duration_s: float,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(0.25)
            if progress is not None:
                elapsed = max(self.clock() - t0, 0.0)
                progress(
                    Progress(
                        elapsed_s=min(elapsed, duration_s),
                        duration_s=duration_s,
                        due=min(schedule.total, int(elapsed / duration_s * schedule.total)),
                        completed=sum(w.completed for w in workers),
                        errors=sum(w.errors for w in workers),
                    )
                )

    def _work(
        self,
        index: int,
        connections: list[C],
        w: _Worker,
        schedule: _Schedule,
        t0: float,
        rate: float,
        duration_s: float,
        deadline: float,
    ) -> None:
        end = t0 + duration_s
        while (i := schedule.take()) is not None:
            due = t0 + i / rate
            wait = due - self.clock()
            if wait > 0:
                time.sleep(wait)
            if self.clock() > deadline:
                schedule.abandon(deadline - due)
                return
            ok = self._one(index, connections, w, i)
            done = self.clock()
            if ok:
                w.histogram.record_value(max(int((done - due) * 1e6), LOWEST_US))
                w.completed += 1
                w.in_window += done <= end
                w.last_done = done

    def _one(self, index: int, connections: list[C], w: _Worker, i: int) -> bool:
        conn = connections[index]
        try:
            self.execute(conn, i)
            return True
        except self.recoverable as exc:
            w.errors += 1
            if len(w.error_samples) < ERROR_SAMPLES:
                w.error_samples.append(" ".join(str(exc).split())[:200] or type(exc).__name__)
            if self.broken(conn):
                self.close(conn)
                connections[index] = self.connect()
            return False

    def _result(
        self,
        workers: list[_Worker],
        schedule: _Schedule,
        t0: float,
        wall0: float,
        rate: float,
        deadline: float,
    ) -> EngineResult:
        histogram = new_histogram()
        for w in workers:
            histogram.add(w.histogram)
        never_taken = [deadline - (t0 + i / rate) for i in range(schedule.next, schedule.total)]
        waits = schedule.unfinished_waits + never_taken
        for waited in waits:
            histogram.record_value(max(int(waited * 1e6), LOWEST_US))
        samples = [s for w in workers for s in w.error_samples][:ERROR_SAMPLES]
        last = max((w.last_done for w in workers), default=t0)
        return EngineResult(
            histogram=histogram,
            due=schedule.total,
            completed=sum(w.completed for w in workers),
            completed_in_window=sum(w.in_window for w in workers),
            errors=sum(w.errors for w in workers),
            unfinished=len(waits),
            error_samples=samples,
            started_at=wall0,
            elapsed_s=max(last - t0, 0.0),
        )
