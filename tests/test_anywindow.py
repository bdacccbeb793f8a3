"""Diagnosing stored windows (querywatch.anywindow): raw intervals for short windows, rollups for
long ones, written through the Store API into a real SQLite file, with exactly known figures."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from querywatch import anywindow
from querywatch.detect import Detector, DetectSettings
from querywatch.model import Counters, Interval, StatementDelta, StatementKey, Verdict
from querywatch.monitor import Monitor
from querywatch.store import Store

STEP = 10.0
T0 = 1_795_000_000.0 // 3600 * 3600  # an hour boundary
HOURS = 2.0
COUNT = round(HOURS * 3600 / STEP)
FPS = 40
CULPRIT = 7
CHANGE = T0 + 100 * 60  # 01:40, in the last sixth
DEPLOY = CHANGE - 30


@dataclass(frozen=True)
class Built:
    path: Path
    end: float


def fp(i: int) -> str:
    return f"fp{i:03d}"


def write(path: Path, *, change: bool = True, deploy: bool = True, seed: int = 3) -> Built:
    """COUNT intervals of FPS jittered statements; from CHANGE the culprit runs 8x as often."""
    rng = random.Random(seed)
    rates = [(10.0 / (i + 1) ** 0.5, rng.lognormvariate(0.5, 0.8)) for i in range(FPS)]
    keys = [StatementKey(1, 10, 500 + i) for i in range(FPS)]
    names = {k: fp(i) for i, k in enumerate(keys)}
    texts = {fp(i): f"SELECT * FROM t{i} WHERE id = $1" for i in range(FPS)}
    end = T0 + COUNT * STEP
    with Store(path, clock=lambda: end) as store:
        server = store.server("s").id
        if deploy:
            store.add_deploy("v9", DEPLOY)
        for n in range(COUNT):
            start = T0 + n * STEP
            deltas = []
            for i, (cps, mean) in enumerate(rates):
                calls = max(1.0, round(cps * STEP * rng.uniform(0.8, 1.2)))
                if change and i == CULPRIT and start >= CHANGE:
                    calls *= 8
                ms = calls * mean * rng.uniform(0.8, 1.2)
                deltas.append(StatementDelta(keys[i], Counters(calls=calls, exec_ms=ms)))
            interval = Interval(start, start + STEP, tuple(deltas), None)
            store.record_interval(server, interval, names if n == 0 else {}, texts)
            if n % 60 == 59:
                store.maintain(start + STEP)
        store.maintain(end)
    return Built(path, end)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write(tmp_path_factory.mktemp("anywindow") / "qw.db")


@pytest.fixture
def monitor(built: Built) -> Iterator[Monitor]:
    with Store(built.path, create=False, clock=lambda: built.end) as store:
        server = store.servers()[0].id
        yield Monitor(store, server, "s", Detector(DetectSettings()))


@pytest.mark.parametrize("rows", [10**9, 1000], ids=["raw intervals", "rollups"])
def test_the_whole_history_with_a_change_in_its_last_sixth(
    monitor: Monitor, built: Built, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    d = monitor.diagnose_window(T0, built.end)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "pre_onset"), d.summary
    top = d.culprits[0]
    assert top.fingerprint == fp(CULPRIT)
    assert top.onset is not None
    precision = STEP if rows > 10**6 else 60.0  # the rollups know an onset to the minute
    assert abs(top.onset - CHANGE) <= precision
    assert top.calls_per_s.window / top.calls_per_s.baseline == pytest.approx(8.0, rel=0.25)
    assert [(v.version, v.suspect) for v in d.deploys] == [("v9", True)]
    assert (d.window_start, d.window_end) == (T0, built.end)
    assert d.baseline_start == T0 and d.baseline_end < CHANGE


def test_rollups_and_raw_intervals_agree(
    monitor: Monitor, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = T0 + 30 * 60  # history before it: 30 min
    raw = monitor.diagnose_window(start, built.end)
    monkeypatch.setattr(anywindow, "RAW_ROWS", 1000)
    rolled = monitor.diagnose_window(start, built.end)
    for d in (raw, rolled):
        assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "history")
        assert d.culprits[0].fingerprint == fp(CULPRIT)
    assert rolled.traffic_factor == pytest.approx(raw.traffic_factor, rel=0.05)
    r, w = raw.culprits[0], rolled.culprits[0]
    assert w.calls_per_s.window == pytest.approx(r.calls_per_s.window, rel=0.05)
    assert w.calls_per_s.baseline == pytest.approx(r.calls_per_s.baseline, rel=0.05)
    assert w.excess_share == pytest.approx(r.excess_share, abs=0.05)


def test_db_time_sums_what_was_written(monitor: Monitor, built: Built) -> None:
    store, server = monitor.store, monitor.server_id
    raw = {
        fp: c for s in store.summaries(server, T0, built.end) for fp, c in s.by_fingerprint.items()
    }
    calls: dict[str, float] = {}
    for s in store.summaries(server, T0, built.end):
        for name, c in s.by_fingerprint.items():
            calls[name] = calls.get(name, 0.0) + c.calls
    for step in (60.0, 3600.0):
        sums, seconds = store.db_time(server, T0, built.end, step)
        assert sorted(sums) == [T0 + k * step for k in range(round(HOURS * 3600 / step))]
        assert sum(seconds.values()) == pytest.approx(COUNT * STEP)
        got: dict[str, float] = {}
        for by_fp in sums.values():
            for name, (n, _) in by_fp.items():
                got[name] = got.get(name, 0.0) + n
        assert got == pytest.approx(calls)
    only, _ = store.db_time(server, T0, T0 + 600, 60.0, [fp(CULPRIT)])
    assert {name for by_fp in only.values() for name in by_fp} == {fp(CULPRIT)}
    assert set(raw) == set(calls)


@pytest.mark.parametrize("rows", [10**9, 1000], ids=["raw intervals", "rollups"])
def test_a_steady_history_alone_is_still_learning(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    steady = write(tmp_path / "steady.db", change=False, deploy=False)
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    with Store(steady.path, create=False, clock=lambda: steady.end) as store:
        m = Monitor(store, store.servers()[0].id, "s", Detector(DetectSettings()))
        d = m.diagnose_window(T0, steady.end)
        assert (d.verdict, d.learning, d.culprits) == (Verdict.HEALTHY, True, ())
        later = m.diagnose_window(T0 + 3600, steady.end)  # an hour of history before it
        assert (later.verdict, later.learning, later.baseline_kind) == (
            Verdict.HEALTHY,
            False,
            "history",
        )
