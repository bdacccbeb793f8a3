"""Fingerprints of every entry of a snapshot, with their texts read from the server in batches.

The collector only identifies statements that ran in an interval; the long-run baseline and the
one-shot diagnosis need every entry of the first snapshot, so their texts are read once here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..fingerprint import Fingerprinter, normalize
from ..model import StatementKey
from .postgres import PostgresSource
from .queries import MARKER

BATCH = 2000  # queryids per text query


@dataclass
class Identified:
    """Fingerprint per entry, normalized text and queryids per fingerprint, and querywatch's own."""

    fingerprints: dict[StatementKey, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    queryids: dict[str, set[int]] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)


def identify(
    source: PostgresSource,
    keys: Iterable[StatementKey],
    into: Identified | None = None,
    fingerprinter: Fingerprinter | None = None,
) -> Identified:
    """Fingerprint ``keys`` not identified yet (entries without a readable text are skipped)."""
    found = into if into is not None else Identified()
    printer = fingerprinter or Fingerprinter()
    new = [k for k in keys if k not in found.fingerprints]
    wanted = sorted({k.queryid for k in new})
    texts: dict[int, str] = {}
    for i in range(0, len(wanted), BATCH):
        texts.update(source.texts(wanted[i : i + BATCH]))
    for key in new:
        text = texts.get(key.queryid)
        if not text:
            continue
        fp = printer.for_queryid(key.queryid, text)
        found.fingerprints[key] = fp
        found.queryids.setdefault(fp, set()).add(key.queryid)
        if fp not in found.texts:
            found.texts[fp] = normalize(text)
        if text.lstrip().startswith(MARKER.strip()):
            found.own.add(fp)
    return found
