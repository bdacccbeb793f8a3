"""The fleet's set-based reads (querywatch.store.fleet) against the per-server reads they replace,
on both engines: DB time per bucket from rollup buckets' totals (querywatch.store.bucket_time)
and raw intervals equals ``Store.db_time`` summed over fingerprints, across the minute and hour
marks, after late intervals, and after ``store copy``; interval counts and open incidents."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from querywatch.model import (
    Counters,
    Incident,
    IncidentEvent,
    IncidentState,
    Interval,
    StatementDelta,
    StatementKey,
)
from querywatch.store import Store
from querywatch.store.copy import copy_store

T0 = 1_800_000_000.0  # an hour mark
APP = StatementKey(1, 10, 1)
OTHER = StatementKey(1, 10, 2)
NESTED = StatementKey(1, 10, 3, toplevel=False)  # left out: not top-level
OWN = StatementKey(1, 10, 4)  # left out: querywatch's own
FPS = {APP: "fa", OTHER: "fb", NESTED: "fn", OWN: "fo"}
TEXTS = {fp: f"SELECT {fp}" for fp in FPS.values()}


def _interval(start: float, length: float, scale: float) -> Interval:
    deltas = tuple(
        StatementDelta(k, Counters(calls=n + 1, exec_ms=scale * (n + 1) * 1.5, rows=1))
        for n, k in enumerate(FPS)
    )
    return Interval(start, start + length, deltas, None)


def _fill(store: Store, until: float, length: float = 25.0) -> None:
    """Two servers with intervals of ``length`` s (crossing minute marks) from T0 - 2 h to
    ``until``; a third server with none."""
    for n, name in enumerate(("a", "b")):
        srv = store.server(name)
        t, first = T0 - 7200, True
        while t + length <= until:
            fps, texts = (FPS, TEXTS) if first else ({}, {})
            interval = _interval(t, length, n + 1 + (t % 7))
            store.record_interval(srv.id, interval, fps, texts, own=frozenset({"fo"}))
            t, first = t + length, False
    store.server("empty")


def _per_server(
    store: Store, start: float, end: float, step: float
) -> dict[str, dict[float, list[float]]]:
    """What the fleet page read before: ``Store.db_time`` per server, summed over fingerprints."""
    out: dict[str, dict[float, list[float]]] = {}
    for srv in store.servers():
        sums, seconds = store.db_time(srv.id, start, end, step)
        buckets = set(sums) | set(seconds)
        got = {
            b: [sum(v[1] for v in sums.get(b, {}).values()), seconds.get(b, 0.0)] for b in buckets
        }
        if got:
            out[srv.name] = got
    return out


def _fleet(
    store: Store, start: float, end: float, step: float
) -> dict[str, dict[float, list[float]]]:
    names = {s.id: s.name for s in store.servers()}
    return {names[k]: v for k, v in store.fleet_db_time(start, end, step).items()}


def _same(store: Store, start: float, end: float, step: float) -> None:
    want, got = _per_server(store, start, end, step), _fleet(store, start, end, step)
    assert set(got) == {"a", "b"}
    _close(got, want)


def _close(
    got: dict[str, dict[float, list[float]]], want: dict[str, dict[float, list[float]]]
) -> None:
    assert set(got) == set(want)
    for name, buckets in want.items():
        assert set(got[name]) == set(buckets), name
        for b, (ms, seconds) in buckets.items():
            assert got[name][b] == pytest.approx([ms, seconds]), (name, b)


def test_fleet_db_time_equals_the_per_server_reads(any_store: Store) -> None:
    now = T0 + 130.0  # 2 h 2 min of intervals: hours, minutes and a raw tail
    _fill(any_store, now)
    any_store.maintain(now)
    assert any_store.fleet_db_time(now - 600, now, 60)  # rolled-up minutes and raw ones
    for start, end, step in (
        (T0 - 3600, now, 120.0),
        (T0 - 7200, T0 + 3600, 3600.0),
        (T0, now, 30.0),
    ):
        _same(any_store, start, end, step)
    a = next(s for s in any_store.servers() if s.name == "a")
    _, seconds = any_store.db_time(a.id, T0 - 3600, T0, 3600.0)
    assert seconds == {T0 - 3600: pytest.approx(3600.0, abs=25.0)}


def test_buckets_rolled_again_and_copied_keep_their_db_time(
    any_store: Store, store_location: Callable[[str], str]
) -> None:
    _fill(any_store, T0 - 3000)
    any_store.maintain(T0 - 3010)  # the last intervals cross the mark: rolled up next time
    _fill_more(any_store, T0 - 3000, T0 + 200)
    any_store.maintain(T0 + 200)
    _same(any_store, T0 - 7200, T0 + 200, 60.0)
    _same(any_store, T0 - 7200, T0 + 3600, 3600.0)
    with Store(store_location("copy")) as target:
        target.maintain(T0 - 5000)  # marks behind the source's: the copy rolls the rest up
        copy_store(any_store, target)
        copied = _fleet(target, T0 - 7200, T0 + 200, 60.0)
    _close(copied, _fleet(any_store, T0 - 7200, T0 + 200, 60.0))


def _fill_more(store: Store, start: float, until: float) -> None:
    for n, name in enumerate(("a", "b")):
        srv = store.server(name)
        t = start
        while t + 25 <= until:
            store.record_interval(srv.id, _interval(t, 25.0, n + 3), {}, {}, own=frozenset({"fo"}))
            t += 25


def test_servers_and_open_incidents_for_the_whole_fleet(any_store: Store) -> None:
    _fill(any_store, T0 - 7000)
    servers = {s.name: s for s in any_store.fleet_servers()}
    assert servers["a"].intervals == 8 and servers["a"].last_end == T0 - 7000
    assert servers["empty"].intervals == 0 and servers["empty"].last_end is None
    b = servers["b"].id
    for n, state in enumerate(
        (IncidentState.PENDING, IncidentState.FIRING, IncidentState.RESOLVED)
    ):
        opened = T0 - 7100 + n
        event = IncidentEvent(opened, state, "x")
        incident = Incident(f"i{n}", "fa", state, opened, None, None, ("r",), (event,))
        any_store.save_incident(b, incident, {"summary": f"s{n}"})
    found = [(i.server_id, i.id, i.state, i.summary) for i in any_store.open_incidents()]
    assert found == [(b, "i1", "firing", "s1"), (b, "i0", "pending", "s0")]
