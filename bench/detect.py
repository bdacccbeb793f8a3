"""Benchmark: detection (+ one diagnosis) per interval with 5,000 active fingerprints.

Target: Detector.observe plus one diagnose call per interval <= 100 ms CPU (median).

History: the Detector keeps only its trailing window (``window_intervals``, 360 by default = 1 hour
at 10 s) as per-fingerprint arrays; older history (7 days) is never read again per interval, so the
bench preloads exactly that window, all 5,000 fingerprints active in every interval. Diagnosis gets
the window as one rolled-up baseline interval (what the store's rollup hands it) and the current
interval. The in-run reference is the cost of merely iterating the interval's 5,000 counters.

Run: /tmp/qwvenv/bin/python bench/detect.py [--fingerprints 5000] [--intervals 30]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

from querywatch.detect import Detector, DetectSettings
from querywatch.diagnose import diagnose
from querywatch.model import Counters, IntervalSummary, Statement

SECONDS = 10.0
POOL = 8  # distinct jittered workloads reused to keep the setup cheap


def workloads(fingerprints: int, seed: int) -> list[dict[str, Counters]]:
    rng = random.Random(seed)
    base = [
        (f"fp{i:05d}", 200.0 / (i + 1) ** 0.8 + 0.1, rng.lognormvariate(0.0, 1.0))
        for i in range(fingerprints)
    ]
    pool = []
    for _ in range(POOL):
        by_fp = {}
        for fp, cps, mean in base:
            calls = max(1, round(cps * SECONDS * rng.uniform(0.7, 1.3)))
            by_fp[fp] = Counters(
                calls=calls, exec_ms=calls * mean * rng.uniform(0.7, 1.3), rows=calls
            )
        pool.append(by_fp)
    return pool


def intervals(pool: list[dict[str, Counters]], start: int, count: int) -> Iterator[IntervalSummary]:
    for i in range(start, start + count):
        t = i * SECONDS
        yield IntervalSummary(t, t + SECONDS, True, pool[i % len(pool)])


def rollup(pool: list[dict[str, Counters]], window: int) -> IntervalSummary:
    totals: dict[str, Counters] = {}
    for i in range(window):
        for fp, c in pool[i % len(pool)].items():
            prev = totals.get(fp)
            totals[fp] = c if prev is None else prev.plus(c)
    return IntervalSummary(0.0, window * SECONDS, True, totals)


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def iterate(iv: IntervalSummary) -> float:
    total = 0.0
    for c in iv.by_fingerprint.values():
        total += c.calls + c.exec_ms
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fingerprints", type=int, default=5000)
    ap.add_argument("--intervals", type=int, default=30)
    args = ap.parse_args()
    settings = DetectSettings()
    window = settings.window_intervals
    pool = workloads(args.fingerprints, seed=7)

    t0 = time.process_time()
    detector = Detector(settings, history=intervals(pool, 0, window))
    preload = time.process_time() - t0
    base = rollup(pool, window)
    statements = {fp: Statement(fp, f"SELECT * FROM t WHERE id = $1 -- {fp}") for fp in pool[0]}

    observe_ms, diagnose_ms, total_ms, reference_ms = [], [], [], []
    for iv in intervals(pool, window, args.intervals):
        reference_ms.append(cpu(partial(iterate, iv)) * 1000)
        t_obs = cpu(partial(detector.observe, iv)) * 1000
        t_diag = cpu(partial(diagnose, [base], [iv], statements, [])) * 1000
        observe_ms.append(t_obs)
        diagnose_ms.append(t_diag)
        total_ms.append(t_obs + t_diag)
    pages = len(detector.incidents)

    med = statistics.median
    ref = med(reference_ms)
    print(f"fingerprints={args.fingerprints} window_intervals={window} measured={args.intervals}")
    print(f"preload of the window: {preload:.1f} s CPU (once, at start)")
    print(f"reference (iterate 5,000 counters): median {ref:.2f} ms")
    print(
        f"Detector.observe: median {med(observe_ms):.1f} ms, mean {statistics.fmean(observe_ms):.1f}"
        f" ms, max {max(observe_ms):.1f} ms  (x{med(observe_ms) / ref:.0f} the reference)"
    )
    print(f"diagnose (rolled-up baseline + 1 interval): median {med(diagnose_ms):.1f} ms")
    verdict = "PASS" if med(total_ms) <= 100.0 else "FAIL"
    print(
        f"detection + diagnosis: median {med(total_ms):.1f} ms CPU per interval "
        f"(x{med(total_ms) / ref:.0f} the reference); target <= 100 ms: {verdict}"
    )
    print(f"open incidents on the jittered steady workload: {pages}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MB")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
