"""schemathesis against the OpenAPI spec of a real uvicorn server: no generated request, valid or
not, gets a server error (5xx), POSTs included (with the token).

The operations are driven with Hypothesis directly (schemathesis' pytest fixture integration does
not load under this pytest), one `given` per operation, positive and negative data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import webstore
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from querywatch.web import WebServer, start_in_thread

TOKEN = "schema-token"
EXAMPLES = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    path: Path = tmp_path_factory.mktemp("schema") / "s.db"
    webstore.synthetic(path, time.time(), hours=0.5, statements=5).close()
    handle = start_in_thread(path, "127.0.0.1", 0, TOKEN)
    yield handle
    handle.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error(server: WebServer, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /api/deploys", "GET /api/diagnosis", "GET /metrics"} <= labels, labels
    calls: list[int] = []
    skipped: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error],
                timeout=30,
            )
            calls.append(response.status_code)

        try:
            run()
        except Unsatisfiable:  # an operation without parameters has no invalid input
            assert mode is GenerationMode.NEGATIVE, operation.label
            skipped.append(operation.label)
    assert len(calls) >= len(operations) - len(skipped) > 5
    assert all(code < 500 for code in calls)
