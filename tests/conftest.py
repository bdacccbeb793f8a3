"""Shared fixtures: real throwaway PostgreSQL servers started by querywatch.localpg.

Outside CI a missing component (PostgreSQL, hypopg) skips the tests that need it, with the reason.
Under CI (``CI=true``) every component must be present: a missing one fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from demokit import DemoRun, run_demo

from querywatch.errors import LocalPostgresError
from querywatch.localpg import LocalPostgres, find_bindir
from querywatch.store import Store

MakePg = Callable[..., LocalPostgres]
QW_TEST_STORE = os.environ.get("QW_TEST_STORE", "sqlite").strip().lower()


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(reason: str) -> NoReturn:
    """Skip for want of a component; under CI=true fail instead: every component must be there."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: a missing component is a failure)", pytrace=False)
    pytest.skip(reason)


def _prepare(server: LocalPostgres) -> LocalPostgres:
    """Create the extensions the tests expect in the postgres database."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        if "pg_stat_statements" in server.preload:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if server.has_extension("hypopg"):
            conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
    return server


@pytest.fixture(scope="session")
def pg_bindir() -> Path:
    """The PostgreSQL binaries the launcher will use; skips (fails under CI) when there are none."""
    try:
        return find_bindir()
    except LocalPostgresError as err:
        missing(str(err))


@pytest.fixture(scope="session")
def make_pg(pg_bindir: Path) -> Iterator[MakePg]:
    """A factory: ``make_pg(settings, **LocalPostgres kwargs)`` starts one more cluster.

    Every cluster it started is stopped and removed at the end of the session.
    """
    started: list[LocalPostgres] = []

    def make(settings: Mapping[str, str] | None = None, **kwargs: Any) -> LocalPostgres:
        server = LocalPostgres(settings, **kwargs)
        started.append(server)
        return _prepare(server.start())

    yield make
    for server in reversed(started):
        server.cleanup()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One `querywatch demo --fast` run on the system PostgreSQL, shared by test_demo and
    test_runbook (tests/demokit.py); whether it succeeded is for each test to check."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return DemoRun(run_demo(out, {}), out)


@pytest.fixture(scope="session")
def pg(make_pg: MakePg) -> LocalPostgres:
    """The session's server: pg_stat_statements preloaded and created; hypopg if installed."""
    return make_pg()


@pytest.fixture(scope="session")
def pg_dsn(pg: LocalPostgres) -> str:
    return pg.dsn


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the session's server, closed after the test."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def require_hypopg(pg: LocalPostgres) -> LocalPostgres:
    """The session's server, which has hypopg; skips (fails under CI) when hypopg is missing."""
    if not pg.has_extension("hypopg"):
        version = pg.major_version
        missing(
            f"hypopg is not installed for postgresql {version} in {pg.bindir} "
            f"(apt-get install postgresql-{version}-hypopg)"
        )
    return pg


# -- the store on both engines (querywatch.store: SQLite files, PostgreSQL schemas) --------------
# Store tests take ``any_store`` / ``store_location``: each runs once per engine. Setting
# QW_TEST_STORE=postgresql makes every Store opened on a file path (in-process and in the CLI
# subprocesses) a schema of the session server's qwstore database instead (the whole suite on PG).
@pytest.fixture(scope="session")
def pg_store_base(pg_dsn: str) -> str:
    import storekit

    return storekit.store_database(pg_dsn)


@pytest.fixture(scope="session", autouse=QW_TEST_STORE == "postgresql")
def pg_store_everywhere(request: pytest.FixtureRequest) -> Iterator[None]:
    base = request.getfixturevalue("pg_store_base")
    os.environ["QW_TEST_PG_STORE"] = base
    yield
    os.environ.pop("QW_TEST_PG_STORE", None)


@pytest.fixture
def sqlite_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test about the SQLite file itself (damaged, foreign, unwritable, disk full, WAL):
    its file paths stay SQLite files under QW_TEST_STORE=postgresql (use it with a comment why)."""
    import storekit

    storekit.sqlite_only(monkeypatch)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_location(
    store_engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[str], str]:
    """``store_location(name)``: a new store location on the engine under test."""
    import storekit

    if store_engine == "sqlite":
        return lambda name: storekit.sqlite_location(tmp_path, name)
    base = request.getfixturevalue("pg_store_base")
    return lambda name: storekit.pg_location(base, name)


@pytest.fixture
def any_store(store_location: Callable[[str], str]) -> Iterator[Store]:
    """An open, empty store on the engine under test."""
    with Store(store_location("s")) as store:
        yield store


# -- parallel runs (make test: pytest -n 3 --dist loadgroup on a 2-core machine) -----------------
# Tests that peg the CPUs (CPU-bound sessions, pgbench, the demo's traffic, load tests) run one at
# a time, so that they disturb the latency-sensitive end-to-end tests as little as possible.
CPU_HOGS = frozenset(
    {
        "test_saturation_pg",
        "test_kcache_pg",
        "test_pgbench_pg",
        "test_demo",
        "test_loadtest",
        "test_fleet_acceptance_pg",  # five clusters with their workloads, cadence judged
    }
)
# Modules whose module-scoped fixtures are costly (a cluster of their own, a primary and its
# pg_basebackup replica, server logs written by a real workload, a built docs site, a loaded
# schema, a chromium): each runs on one worker, so the fixture is made once, not once per worker.
SHARED_SETUP = frozenset(
    {
        "test_capacity_pg",
        "test_replication_pg",
        "test_logs_pg",
        "test_fleet_pg",
        "test_restart_pg",
        "test_advise_families_a",
        "test_advise_families_b",
        "test_advise_embedded",
        "test_docs_examples",
        "test_docs_site",
        "test_docs_web",
        "test_web_browser",
        "test_anywindow",
        "test_gate",  # the sample app's recorded gate baseline
    }
)
# End-to-end tests judged on real timings (alerts within N intervals, latency means) run a
# watcher against a real server: under the other workers' load they get one rerun. A test has to
# fail twice to fail, and pytest's summary counts every rerun.
TIMED = frozenset(
    {
        "test_watch_pg",
        "test_anywindow_pg",
        "test_restore_pg",
        "test_restart_pg",
        "test_longrun_pg",
        "test_pgbench_pg",
        "test_saturation_pg",
        "test_outbox",
        "test_audit",
        "test_diskfull",
        "test_cli",
        "test_kcache_pg",
        "test_collection_pg",
        "test_fleet_acceptance_pg",
        "test_fleet_pg",
        "test_replication_pg",
        "test_logs_cli",  # --follow waits for a subprocess
        "test_capacity_pg",  # diagnose --now samples a paced load for 4 s
        "test_logs_pg",  # watch --log
        "test_demo",  # its surge act is judged on latencies that CPU contention can move
        "test_docs_examples",  # the speed-ups the pages claim are measured on the real server
        "test_loadtest",  # achieved rates and latencies of a paced load
    }
)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        if module in CPU_HOGS:
            item.add_marker(pytest.mark.xdist_group("cpu_hogs"))
        elif module in SHARED_SETUP:
            item.add_marker(pytest.mark.xdist_group(module))
        if module in TIMED:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
