"""The shared generic plan: which statements can be explained (pure part; the server parts run in
test_gate.py and test_advise_pg.py)."""

from __future__ import annotations

import pytest

from querywatch.errors import InputError
from querywatch.plans import explainable, statement_kind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT id FROM t WHERE id = $1", True),
        ("  select 1", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("VALUES (1), (2)", True),
        ("TABLE t", True),
        ("INSERT INTO t VALUES ($1)", True),
        ("UPDATE t SET x = $1 WHERE id = $2", True),
        ("DELETE FROM t WHERE id = $1", True),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", True),
        ("CREATE TABLE t (x int)", False),
        ("SET work_mem = '1GB'", False),
        ("BEGIN", False),
        ("SELECT 1; DELETE FROM t", False),
        ("SELEC 1", False),
    ],
)
def test_explainable(text: str, expected: bool) -> None:
    assert explainable(text) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELEC 1", "explain: the statement does not parse"),
        ("SELECT 1; SELECT 2", "explain: expected one statement, got 2"),
        ("VACUUM t", "explain: VacuumStmt is not a SELECT, INSERT, UPDATE, DELETE or MERGE"),
    ],
)
def test_statement_kind_says_why(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        statement_kind(text)
