"""Deploy markers: a version and when it went out."""

from __future__ import annotations

from ..model import (
    Deploy,
)
from .base import StoreBase


class DeploysMixin(StoreBase):
    """The Store's deploys (engine-neutral SQL; see ``querywatch.store.base``)."""

    def add_deploy(self, version: str, at: float, note: str = "") -> Deploy:
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO deploys (version, at, note) VALUES (?, ?, ?)", (version, at, note)
            )
        return Deploy(version, at, note)

    def deploys(self, start: float = 0.0, end: float = float("inf")) -> list[Deploy]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT version, at, note FROM deploys WHERE at >= ? AND at <= ? ORDER BY at",
                (start, min(end, 1e18)),
            ).fetchall()
        return [Deploy(*r) for r in rows]
