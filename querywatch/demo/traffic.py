"""The demo's load generator: HTTP requests at fixed arrival rates (an open model).

Each endpoint has its own arrival schedule; a pool of workers sends the requests, and a request's
latency counts from its scheduled arrival, so queueing behind a slow API is part of it.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

Request = Callable[[httpx.Client, random.Random], httpx.Response]


@dataclass
class Endpoint:
    name: str
    rate: float  # requests per second
    send: Request


@dataclass(frozen=True)
class Sample:
    at: float
    endpoint: str
    latency_ms: float
    ok: bool


@dataclass
class Traffic:
    """Drives the endpoints until stopped; ``scale`` multiplies every rate (the surge act)."""

    base_url: str
    endpoints: list[Endpoint]
    workers: int = 16
    seed: int = 42
    factor: float = 1.0
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=200_000))

    def __post_init__(self) -> None:
        self._queue: queue.Queue[tuple[float, Endpoint] | None] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Traffic:
        self._threads = [
            threading.Thread(target=self._schedule, name="traffic-schedule", daemon=True)
        ]
        self._threads += [
            threading.Thread(target=self._work, args=(i,), name=f"traffic-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for _ in range(self.workers):
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(10)

    def scale(self, factor: float) -> None:
        self.factor = factor

    def _schedule(self) -> None:
        start = time.monotonic()
        sent = dict.fromkeys((e.name for e in self.endpoints), 0.0)
        last = start
        while not self._stop.is_set():
            now = time.monotonic()
            dt, last = now - last, now
            for e in self.endpoints:
                sent[e.name] += e.rate * self.factor * dt
                while sent[e.name] >= 1.0:
                    sent[e.name] -= 1.0
                    try:
                        self._queue.put_nowait((time.time(), e))
                    except queue.Full:
                        self.samples.append(Sample(time.time(), e.name, 0.0, False))
            self._stop.wait(0.01)

    def _work(self, index: int) -> None:
        rng = random.Random(self.seed + index)
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            while True:
                item = self._queue.get()
                if item is None or self._stop.is_set():
                    return
                scheduled, endpoint = item
                try:
                    ok = endpoint.send(client, rng).status_code < 500
                except httpx.HTTPError:
                    ok = False
                done = time.time()
                self.samples.append(Sample(done, endpoint.name, (done - scheduled) * 1000, ok))

    def window(self, seconds: float, endpoint: str | None = None) -> list[Sample]:
        since = time.time() - seconds
        return [
            s
            for s in list(self.samples)
            if s.at >= since and (endpoint is None or s.endpoint == endpoint)
        ]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def shop_endpoints(scale: float = 1.0) -> list[Endpoint]:
    """The demo shop's traffic mix (requests per second at scale 1)."""

    def customer(rng: random.Random) -> int:
        return 1 + int(100 * rng.random() ** 2)  # the most active customers browse their history

    return [
        Endpoint(
            "product",
            20 * scale,
            lambda c, r: c.get(f"/products/{1 + int(5000 * r.random() ** 2)}"),
        ),
        Endpoint(
            "cart",
            4 * scale,
            lambda c, r: c.post(
                "/cart", json={"customer_id": customer(r), "product_id": r.randint(1, 5000)}
            ),
        ),
        Endpoint(
            "checkout",
            1 * scale,
            lambda c, r: c.post(
                "/checkout",
                json={
                    "customer_id": customer(r),
                    "product_ids": [r.randint(1, 5000) for _ in range(3)],
                },
            ),
        ),
        Endpoint("history", 1 * scale, lambda c, r: c.get(f"/customers/{customer(r)}/orders")),
    ]
