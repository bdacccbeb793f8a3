"""Diagnosing a stored window whose history begins during an incident (querywatch.anywindow):
querywatch installed in the middle of an outage, with pg_stat_statements' long run stored at its
first snapshot. A later rise inside the window (CPU contention slowing every statement, a
CPU-bound scan most) is no onset to compare with: what preceded it was the incident already, so
the window is compared with the long run. Written through the Store API into a real SQLite file
(tests/test_anywindow.py builds its stores the same way)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from querywatch import anywindow
from querywatch.detect import Detector, DetectSettings
from querywatch.diagnose import DiagnoseSettings, choose_baseline, diagnose_any
from querywatch.longrun import LongRun
from querywatch.model import (
    Counters,
    Diagnosis,
    Interval,
    IntervalSummary,
    Statement,
    StatementDelta,
    StatementKey,
    Verdict,
)
from querywatch.monitor import Monitor
from querywatch.store import Store

STEP = 10.0
T0 = 1_795_000_000.0 // 3600 * 3600  # the first stored interval (an hour boundary)
COUNT = 720  # 2 hours: long enough for the rollups too
LONG_RUN_S = 3 * 3600.0  # the statistics held this much normal traffic at the first snapshot
NORMAL = {  # fingerprint -> (calls/s, mean ms): the server's normal
    "lookup": (50.0, 0.2),
    "by_email": (10.0, 0.3),
    "scan": (2.0, 20.0),
    "hot": (4.0, 5.0),
}
CULPRIT = "hot"  # the N+1 rollout multiplies its calls
N_PLUS_1 = 8.0
SLOWER = 1.2  # CPU contention: every mean this much longer ...
SCAN_SLOWER = 2.2  # ... the CPU-bound scan's more (a change point on its own)
CONTENTION = T0 + 0.4 * COUNT * STEP  # mid-window, after far more than 12 intervals


@dataclass(frozen=True)
class Built:
    path: Path
    end: float


def rates(start: float, rollout: float, contention: float | None) -> dict[str, tuple[float, float]]:
    found = {}
    for name, (cps, mean) in NORMAL.items():
        if name == CULPRIT and start >= rollout:
            cps *= N_PLUS_1
        if contention is not None and start >= contention:
            mean *= SCAN_SLOWER if name == "scan" else SLOWER
        found[name] = (cps, mean)
    return found


def write(
    path: Path,
    *,
    rollout: float = T0 - 10.0,
    contention: float | None = CONTENTION,
    long_run: bool = True,
    seed: int = 5,
) -> Built:
    """COUNT jittered intervals from T0 (the watch's first snapshot); the rollout began at
    ``rollout`` (10 s before the watch started, by default); the long run is the normal."""
    rng = random.Random(seed)
    names = list(NORMAL)
    keys = {name: StatementKey(1, 10, 700 + i) for i, name in enumerate(names)}
    end = T0 + COUNT * STEP
    with Store(path, clock=lambda: end) as store:
        server = store.server("s").id
        if long_run:
            counters = {
                name: Counters(calls=cps * LONG_RUN_S, exec_ms=cps * mean * LONG_RUN_S)
                for name, (cps, mean) in NORMAL.items()
            }
            store.save_long_run(server, LongRun(T0 - LONG_RUN_S, T0, counters))
        store.add_deploy("v2", rollout - 5.0)
        for n in range(COUNT):
            start = T0 + n * STEP
            deltas = []
            for name, (cps, mean) in rates(start, rollout, contention).items():
                calls = max(1.0, round(cps * STEP * rng.uniform(0.9, 1.1)))
                ms = calls * mean * rng.uniform(0.9, 1.1)
                deltas.append(StatementDelta(keys[name], Counters(calls=calls, exec_ms=ms)))
            interval = Interval(start, start + STEP, tuple(deltas), None)
            fps = {k: name for name, k in keys.items()} if n == 0 else {}
            texts = {name: f"SELECT * FROM {name} WHERE id = $1" for name in names}
            store.record_interval(server, interval, fps, texts if n == 0 else {})
            if n % 60 == 59:
                store.maintain(start + STEP)
        store.maintain(end)
    return Built(path, end)


def diagnose_window(built: Built, start: float, end: float | None = None) -> Diagnosis:
    with Store(built.path, create=False, clock=lambda: built.end) as store:
        m = Monitor(store, store.servers()[0].id, "s", Detector(DetectSettings()))
        return m.diagnose_window(start, built.end if end is None else end)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write(tmp_path_factory.mktemp("onset") / "qw.db")


ROWS = pytest.mark.parametrize("rows", [10**9, 1000], ids=["raw intervals", "rollups"])


@ROWS
def test_the_whole_window_of_a_watch_started_during_the_outage_is_compared_with_the_long_run(
    outage: Built, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    d = diagnose_window(outage, T0)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "long_run"), d.summary
    top = d.culprits[0]
    assert top.fingerprint == CULPRIT
    assert top.calls_per_s.window / top.calls_per_s.baseline == pytest.approx(N_PLUS_1, rel=0.2)
    assert (d.window_start, d.window_end) == (T0, outage.end)
    assert "long-run average" in d.summary


@ROWS
def test_a_window_after_a_short_history_of_the_outage_is_compared_with_the_long_run(
    outage: Built, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # three intervals of the outage precede the window: too few to be a baseline, and abnormal
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    d = diagnose_window(outage, T0 + 3 * STEP)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "long_run"), d.summary
    assert d.culprits[0].fingerprint == CULPRIT


def test_a_short_window_at_the_first_interval_agrees(outage: Built) -> None:
    # as the watch's own page did: the first minutes, before any contention
    d = diagnose_window(outage, T0, T0 + 40 * STEP)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "long_run"), d.summary
    assert d.culprits[0].fingerprint == CULPRIT


@ROWS
def test_a_rollout_inside_the_window_is_its_onset_against_the_part_before_it(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # normal traffic first: the change point's part before is normal against the long run, so
    # it is the onset; what follows it is compared with that part (the server's recent normal)
    rollout = T0 + 0.7 * COUNT * STEP
    built = write(tmp_path / "qw.db", rollout=rollout, contention=None)
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    d = diagnose_window(built, T0)
    assert (d.verdict, d.baseline_kind) == (Verdict.QUERY_REGRESSION, "pre_onset"), d.summary
    top = d.culprits[0]
    assert top.fingerprint == CULPRIT
    assert top.onset is not None and abs(top.onset - rollout) <= (STEP if rows > 1000 else 60.0)
    assert top.calls_per_s.window / top.calls_per_s.baseline == pytest.approx(N_PLUS_1, rel=0.2)
    assert [(v.version, v.suspect) for v in d.deploys] == [("v2", True)]
    assert (d.window_start, d.window_end) == (T0, built.end)


@ROWS
def test_without_a_long_run_the_window_before_the_onset_is_the_baseline(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing to judge the part before with: the change point stands, as before
    built = write(tmp_path / "qw.db", long_run=False)
    monkeypatch.setattr(anywindow, "RAW_ROWS", rows)
    d = diagnose_window(built, T0)
    assert d.baseline_kind == "pre_onset", d.summary
    assert d.baseline_end <= CONTENTION


# -- the rule itself, on intervals in memory (querywatch.diagnose, pure) ----------------------------
STATEMENTS = {name: Statement(name, f"SELECT * FROM {name} WHERE id = $1") for name in NORMAL}


def summaries(
    start: float, count: int, rollout: float, contention: float | None, seed: int = 9
) -> list[IntervalSummary]:
    rng = random.Random(seed)
    found = []
    for n in range(count):
        at = start + n * STEP
        by_fp = {}
        for name, (cps, mean) in rates(at, rollout, contention).items():
            calls = cps * STEP * rng.uniform(0.9, 1.1)
            by_fp[name] = Counters(calls=calls, exec_ms=calls * mean * rng.uniform(0.9, 1.1))
        found.append(IntervalSummary(at, at + STEP, True, by_fp))
    return found


def long_run_summary() -> IntervalSummary:
    by_fp = {
        name: Counters(calls=cps * LONG_RUN_S, exec_ms=cps * mean * LONG_RUN_S)
        for name, (cps, mean) in NORMAL.items()
    }
    return IntervalSummary(T0 - LONG_RUN_S, T0, True, by_fp)


SHORT = 60  # intervals of a window in memory; the contention begins after 24 of them
RISE = T0 + 24 * STEP
ROLLOUT = T0 + 40 * STEP


@pytest.mark.parametrize(
    ("rollout", "history", "long_run", "kind", "onset"),
    [
        # the window begins in the incident: the contention's rise is no onset
        (T0 - 10, 0, True, "long_run", T0),  # no history kept (e.g. all in incidents)
        (T0 - 30, 3, True, "long_run", T0 - 30),  # a short history of the incident
        (T0 - 10, 0, False, "pre_onset", None),  # nothing to judge the part before with
        # normal traffic, then the rollout: the change point is the onset
        (ROLLOUT, 0, True, "pre_onset", ROLLOUT),  # at the start of the server's history
        (ROLLOUT, 6, True, "pre_onset", ROLLOUT),  # some history precedes the window
        (ROLLOUT, 0, False, "pre_onset", ROLLOUT),
        (ROLLOUT, 12, True, "history", ROLLOUT),  # enough history: as always
    ],
)
def test_the_baseline_of_a_window(
    rollout: float,
    history: int,
    long_run: bool,
    kind: str,
    onset: float | None,
) -> None:
    contention = RISE if rollout < T0 else None
    before = summaries(T0 - history * STEP, history, rollout, None, seed=2)
    d = diagnose_any(
        summaries(T0, SHORT, rollout, contention),
        STATEMENTS,
        [],
        history=before,
        long_run=long_run_summary() if long_run else None,
    )
    assert d.baseline_kind == kind, d.summary
    assert (d.window_start, d.window_end) == (T0, T0 + SHORT * STEP)
    if onset is None:  # compared with the incident: the contention's scan is all it sees
        assert [c.fingerprint for c in d.culprits] != [CULPRIT]
        return
    assert (d.verdict, d.culprits[0].fingerprint) == (Verdict.QUERY_REGRESSION, CULPRIT)
    assert d.culprits[0].onset == max(onset, T0)


def test_an_onset_is_kept_only_after_a_normal_part() -> None:
    incident = summaries(T0, SHORT, T0 - 10, RISE)
    normal = summaries(T0, SHORT, ROLLOUT, None)
    lr = long_run_summary()
    cut = 20  # both parts' first 20 intervals
    for window, accepted in ((incident, False), (normal, True)):
        kind, baseline, compared = choose_baseline(
            [],
            window[:cut],
            window[cut:],
            window,
            lr,
            STATEMENTS,
            DiagnoseSettings(),
            enough_s=12 * STEP,
        )
        assert (kind, compared is window) == (
            ("pre_onset", False) if accepted else ("long_run", True)
        )
        assert list(baseline) == (window[:cut] if accepted else [lr])
