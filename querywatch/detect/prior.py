"""Pure: a long-run prior that judges the first intervals before the store holds history.

A :class:`Prior` wraps :func:`~querywatch.detect.baseline.long_run_baseline`. It is checked once,
against the first interval it judges:

- a fingerprint whose whole long-run count is less than ``min_history_s`` seconds of its current
  rate started just now (its "long run" is the present): it is dropped from the prior and
  learned as usual, as is every fingerprint absent from the prior;
- when typical statements run ``max_traffic_factor`` times as often as their long-run average,
  the average describes another load (a server idle most of its life): the prior is dropped.

While a prior judges, only anomalies about its own fingerprints and absolute server-wide ones
(locks, connections, CPU) count, and a fingerprint's only when far past its threshold: nothing
else has a normal yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from querywatch.detect.baseline import Baseline, Rates, long_run_baseline
from querywatch.detect.rules import traffic_factor
from querywatch.detect.settings import DetectSettings
from querywatch.model import Anomaly, IntervalSummary

ABSOLUTE_RULES = frozenset({"lock_waits", "connection_saturation", "cpu_saturation"})
MAX_TRAFFIC_FACTOR = 2.5  # typical statements this much busier: another load than the long run


class Prior:
    """The long-run baseline, vetted against the first interval it sees."""

    def __init__(
        self,
        long_run: IntervalSummary,
        settings: DetectSettings,
        *,
        min_history_s: float,
        max_traffic_factor: float = MAX_TRAFFIC_FACTOR,
    ) -> None:
        self._baseline: Baseline | None = long_run_baseline(long_run, settings)
        self._seconds = long_run.seconds
        self._settings = settings
        self._min_history_s = min_history_s
        self._max_k = max_traffic_factor
        self._checked = False
        self.dropped: tuple[str, ...] = ()  # fingerprints that started just now
        self.reason = ""  # why the prior was given up, if it was

    @property
    def active(self) -> bool:
        return self._baseline is not None

    def baseline(self, observed: Mapping[str, Rates]) -> Baseline | None:
        """The prior to judge ``observed`` with (None once given up)."""
        if not self._checked and self._baseline is not None:
            self._checked = True
            self._baseline = self._vetted(self._baseline, observed)
        return self._baseline

    def judges(self, anomaly: Anomaly) -> bool:
        """True when the anomaly is about something the prior knows a normal for, and far past
        it: a long-run mean has no spread of its own (today's workload may differ from the
        average in ordinary ways), so a marginal signal waits for the watcher's own history."""
        if anomaly.rule in ABSOLUTE_RULES:
            return True
        known = self._baseline is not None and anomaly.subject in self._baseline.by_fingerprint
        return known and anomaly.severity >= self._settings.far_factor

    def _vetted(self, prior: Baseline, observed: Mapping[str, Rates]) -> Baseline | None:
        young = tuple(
            sorted(
                fp
                for fp, fb in prior.by_fingerprint.items()
                if fp in observed
                and fb.calls_per_s.median * self._seconds
                < observed[fp].calls_per_s * self._min_history_s
            )
        )
        if young:
            self.dropped = young
            kept = {fp: fb for fp, fb in prior.by_fingerprint.items() if fp not in young}
            prior = dataclasses.replace(prior, by_fingerprint=kept)
        k = traffic_factor(observed, prior, self._settings)
        if k >= self._max_k:
            self.reason = (
                f"the long-run average describes another load (typical statements run {k:.1f}x "
                "as often now)"
            )
            return None
        return prior
