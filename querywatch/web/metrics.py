"""/metrics: Prometheus text computed at scrape time from the store (client_python's custom collector).

Per-statement figures cover the last ``window_s`` seconds of raw intervals, for the top ``top``
fingerprints by database time plus one ``other`` series, so label cardinality stays bounded
whatever the workload. Collector health comes from the status the watcher writes; incident state
from the stored incidents. Nothing here holds state between scrapes.

Every series carries a ``server`` label, bounded too: at most ``MAX_SERVERS`` (50) servers are
labelled by name, those with a firing incident first, then by name; the rest of a larger fleet
is summed under ``server="other"`` (their statements as one ``other`` statement), and
``querywatch_servers`` says how many were folded. So one store yields at most about
50 x (``top`` + 1) series per statement metric. A server's labels from ``[[servers]]`` (env,
team, role...) are on ``querywatch_server_info`` (value 1), to join on ``server``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..model import Counters, IncidentState
from ..store.protocol import StoreProtocol
from ..store.sqlite import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TOP = 10
MAX_SERVERS = 50  # servers labelled by name; the rest are summed as server="other"
OTHER = "other"
MAX_INFO_LABELS = 16  # label names on querywatch_server_info (the first, sorted)
SERVER_INFO = "server:"  # status key prefix of a server's labels (querywatch.status)
LABEL_NAME = re.compile(r"(?!__)(?!server$)[A-Za-z_][A-Za-z0-9_]*")
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
        store: StoreProtocol,
        clock: Callable[[], float],
        window_s: float = WINDOW_S,
        top: int = TOP,
        max_servers: int = MAX_SERVERS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.window_s = window_s
        self.top = top
        self.max_servers = max_servers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.clock()
        status = self.store.status()
        servers = self.store.servers()
        named = labelled(self.store, servers, self.max_servers)
        yield from _statement_families(self.store, servers, named, now, self.window_s, self.top)
        yield from _incident_families(self.store, servers, named)
        yield from _collector_families(status, named)
        yield from _fleet_families(status, servers, named)
        yield from _store_families(self.store)


def labelled(store: StoreProtocol, servers: list[Server], cap: int = MAX_SERVERS) -> frozenset[str]:
    """The servers labelled by name: those with a firing incident first, then by name, at most
    ``cap``; every other server is ``other``."""
    firing = {
        s.server_id for s in store.incidents(limit=1000) if s.incident.state is IncidentState.FIRING
    }
    ranked = sorted(servers, key=lambda s: (s.id not in firing, s.name))
    return frozenset(s.name for s in ranked[:cap])


def _as(named: frozenset[str], name: str) -> str:
    return name if name in named else OTHER


def render(collector: StoreCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _statement_families(
    store: StoreProtocol,
    servers: list[Server],
    named: frozenset[str],
    now: float,
    window_s: float,
    top: int,
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
    folded = _Folded()
    for srv in servers:
        if srv.name in named:
            _add_statements(f, store, srv, now, window_s, top)
        else:
            folded.add(store, srv, now, window_s)
    folded.emit(f)
    yield from (f.db_time, f.calls, f.mean, f.rows, f.window)


class _Folded:
    """The servers beyond the cap, summed into one ``other`` statement of server ``other``."""

    def __init__(self) -> None:
        self.servers = 0
        self.db_time = self.calls = self.rows = self.exec_ms = 0.0

    def add(self, store: StoreProtocol, srv: Server, now: float, window_s: float) -> None:
        start = now - window_s
        totals = store.fingerprint_totals(srv.id, start, now, RAW_STEP)
        seconds = sum(store.seconds_covered(srv.id, start, now, RAW_STEP).values())
        self.servers += 1
        if seconds <= 0:
            return
        total = Counters()
        for c in totals.values():
            total = total.plus(c)
        self.db_time += total.exec_ms / 1000.0 / seconds
        self.calls += total.calls / seconds
        self.rows += total.rows / seconds
        self.exec_ms += total.exec_ms

    def emit(self, f: _Statements) -> None:
        if not self.servers:
            return
        labels = [OTHER, OTHER, OTHER]
        f.db_time.add_metric(labels, self.db_time)
        f.calls.add_metric(labels, self.calls)
        mean = self.db_time / self.calls if self.calls > 0 else 0.0  # seconds per call
        f.mean.add_metric(labels, mean)
        f.rows.add_metric(labels, self.rows)


def _add_statements(
    f: _Statements, store: StoreProtocol, srv: Server, now: float, window_s: float, top: int
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


def _incident_families(
    store: StoreProtocol, servers: list[Server], named: frozenset[str]
) -> Iterator[GaugeMetricFamily]:
    names = {s.id: _as(named, s.name) for s in servers}
    counts = {(names[s.id], state.value): 0 for s in servers for state in IncidentState}
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
    status: dict[str, dict[str, object]], named: frozenset[str]
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    collectors = _by_server(status, "collector:", named)
    last = GaugeMetricFamily(
        "querywatch_collector_last_success_timestamp_seconds",
        "When the collector last stored a snapshot (POSIX seconds; the oldest of server other).",
        labels=["server"],
    )
    for name, values in sorted(collectors.items()):
        success = [v for v in (_time(r.get("last_success")) for r in values) if v is not None]
        if success:
            last.add_metric([name], min(success))
    yield last
    for key, help_text in _COUNTERS:
        family = CounterMetricFamily(f"querywatch_collector_{key}", help_text, labels=["server"])
        for name, values in sorted(collectors.items()):
            family.add_metric([name], sum(_number(r.get(key)) for r in values))
        yield family
    learning = GaugeMetricFamily(
        "querywatch_detector_learning",
        "1 while the detector is still learning the normal workload (server other: how many).",
        labels=["server"],
    )
    for name, values in sorted(_by_server(status, "detector:", named).items()):
        learning.add_metric([name], sum(1.0 for r in values if r.get("learning")))
    yield learning


def _by_server(
    status: dict[str, dict[str, object]], prefix: str, named: frozenset[str]
) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for key, value in status.items():
        if key.startswith(prefix):
            out.setdefault(_as(named, key[len(prefix) :]), []).append(value)
    return out


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fleet_families(
    status: dict[str, dict[str, object]], servers: list[Server], named: frozenset[str]
) -> Iterator[GaugeMetricFamily]:
    """How many servers and how many folded into ``other``; each labelled server's labels."""
    count = GaugeMetricFamily(
        "querywatch_servers",
        f'Servers in the store, and those summed as server="other" (beyond {MAX_SERVERS}).',
        labels=["labelled"],
    )
    inside = sum(1 for s in servers if s.name in named)
    count.add_metric(["true"], inside)
    count.add_metric(["false"], len(servers) - inside)
    yield count
    labels = {s.name: _labels(status.get(f"{SERVER_INFO}{s.name}", {})) for s in servers}
    keys = sorted({k for found in labels.values() for k in found})[:MAX_INFO_LABELS]
    info = GaugeMetricFamily(
        "querywatch_server_info",
        "1 per labelled server, with its labels from [[servers]] (join on server).",
        labels=["server", *keys],
    )
    for name in sorted(n for n in labels if n in named):
        info.add_metric([name, *(labels[name].get(k, "") for k in keys)], 1.0)
    yield info


def _labels(row: dict[str, object]) -> dict[str, str]:
    found = row.get("labels")
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items() if LABEL_NAME.fullmatch(str(k))}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _store_families(store: StoreProtocol) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    yield GaugeMetricFamily(
        "querywatch_store_size_bytes",
        "Size of the history store (its SQLite file, or its PostgreSQL tables).",
        store.size_bytes(),
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
