"""The status board: each component's last reported state (collector, detector, outbox...)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .base import StoreBase


class StatusMixin(StoreBase):
    """The Store's status (engine-neutral SQL; see ``querywatch.store.base``)."""

    def set_status(self, key: str, value: Mapping[str, object]) -> None:
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO status (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, json.dumps(value), self.clock()),
            )

    def status(self) -> dict[str, dict[str, Any]]:
        with self._errors():
            rows = self._conn.execute("SELECT key, value, updated_at FROM status").fetchall()
        return {k: {**json.loads(v), "updated_at": at} for k, v, at in rows}
