"""Incidents and their timelines; the alert outbox rows of a change are written with it."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import (
    Incident,
    IncidentEvent,
    IncidentState,
)
from . import outbox
from .base import StoreBase
from .outbox import OutboxEntry

DELETE_EVENTS = "DELETE FROM incident_events WHERE server_id = ? AND incident_id = ?"
INSERT_EVENT = (
    "INSERT INTO incident_events (server_id, incident_id, seq, at, state, detail) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class StoredIncident:
    incident: Incident
    server_id: int
    diagnosis: dict[str, Any] | None


def _stored_incident(row: Sequence[Any], events: list[IncidentEvent]) -> StoredIncident:
    incident = Incident(
        id=row[0],
        key=row[2],
        state=IncidentState(row[3]),
        opened_at=row[4],
        fired_at=row[5],
        resolved_at=row[6],
        rules=tuple(r for r in row[7].split(",") if r),
        timeline=tuple(events),
    )
    return StoredIncident(incident, row[1], json.loads(row[8]) if row[8] else None)


class IncidentsMixin(StoreBase):
    """The Store's incidents (engine-neutral SQL; see ``querywatch.store.base``)."""

    def save_incident(
        self,
        server_id: int,
        incident: Incident,
        diagnosis: Mapping[str, object] | None = None,
        notify: Sequence[OutboxEntry] = (),
    ) -> None:
        """Keep ``incident``; ``notify`` are its alert outbox rows, written in the same
        transaction so a crash cannot keep the incident and lose its notification."""
        with self._errors(), self._transaction() as conn:
            outbox.add(conn, notify)
            conn.execute(
                "INSERT INTO incidents (id, server_id, key, state, opened_at, fired_at, resolved_at,"
                " rules, diagnosis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_id, id) DO UPDATE SET"
                " state = excluded.state, fired_at = excluded.fired_at,"
                " resolved_at = excluded.resolved_at, rules = excluded.rules,"
                " diagnosis = coalesce(excluded.diagnosis, incidents.diagnosis)",
                (
                    incident.id,
                    server_id,
                    incident.key,
                    incident.state.value,
                    incident.opened_at,
                    incident.fired_at,
                    incident.resolved_at,
                    ",".join(incident.rules),
                    json.dumps(diagnosis) if diagnosis is not None else None,
                ),
            )
            conn.execute(DELETE_EVENTS, (server_id, incident.id))
            conn.executemany(
                INSERT_EVENT,
                [
                    (server_id, incident.id, seq, e.at, e.state.value, e.detail)
                    for seq, e in enumerate(incident.timeline)
                ],
            )

    def incidents(self, server_id: int | None = None, limit: int = 100) -> list[StoredIncident]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT id, server_id, key, state, opened_at, fired_at, resolved_at, rules, diagnosis"
                " FROM incidents WHERE (? IS NULL OR server_id = ?) ORDER BY opened_at DESC LIMIT ?",
                (server_id, server_id, limit),
            ).fetchall()
            events = self._conn.execute(
                "SELECT incident_id, at, state, detail FROM incident_events ORDER BY at, seq"
            ).fetchall()
        timeline: dict[str, list[IncidentEvent]] = defaultdict(list)
        for e in events:
            timeline[e[0]].append(IncidentEvent(e[1], IncidentState(e[2]), e[3]))
        return [_stored_incident(r, timeline.get(r[0], [])) for r in rows]
