"""The database time a load test consumed: pg_stat_statements deltas around the run.

A snapshot before and one after (through the monitoring source, with its timeouts); the entries
that ran in between are fingerprinted, and those of the tested statement are summed (psycopg may
send one statement under several queryids). Never resets pg_stat_statements.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..collector import delta
from ..errors import QuerywatchError
from ..fingerprint import fingerprint
from ..model import Snapshot
from ..source.postgres import PostgresSource

log = logging.getLogger("querywatch.loadtest")


@dataclass(frozen=True)
class DbTime:
    calls: float
    exec_ms: float
    server_exec_ms: float  # all statements on the server during the run

    @property
    def mean_ms(self) -> float:
        return self.exec_ms / self.calls if self.calls else 0.0


class DbTimeProbe:
    """``start()`` before the run, ``finish()`` after; None (with a note) when unavailable."""

    def __init__(self, dsn: str) -> None:
        self.source = PostgresSource(dsn)
        self.note = ""
        self._before: Snapshot | None = None

    def start(self) -> None:
        try:
            self._before = self.source.snapshot()
        except QuerywatchError as exc:
            self.note = f"database time not measured: {exc}"
            log.warning("%s", self.note)
            self.source.close()

    def finish(self, fp: str) -> DbTime | None:
        if self._before is None:
            return None
        try:
            after = self.source.snapshot()
            interval = delta(self._before, after)
            ran = [d for d in interval.statements if d.counters.calls > 0]
            texts = self.source.texts(d.key.queryid for d in ran)
        except QuerywatchError as exc:
            self.note = f"database time not measured: {exc}"
            return None
        finally:
            self.source.close()
        if not interval.complete:
            self.note = "pg_stat_statements was reset or the server restarted during the run"
            return None
        mine = [d for d in ran if fingerprint(texts.get(d.key.queryid, "")) == fp]
        return DbTime(
            calls=sum(d.counters.calls for d in mine),
            exec_ms=sum(d.counters.exec_ms for d in mine),
            server_exec_ms=sum(d.counters.exec_ms for d in ran),
        )
