"""/metrics: Prometheus text computed at scrape time from the store (client_python's custom collector).

Per-statement figures cover the last ``window_s`` seconds of raw intervals, for the top ``top``
fingerprints by database time plus one ``other`` series, so label cardinality stays bounded
whatever the workload. Collector health comes from the status the watcher writes; incident state
from the stored incidents. Nothing here holds state between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..model import Counters, IncidentState
from ..store import Store
from ..store.sqlite import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TOP = 10
WINDOW_S = 60.0
QUERY_LABEL = 80  # characters of normalized query text kept in the `query` label
STATEMENT_LABELS = ("server", "fingerprint", "query")
RAW_STEP = 1.0  # below a minute: the store reads raw intervals


@dataclass(frozen=True)
class _Statements:
    db_time: GaugeMetricFamily
    calls: GaugeMetricFamily
    mean: GaugeMetricFamily
    rows: GaugeMetricFamily
    window: GaugeMetricFamily


class StoreCollector(Collector):
    """Reads the store on every scrape; registered in its own registry (never the global one)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        window_s: float = WINDOW_S,
        top: int = TOP,
    ) -> None:
        self.store = store
        self.clock = clock
        self.window_s = window_s
        self.top = top

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.clock()
        servers = self.store.servers()
        yield from _statement_families(self.store, servers, now, self.window_s, self.top)
        yield from _incident_families(self.store, servers)
        yield from _collector_families(self.store.status())
        yield from _store_families(self.store)


def render(collector: StoreCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _statement_families(
    store: Store, servers: list[Server], now: float, window_s: float, top: int
) -> Iterator[GaugeMetricFamily]:
    f = _Statements(
        GaugeMetricFamily(
            "querywatch_statement_db_time_seconds_per_second",
            "Execution time per second of wall time over the metrics window (top statements "
            "and other).",
            labels=STATEMENT_LABELS,
        ),
        GaugeMetricFamily(
            "querywatch_statement_calls_per_second",
            "Calls per second over the metrics window.",
            labels=STATEMENT_LABELS,
        ),
        GaugeMetricFamily(
            "querywatch_statement_mean_seconds",
            "Mean execution time per call over the metrics window.",
            labels=STATEMENT_LABELS,
        ),
        GaugeMetricFamily(
            "querywatch_statement_rows_per_second",
            "Rows returned or affected per second over the metrics window.",
            labels=STATEMENT_LABELS,
        ),
        GaugeMetricFamily(
            "querywatch_statement_window_seconds",
            "Seconds of complete collected data the per-statement figures cover.",
            labels=["server"],
        ),
    )
    for srv in servers:
        _add_statements(f, store, srv, now, window_s, top)
    yield from (f.db_time, f.calls, f.mean, f.rows, f.window)


def _add_statements(
    f: _Statements, store: Store, srv: Server, now: float, window_s: float, top: int
) -> None:
    start = now - window_s
    totals = store.fingerprint_totals(srv.id, start, now, RAW_STEP)
    seconds = sum(store.seconds_covered(srv.id, start, now, RAW_STEP).values())
    f.window.add_metric([srv.name], seconds)
    if seconds <= 0:
        return
    ranked = sorted(totals, key=lambda fp: (-totals[fp].exec_ms, fp))
    texts = store.statements(ranked[:top])
    rest = Counters()
    for fp in ranked[top:]:
        rest = rest.plus(totals[fp])
    rows = [(fp, _label(texts[fp].query if fp in texts else ""), totals[fp]) for fp in ranked[:top]]
    if len(ranked) > top:
        rows.append(("other", "other", rest))
    for fp, query, c in rows:
        labels = [srv.name, fp, query]
        f.db_time.add_metric(labels, c.exec_ms / 1000.0 / seconds)
        f.calls.add_metric(labels, c.calls / seconds)
        f.mean.add_metric(labels, c.mean_ms / 1000.0)
        f.rows.add_metric(labels, c.rows / seconds)


def _label(query: str) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= QUERY_LABEL else flat[: QUERY_LABEL - 3] + "..."


def _incident_families(store: Store, servers: list[Server]) -> Iterator[GaugeMetricFamily]:
    names = {s.id: s.name for s in servers}
    counts = {(s.name, state.value): 0 for s in servers for state in IncidentState}
    firing = GaugeMetricFamily(
        "querywatch_incident_firing",
        "1 for each incident that is firing now, labelled with its culprit key.",
        labels=["server", "incident", "key", "verdict"],
    )
    for stored in store.incidents(limit=1000):
        name = names.get(stored.server_id, str(stored.server_id))
        state = stored.incident.state.value
        counts[(name, state)] = counts.get((name, state), 0) + 1
        if stored.incident.state is IncidentState.FIRING:
            verdict = str((stored.diagnosis or {}).get("verdict", ""))
            firing.add_metric([name, stored.incident.id, stored.incident.key, verdict], 1)
    incidents = GaugeMetricFamily(
        "querywatch_incidents",
        "Stored incidents (the latest 1000) by state.",
        labels=["server", "state"],
    )
    for (name, state), count in sorted(counts.items()):
        incidents.add_metric([name, state], count)
    yield incidents
    yield firing


_COUNTERS = (
    ("intervals", "Intervals the collector stored since it started."),
    ("gaps", "Gaps (counter resets, restarts, evictions, outages) since the collector started."),
    ("dealloc", "pg_stat_statements evictions (dealloc) seen since the collector started."),
    ("reconnects", "Reconnections to the monitored server since the collector started."),
)


def _collector_families(
    status: dict[str, dict[str, object]],
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    collectors = {k.split(":", 1)[1]: v for k, v in status.items() if k.startswith("collector:")}
    last = GaugeMetricFamily(
        "querywatch_collector_last_success_timestamp_seconds",
        "When the collector last stored a snapshot (POSIX seconds).",
        labels=["server"],
    )
    for name, value in sorted(collectors.items()):
        success = value.get("last_success")
        if isinstance(success, int | float):
            last.add_metric([name], float(success))
    yield last
    for key, help_text in _COUNTERS:
        family = CounterMetricFamily(f"querywatch_collector_{key}", help_text, labels=["server"])
        for name, value in sorted(collectors.items()):
            family.add_metric([name], _number(value.get(key)))
        yield family
    learning = GaugeMetricFamily(
        "querywatch_detector_learning",
        "1 while the detector is still learning the normal workload.",
        labels=["server"],
    )
    for key, value in sorted(status.items()):
        if key.startswith("detector:"):
            learning.add_metric([key.split(":", 1)[1]], 1.0 if value.get("learning") else 0.0)
    yield learning


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _store_families(store: Store) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    yield GaugeMetricFamily(
        "querywatch_store_size_bytes", "Size of the history store file.", store.size_bytes()
    )
    deploys = store.deploys()
    yield CounterMetricFamily(
        "querywatch_deploys", "Deploy markers recorded in the store.", len(deploys)
    )
    last = GaugeMetricFamily(
        "querywatch_deploy_last_timestamp_seconds",
        "When the latest deploy happened (POSIX seconds).",
    )
    for d in deploys[-1:]:
        last.add_metric([], d.at)
    yield last
