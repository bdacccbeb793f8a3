"""querywatch.fingerprint: shapes, normalized texts without values, the per-queryid cache.

The pairs live in tests/fixtures/fingerprint_pairs.sql: a case starts with a line
``-- same: NAME`` (all its texts share one fingerprint) or ``-- differ: NAME`` (no two share one),
and its texts are separated by lines that are exactly ``-- vs``.
"""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import querywatch.fingerprint as fp_module
from querywatch.fingerprint import Fingerprinter, display, fingerprint, normalize, shape

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "fixtures" / "fingerprint_pairs.sql"
HEX16 = re.compile(r"[0-9a-f]{16}")
HEADER = re.compile(r"-- (same|differ): (.+)")


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    texts: tuple[str, ...]


def load_cases(path: Path) -> list[Case]:
    cases: list[Case] = []
    kind = name = ""
    texts: list[str] = []
    lines: list[str] = []
    for line in [*path.read_text().splitlines(), "-- same: end"]:
        header = HEADER.fullmatch(line)
        if (header or line == "-- vs") and kind:
            texts.append("\n".join(lines).strip("\n"))
            lines = []
        if header and kind:
            cases.append(Case(kind, name, tuple(texts)))
            texts = []
        if header:
            kind, name = header.groups()
        elif kind and line != "-- vs":
            lines.append(line)
    return cases


CASES = load_cases(PAIRS)
SAME = [pytest.param(c, id=c.name) for c in CASES if c.kind == "same"]
DIFFER = [pytest.param(c, id=c.name) for c in CASES if c.kind == "differ"]


def test_fixture_holds_the_acceptance_cases() -> None:
    assert len(SAME) >= 10 and len(DIFFER) >= 8
    assert all(len(c.texts) >= 2 and all(c.texts) for c in CASES)
    assert not any("Fingerprint pairs" in t or HEADER.search(t) for c in CASES for t in c.texts)
    in_lists = next(c for c in CASES if c.name.startswith("IN lists of 1, 2, 5 and 50 items"))
    assert [t.count("$") for t in in_lists.texts] == [1, 2, 5, 50]
    names = " ".join(c.name for c in CASES if c.kind == "differ")
    for topic in ("tables", "predicate", "operators", "selected columns", "LIMIT"):
        assert topic in names


@pytest.mark.parametrize("case", SAME)
def test_same_shape_shares_a_fingerprint(case: Case) -> None:
    shapes = [shape(text) for text in case.texts]
    assert len({s.fingerprint for s in shapes}) == 1, [(s.fingerprint, s.query) for s in shapes]
    assert [fingerprint(t) for t in case.texts] == [s.fingerprint for s in shapes]
    # every case goes through pglast except the one about text it cannot parse
    assert {s.parsed for s in shapes} == {"unparseable" not in case.name}


@pytest.mark.parametrize("case", DIFFER)
def test_different_shapes_do_not_share_a_fingerprint(case: Case) -> None:
    found = {fingerprint(text): text for text in case.texts}
    assert len(found) == len(case.texts), found


def test_fingerprints_are_16_lowercase_hex() -> None:
    for text in (t for c in CASES for t in c.texts):
        assert HEX16.fullmatch(fingerprint(text)), text


def test_regression_anchors() -> None:
    # computed once with pglast 8.8; a change means every stored fingerprint would change
    assert fingerprint("SELECT * FROM t WHERE id = $1") == "0a42922fab0bd73f"
    assert fingerprint("SELECT * FROM t WHERE id IN (1, 2, 3)") == "0a42922fab0bd73f"
    assert fingerprint("SELECT * FROM t WHERE name = 'cut here") == "cf200d579ac3dfc7"


def test_fingerprints_are_stable_across_processes() -> None:
    texts = ["SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE name = 'cut", "VACUUM t"]
    here = [fingerprint(t) for t in texts]
    code = (
        "import sys; from querywatch.fingerprint import fingerprint\n"
        "print(' '.join(fingerprint(t) for t in sys.argv[1:]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *texts],
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == here


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage text",
        "SELECT * FROM",
        "SELECT * FROM t WHERE name = 'unterminated",
        "SELECT $$never closed",
        "SELECT /* never closed",
        'SELECT "never closed',
        "SELECT `id` FROM `t` LIMIT 1, 2",  # MySQL
        "SELECT 1\x00",
        "SELECT '\ud800'",  # a lone surrogate
        "SELECT * FROM t WHERE id IN (" + ", ".join(["1"] * 5000),
    ],
)
def test_any_text_gets_a_fingerprint_without_raising(text: str) -> None:
    found = shape(text)
    assert HEX16.fullmatch(found.fingerprint)
    assert found.fingerprint == fingerprint(text) == shape(text).fingerprint
    assert found.query == normalize(text)


def test_unparseable_text_is_marked_and_normalized_before_hashing() -> None:
    a = shape("SELECT * FROM orders WHERE note = 'left at the door' AND id IN (1, 2")
    b = shape("select *\n  from ORDERS /* x */ where note='x' and id in (3,4,5,6")
    assert not a.parsed and not b.parsed
    assert a.fingerprint == b.fingerprint
    assert a.query == "SELECT * FROM orders WHERE note = ? AND id IN (?, ?"
    assert shape("SELECT * FROM invoices WHERE note = 'x").fingerprint != a.fingerprint
    assert shape("SELECT * FROM t WHERE id = $1").parsed


def test_multi_statement_text_is_fingerprinted_whole() -> None:
    both = fingerprint("SELECT a FROM t; SELECT b FROM u")
    assert both == fingerprint("select a from t;select b from u;")
    assert both not in {fingerprint("SELECT a FROM t"), fingerprint("SELECT b FROM u")}
    assert both != fingerprint("SELECT b FROM u; SELECT a FROM t")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pg_stat_statements texts stay as they are, apart from trimming
        ("SELECT * FROM t WHERE id IN ($1, $2, $3)", "SELECT * FROM t WHERE id IN ($1, $2, $3)"),
        ("  SELECT a\n  FROM t\n WHERE b = $1;\n", "SELECT a\n  FROM t\n WHERE b = $1;"),
        ('SELECT "col 1" FROM t1 WHERE x2 = $1', 'SELECT "col 1" FROM t1 WHERE x2 = $1'),
        # raw texts lose every value
        (
            "UPDATE accounts SET balance = balance - 10 WHERE id = 42",
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
        ),
        (
            "SELECT * FROM t WHERE id = $1 AND name = 'bob'",
            "SELECT * FROM t WHERE id = $1 AND name = $2",
        ),
        ("SET work_mem = '64MB'", "SET work_mem = $1"),
        # values pglast's own normalize leaves in place
        ("EXECUTE fetch_account(42, 'bob')", "EXECUTE fetch_account($1, $2)"),
        ("COMMENT ON TABLE t IS 'secret'", "COMMENT ON TABLE t IS $1"),
        ("FETCH 10 FROM c", "FETCH $1 FROM c"),
        # comments may carry values: dropped
        ("/* user_id=42 */ SELECT * FROM t -- bob\nWHERE a = $1", "SELECT * FROM t\nWHERE a = $1"),
        ("SELECT/*x*/1", "SELECT $1"),
        # text pglast cannot parse: values become ?
        (
            "SELECT * FROM t WHERE a = 'it''s' AND b IN (1, 2",
            "SELECT * FROM t WHERE a = ? AND b IN (?, ?",
        ),
        (
            "SELECT * FROM t WHERE a = E'x\\'y' AND b IN (1.5, 2e3",
            "SELECT * FROM t WHERE a = ? AND b IN (?, ?",
        ),
        ("SELECT $tag$ab$ AND x = 5 /* c", "SELECT ?"),
        (
            "SELECT * FROM t1 WHERE c2 = 0x1F AND d = $1 AND e = 'x",
            "SELECT * FROM t1 WHERE c2 = ? AND d = ? AND e = ?",
        ),
        ("SELECT 1 /* it's 42", "SELECT ?"),
        ("SELECT -- 42\n'x", "SELECT\n?"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


GREEK = "αβγδεζηθλμξπστφχψω"
STRING_VALUES = st.text(alphabet=GREEK + "'\\\" ;-*/$%(),\n", min_size=1, max_size=12)
COMMENT_VALUES = st.text(alphabet=GREEK + " '=:", min_size=1, max_size=12)
NUMBERS = st.one_of(
    st.integers(-(10**15), 10**15).map(str),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda p: f"{p[0]}.{p[1]}"),
    st.integers(0, 10**6).map(lambda n: f"{n}e3"),
)
TEMPLATES = (
    "SELECT * FROM accounts WHERE id = {n} AND owner = '{s}'",
    "UPDATE accounts SET balance = balance - {n}, note = E'{e}' WHERE id = {n}",
    "INSERT INTO events (kind, payload) VALUES ('{s}', {n}), ('{s}', {n})",
    "SELECT * FROM orders WHERE id IN ({n}, {n}, {n}) AND note = $q${d}$q$",
    "EXECUTE fetch_account({n}, '{s}')",
    "COMMENT ON TABLE accounts IS '{s}'",
    "SELECT * FROM users WHERE email = '{s}' /* user_id={n} name={c} */",
    "SELECT * FROM users WHERE id = {n} -- {c}\nAND name = U&'{s}'",
    "SET application_name = '{s}'",
    "CALL transfer({n}, {n}, '{s}')",
    "SELECT * FROM accounts WHERE id = {n} AND owner = '{s}'; DELETE FROM t WHERE id = {n}",
)


@st.composite
def raw_texts(draw: st.DrawFn) -> str:
    template = draw(st.sampled_from(TEMPLATES))
    value = draw(STRING_VALUES)
    return template.format(
        n=draw(NUMBERS),
        s=value.replace("'", "''"),
        e=value.replace("\\", "\\\\").replace("'", "\\'"),
        d=value.replace("$", ""),
        c=draw(COMMENT_VALUES),
    )


def assert_no_value(out: str) -> None:
    assert not set(out) & set(GREEK), out
    assert not re.search(r"\d", re.sub(r"\$\d+", "", out)), out


@settings(max_examples=300, deadline=None)
@given(raw_texts())
def test_normalize_keeps_no_value_of_a_raw_text(text: str) -> None:
    assert_no_value(normalize(text))
    assert_no_value(shape(text).query)


@settings(max_examples=300, deadline=None)
@given(raw_texts())
def test_regex_fallback_keeps_no_value(text: str) -> None:
    broken = shape("BROKEN " + text)  # pglast rejects it: the regex fallback does the work
    assert not broken.parsed
    assert_no_value(broken.query)


@settings(max_examples=300, deadline=None)
@given(raw_texts(), st.floats(0, 1))
def test_normalize_keeps_no_value_of_a_truncated_text(text: str, cut: float) -> None:
    assert_no_value(normalize(text[: int(len(text) * cut)]))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    found = shape(text)
    assert HEX16.fullmatch(found.fingerprint)
    assert found.fingerprint == fingerprint(text)
    assert found.query == normalize(text)


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("SELECT a\n  FROM t\tWHERE b = $1", 80, "SELECT a FROM t WHERE b = $1"),
        ("SELECT a FROM t WHERE b IN ($1, $2, $3)", 80, "SELECT a FROM t WHERE b IN ($1, $2, $3)"),
        (
            "SELECT a FROM t WHERE b IN ($1,$2,$3,$4)",
            80,
            "SELECT a FROM t WHERE b IN ($1, ..., $4)",
        ),
        ("SELECT a FROM t WHERE b IN (?, ?, ?, ?, ?", 80, "SELECT a FROM t WHERE b IN (?, ..., ?"),
        ("SELECT a, b, c FROM some_table", 16, "SELECT a, b, c…"),
        ("SELECT a, b, c FROM some_table", 14, "SELECT a, b,…"),
        ("SELECT 1", 8, "SELECT 1"),
        ("SELECT 1", 0, "…"),
    ],
)
def test_display(text: str, width: int, expected: str) -> None:
    assert display(text, width) == expected


@given(st.text(), st.integers(1, 200))
def test_display_is_one_line_within_width(text: str, width: int) -> None:
    out = display(text, width)
    assert len(out) <= width
    assert "\n" not in out and "  " not in out


def test_fingerprinter_parses_each_queryid_once() -> None:
    cache = Fingerprinter()
    text = "SELECT * FROM orders WHERE id IN ($1, $2)"
    assert 7 not in cache
    assert cache.for_queryid(7, text) == fingerprint(text)
    assert 7 in cache
    for _ in range(3):
        assert cache.for_queryid(7, str(text)) == fingerprint(text)
    info = cache.cache_info()
    assert (info.hits, info.misses, info.size, info.maxsize) == (3, 1, 1, 100_000)
    assert cache.shape_for_queryid(7, text) == shape(text)


def test_fingerprinter_groups_queryids_of_different_in_list_lengths() -> None:
    cache = Fingerprinter()
    lists = {
        qid: ", ".join(f"${i}" for i in range(1, n + 1)) for qid, n in [(11, 1), (12, 2), (13, 8)]
    }
    found = {
        cache.for_queryid(qid, f"SELECT * FROM t WHERE id IN ({items})")
        for qid, items in lists.items()
    }
    assert len(found) == 1 and len(cache) == 3


def test_fingerprinter_keeps_the_first_text_of_a_queryid() -> None:
    cache = Fingerprinter()
    first = cache.for_queryid(5, "SELECT * FROM users WHERE id = $1")
    # the watcher passes "" for a queryid it knows and did not fetch the text of again
    assert cache.for_queryid(5, "") == first == fingerprint("SELECT * FROM users WHERE id = 7")
    assert cache.for_queryid(5, "SELECT * FROM orders") == first
    assert cache.cache_info().misses == 1 and len(cache) == 1


def test_fingerprinter_evicts_the_least_recently_used() -> None:
    cache = Fingerprinter(maxsize=2)
    cache.for_queryid(1, "SELECT 1")
    cache.for_queryid(2, "SELECT 2")
    cache.for_queryid(1, "SELECT 1")  # 1 is now the most recently used
    cache.for_queryid(3, "SELECT 3")
    assert (1 in cache, 2 in cache, 3 in cache) == (True, False, True)
    assert cache.cache_info().size == 2


def test_fingerprinter_caches_the_fallback_too() -> None:
    cache = Fingerprinter()
    found = cache.shape_for_queryid(9, "SELECT * FROM t WHERE a = 'cut")
    assert not found.parsed and found.query == "SELECT * FROM t WHERE a = ?"
    assert cache.shape_for_queryid(9, "SELECT * FROM t WHERE a = 'cut") is found


def test_module_docstring_examples() -> None:
    result = doctest.testmod(fp_module)
    assert result.attempted >= 3 and result.failed == 0


def test_module_is_pure() -> None:
    code = (
        "import sys, querywatch.fingerprint\n"
        "bad = {'psycopg', 'sqlite3', 'httpx', 'fastapi'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "SELECT o.id FROM orders o WHERE o.id = $1",
            "SELECT o.id FROM order_items o WHERE o.id = $1",
        ),
        ("SELECT * FROM a x JOIN b y ON x.id = y.id", "SELECT * FROM a x JOIN c y ON x.id = y.id"),
        ("SELECT * FROM a, b y", "SELECT * FROM a, c y"),
        ("UPDATE accounts AS t SET n = $1", "UPDATE ledger AS t SET n = $1"),
        ("SELECT 1 FROM s1.t AS x", "SELECT 1 FROM s2.t AS x"),
    ],
)
def test_tables_with_the_same_alias_stay_apart(a: str, b: str) -> None:
    """libpg_query fingerprints an aliased table by its alias only; querywatch keeps the table."""
    assert fingerprint(a) != fingerprint(b)


def test_an_aliased_statement_keeps_one_fingerprint_across_values_and_lists() -> None:
    raw = "select o.id from orders o where o.id in (1, 2, 3) and o.note = 'x'"
    normalized = "SELECT o.id FROM orders o WHERE o.id IN ($1) AND o.note = $2"
    assert fingerprint(raw) == fingerprint(normalized)
