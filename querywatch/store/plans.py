"""Plans per fingerprint (querywatch.advise): one row per distinct plan shape and server."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import StoreBase


@dataclass(frozen=True)
class StoredPlan:
    """One plan shape of a fingerprint on a server, and when it was first and last seen."""

    server_id: int
    fingerprint: str
    plan_hash: str
    first_seen: float
    last_seen: float
    plan: dict[str, Any]
    total_cost: float


class PlansMixin(StoreBase):
    """The Store's plans (engine-neutral SQL; see ``querywatch.store.base``)."""

    def record_plan(
        self,
        server_id: int,
        fingerprint: str,
        plan_hash: str,
        plan: Mapping[str, Any],
        total_cost: float,
        at: float | None = None,
    ) -> None:
        """Remember a plan: a new shape gets a row, a known one its last_seen (and latest JSON)."""
        at = self.clock() if at is None else at
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO plans (server_id, fingerprint, plan_hash, first_seen, last_seen, plan,"
                " total_cost) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server_id, fingerprint,"
                " plan_hash) DO UPDATE SET last_seen = excluded.last_seen, plan = excluded.plan,"
                " total_cost = excluded.total_cost",
                (server_id, fingerprint, plan_hash, at, at, json.dumps(plan), total_cost),
            )

    def plans(self, fingerprint: str, server_id: int | None = None) -> list[StoredPlan]:
        """The plans seen for a fingerprint, oldest first: a new hash means the plan changed."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT server_id, fingerprint, plan_hash, first_seen, last_seen, plan, total_cost"
                " FROM plans WHERE fingerprint = ? AND (? IS NULL OR server_id = ?)"
                " ORDER BY first_seen",
                (fingerprint, server_id, server_id),
            ).fetchall()
        return [StoredPlan(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]
