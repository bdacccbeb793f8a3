"""Servers, statements and their texts: which servers are watched and what each queryid means.

A statement is keyed by (server_id, dbid, userid, queryid, toplevel); texts are shared by
fingerprint across servers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import StoreError
from ..model import (
    Interval,
    Statement,
    StatementKey,
)
from .base import StoreBase
from .db import Connection


@dataclass(frozen=True)
class Server:
    id: int
    name: str
    target: str
    version: str


INSERT_STATEMENT = """
INSERT INTO statements (server_id, dbid, userid, queryid, toplevel, fingerprint, own, first_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server_id, dbid, userid, queryid, toplevel) DO UPDATE SET fingerprint = excluded.fingerprint
RETURNING id
"""


INSERT_TEXT = """
INSERT INTO texts (fingerprint, query, first_seen) VALUES (?, ?, ?)
ON CONFLICT (fingerprint) DO NOTHING
"""


SELECT_STATEMENT_IDS = """
SELECT id, dbid, userid, queryid, toplevel, fingerprint FROM statements WHERE server_id = ?
"""


SELECT_TEXTS = "SELECT fingerprint, query FROM texts"


SELECT_QUERYIDS = (  # log statements have no queryid (querywatch.store.logevents)
    "SELECT fingerprint, queryid FROM statements WHERE server_id = ? AND source <> 'logs'"
)


class StatementsMixin(StoreBase):
    """The Store's statements (engine-neutral SQL; see ``querywatch.store.base``)."""

    def server(self, name: str, target: str = "", version: str = "") -> Server:
        """The server of that name, created on first use."""
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "INSERT INTO servers (name, target, version, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET target = excluded.target, "
                "version = CASE WHEN excluded.version = '' THEN servers.version "
                "ELSE excluded.version END",
                (name, target, version, self.clock()),
            )
            row = conn.execute(
                "SELECT id, name, target, version FROM servers WHERE name = ?", (name,)
            ).fetchone()
        return Server(*row)

    def servers(self) -> list[Server]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT s.id, s.name, s.target, s.version FROM servers s "
                "LEFT JOIN intervals i ON i.server_id = s.id "
                "GROUP BY s.id ORDER BY max(i.end) DESC NULLS LAST, s.id"
            ).fetchall()
        return [Server(*r) for r in rows]

    def set_fingerprint(
        self, server_id: int, key: StatementKey, fingerprint: str, text: str
    ) -> None:
        """Give a statement stored under a placeholder its real fingerprint and text."""
        with self._errors(), self._transaction() as conn:
            conn.execute(
                "UPDATE statements SET fingerprint = ? WHERE server_id = ? AND dbid = ? "
                "AND userid = ? AND queryid = ? AND toplevel = ?",
                (fingerprint, server_id, key.dbid, key.userid, key.queryid, int(key.toplevel)),
            )
            conn.execute(INSERT_TEXT, (fingerprint, text, self.clock()))
        self._known_texts.add(fingerprint)

    def known_keys(self, server_id: int) -> Mapping[StatementKey, int]:
        ids = self._statement_ids.get(server_id)
        if ids is None:
            with self._errors():
                rows = self._conn.execute(SELECT_STATEMENT_IDS, (server_id,)).fetchall()
            ids = {StatementKey(r[1], r[2], r[3], bool(r[4])): r[0] for r in rows}
            self._statement_ids[server_id] = ids
        return ids

    def has_text(self, fingerprint: str) -> bool:
        if not self._known_texts:
            with self._errors():
                rows = self._conn.execute("SELECT fingerprint FROM texts").fetchall()
            self._known_texts = {r[0] for r in rows}
        return fingerprint in self._known_texts

    def _insert_statements(
        self,
        conn: Connection,
        server_id: int,
        interval: Interval,
        fingerprints: Mapping[StatementKey, str],
        ids: dict[StatementKey, int],
        own: frozenset[str],
    ) -> None:
        for d in interval.statements:
            if d.key in ids:
                continue
            key = d.key
            fp = fingerprints.get(key)
            if fp is None:
                raise StoreError(f"store: no fingerprint given for queryid {key.queryid}")
            row = conn.execute(
                INSERT_STATEMENT,
                (
                    server_id,
                    key.dbid,
                    key.userid,
                    key.queryid,
                    int(key.toplevel),
                    fp,
                    int(fp in own),
                    interval.end,
                ),
            ).fetchone()
            ids[key] = row[0]

    def _insert_texts(self, conn: Connection, texts: Mapping[str, str]) -> None:
        now = self.clock()
        conn.executemany(INSERT_TEXT, [(fp, q, now) for fp, q in texts.items()])

    def statements(
        self, fingerprints: Sequence[str] | None = None, server_id: int | None = None
    ) -> dict[str, Statement]:
        """Normalized text and queryids of the given fingerprints (all when None); queryids of
        one server when ``server_id`` is given (queryids differ between servers)."""
        with self._errors():
            texts = dict(self._conn.execute(SELECT_TEXTS).fetchall())
            rows = self._conn.execute(
                "SELECT fingerprint, queryid FROM statements WHERE (? IS NULL OR server_id = ?)"
                " AND source <> 'logs'",
                (server_id, server_id),
            ).fetchall()
        queryids: dict[str, set[int]] = defaultdict(set)
        for fp, qid in rows:
            queryids[fp].add(qid)
        wanted = set(fingerprints) if fingerprints is not None else set(texts) | set(queryids)
        return {
            fp: Statement(fp, texts.get(fp, ""), tuple(sorted(queryids.get(fp, ()))))
            for fp in wanted
            if fp in texts or fp in queryids
        }

    def _queryids(self, server_id: int) -> dict[str, set[int]]:
        out: dict[str, set[int]] = defaultdict(set)
        for fp, queryid in self._conn.execute(SELECT_QUERYIDS, (server_id,)):
            out[fp].add(queryid)
        return out

    def _server_name(self, server_id: int) -> str:
        with self._errors():
            row = self._conn.execute(
                "SELECT name FROM servers WHERE id = ?", (server_id,)
            ).fetchone()
        return str(row[0]) if row else ""
