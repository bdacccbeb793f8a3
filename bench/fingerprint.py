"""querywatch.fingerprint.fingerprint() against pglast.parser.fingerprint (the reference).

Run: ``cd /work/main && /tmp/qwvenv/bin/python bench/fingerprint.py [--texts 4000] [--rounds 5]``.
Both run over the same few thousand pg_stat_statements-like texts in the same process, best of
``--rounds``; it prints statements/s for each and the ratio. Also shown, for scale: shape() (which
parses twice: fingerprint + normalized text) and Fingerprinter cache hits (the steady state of a
collector that sees the same queryids every interval).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pglast import parser as pg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from querywatch.fingerprint import Fingerprinter, fingerprint, shape

T = TypeVar("T")

TABLES = (
    "users",
    "orders",
    "order_items",
    "invoices",
    "accounts",
    "events",
    "sessions",
    "products",
)
COLUMNS = ("id", "user_id", "status", "created_at", "total", "email", "kind", "account_id")
TEMPLATES = (
    "SELECT {cols} FROM {t} WHERE {c} = $1",
    "SELECT {cols} FROM {t} WHERE {c} IN ({params}) ORDER BY {c2} DESC LIMIT $1",
    "SELECT {cols} FROM {t} AS a JOIN {t2} AS b ON b.{c} = a.id WHERE a.{c2} > $1 AND b.{c} = $2",
    "UPDATE {t} SET {c} = {c} + $1, {c2} = now() WHERE id = $2",
    "INSERT INTO {t} ({c}, {c2}) VALUES {rows}",
    "DELETE FROM {t} WHERE {c} < $1 - interval '1 day' * $2",
    "SELECT count(*), {c} FROM {t} WHERE {c2} BETWEEN $1 AND $2 GROUP BY {c} HAVING count(*) > $3",
    "WITH recent AS (SELECT {cols} FROM {t} WHERE {c} > $1) SELECT * FROM recent WHERE {c2} = $2",
    "SELECT {cols} FROM {t} WHERE EXISTS (SELECT 1 FROM {t2} WHERE {t2}.{c} = {t}.id) LIMIT $1",
    "VACUUM ANALYZE {t}",
    "SET application_name = $1",
    "BEGIN",
    "COMMIT",
)


def texts(count: int, seed: int = 20261126) -> list[str]:
    """``count`` distinct pg_stat_statements-like texts, the same on every run."""
    rnd = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        template = rnd.choice(TEMPLATES)
        cols = ", ".join(rnd.sample(COLUMNS, rnd.randint(1, 5)))
        params = ", ".join(f"${i}" for i in range(2, rnd.choice((1, 2, 3, 5, 8, 20, 100)) + 2))
        rows = ", ".join(f"(${2 * i + 1}, ${2 * i + 2})" for i in range(rnd.randint(1, 10)))
        t, t2 = rnd.sample(TABLES, 2)
        c, c2 = rnd.sample(COLUMNS, 2)
        text = template.format(cols=cols, params=params, rows=rows, t=t, t2=t2, c=c, c2=c2)
        found[text] = None
    return list(found)


def rates(
    functions: Sequence[Callable[[T], object]], items: Sequence[T], rounds: int
) -> list[float]:
    """Best items/s of each function; interleaved rounds so machine load hits them alike."""
    best = [float("inf")] * len(functions)
    for _ in range(rounds):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            for item in items:
                function(item)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(items) / seconds for seconds in best]


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--texts", type=int, default=4000)
    options.add_argument("--rounds", type=int, default=5)
    args = options.parse_args()
    items = texts(args.texts)
    mean_length = sum(map(len, items)) / len(items)
    shapes = len({fingerprint(t) for t in items})
    print(f"{len(items)} texts, {mean_length:.0f} characters on average, {shapes} fingerprints")

    reference, ours, both = rates((pg.fingerprint, fingerprint, shape), items, args.rounds)
    print(f"pglast.parser.fingerprint   {reference:>10,.0f} statements/s  (reference)")
    print(f"querywatch fingerprint()    {ours:>10,.0f} statements/s  ratio {ours / reference:.2f}")

    print(f"querywatch shape()          {both:>10,.0f} statements/s  ratio {both / reference:.2f}")
    cache = Fingerprinter()
    for queryid, text in enumerate(items):
        cache.for_queryid(queryid, text)
    # a fresh but equal string each time, as a new fetch of pg_stat_statements gives
    fetched = [(queryid, text.encode().decode()) for queryid, text in enumerate(items)]
    [hits] = rates([lambda row: cache.for_queryid(*row)], fetched, args.rounds)
    print(f"Fingerprinter cache hits    {hits:>10,.0f} lookups/s     ratio {hits / reference:.1f}")


if __name__ == "__main__":
    main()
