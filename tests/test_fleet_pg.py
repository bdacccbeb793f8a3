"""One watcher, several real servers: each collected in its own thread, an unreachable one listed
as down (never delaying the others), ``status`` summarising the fleet trouble first and ``check``
checking every server; owner leases keep two watchers off one server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MakePg
from typer.testing import CliRunner
from workload import closed_port, wait_until

from querywatch.cli import app
from querywatch.errors import ServerLeased
from querywatch.service import WatchOptions, run_watch
from querywatch.settings import ServerEntry, Settings
from querywatch.store import Store
from querywatch.watcher import CollectorStatus

SMALL = {"shared_buffers": "16MB", "max_connections": "20"}


@pytest.fixture(scope="module")
def two(make_pg: MakePg) -> tuple[str, str]:
    return make_pg(SMALL).dsn, make_pg(SMALL).dsn


def dead_dsn() -> str:
    return f"host=127.0.0.1 port={closed_port()} user=postgres connect_timeout=2"


class Watch:
    """run_watch in a thread until ``stop()``; its result or error kept."""

    def __init__(self, cfg: Settings) -> None:
        self.stop_event = threading.Event()
        self.result: list[CollectorStatus] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(cfg,))
        self.thread.start()

    def _run(self, cfg: Settings) -> None:
        try:
            self.result.append(run_watch(cfg, WatchOptions(), self.stop_event))
        except BaseException as exc:  # kept for the test to see
            self.errors.append(exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "run_watch did not return after the stop"


def counts(store: Path) -> dict[str, int]:
    with Store(store, create=False) as st:
        return {s.name: st.interval_count(s.id) for s in st.servers()}


def leased(store: Path) -> bool:
    with Store(store, create=False) as st:
        return bool(st.leases())


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def fleet_store(two: tuple[str, str], tmp_path: Path) -> Iterator[Path]:
    """A store filled by one watcher of three servers (a, b live; gone unreachable)."""
    path = tmp_path / "qw.db"
    Store(path).close()
    servers = (
        ServerEntry("a", two[0], {"env": "prod", "team": "shop"}),
        ServerEntry("b", two[1], {"env": "staging"}),
        ServerEntry("gone", dead_dsn(), {"env": "prod"}),
    )
    cfg = Settings(store=str(path), interval=0.5, activity_interval=0.25, servers=servers)
    watch = Watch(cfg)
    try:
        assert wait_until(lambda: min(counts(path).get(n, 0) for n in "ab") >= 4, 60)
    finally:
        watch.stop()
    assert watch.errors == [] and watch.result
    assert watch.result[0].intervals >= 8  # summed over the fleet
    yield path


def test_each_server_collected_the_unreachable_one_listed_as_down(fleet_store: Path) -> None:
    found = counts(fleet_store)
    assert found["a"] >= 4 and found["b"] >= 4 and found["gone"] == 0
    with Store(fleet_store, create=False) as st:
        state = st.status()
        targets = {s.name: s.target for s in st.servers()}
    assert "Connection refused" in state["collector:gone"]["last_error"]
    assert state["server:a"]["labels"] == {"env": "prod", "team": "shop"}
    assert state["server:b"]["interval_s"] == 0.5
    assert "password" not in targets["a"] and "port=" in targets["a"]
    assert {"detector:a", "detector:b"} <= set(state)  # each server judged by its own monitor


def test_status_summarises_the_fleet_trouble_first(fleet_store: Path) -> None:
    text = cli("status", "--store", str(fleet_store)).stdout
    lines = text.splitlines()
    assert lines[0].startswith("3 servers: 1 down"), text
    assert lines[1].startswith("down") and " gone " in lines[1] and "[env=prod]" in lines[1]
    assert {lines[2].split()[1], lines[3].split()[1]} == {"a", "b"}
    doc = json.loads(cli("status", "--store", str(fleet_store), "--format", "json").stdout)
    rows = doc["fleet"]["servers"]
    assert rows[0]["server"] == "gone" and rows[0]["health"] == "down"
    assert doc["fleet"]["counts"]["down"] == 1
    a = next(r for r in rows if r["server"] == "a")
    assert a["labels"] == {"env": "prod", "team": "shop"} and a["intervals"] >= 4
    assert len(a["db_time"]) == 30 and any(v is not None for v in a["db_time"])


def test_status_of_one_server(fleet_store: Path) -> None:
    text = cli("status", "--store", str(fleet_store), "--server", "b").stdout
    assert text.startswith("collector b: last snapshot"), text
    assert "collector a" not in text and "gone" not in text
    doc = json.loads(
        cli("status", "--store", str(fleet_store), "--server", "b", "--format", "json").stdout
    )
    assert [s["server"] for s in doc["servers"]] == ["b"] and "fleet" not in doc
    assert not [k for k in doc["status"] if k.endswith(":a") or k.endswith(":gone")]
    missing = CliRunner().invoke(app, ["status", "--store", str(fleet_store), "--server", "x"])
    assert missing.exit_code != 0 and "server 'x' is not in the store" in str(missing.exception)


def test_top_takes_server(fleet_store: Path) -> None:
    doc = json.loads(
        cli("top", "--store", str(fleet_store), "--server", "a", "--format", "json").stdout
    )
    assert doc["server"] == "a" and doc["seconds_covered"] > 0


def test_check_checks_every_server(two: tuple[str, str], tmp_path: Path) -> None:
    config = tmp_path / "querywatch.toml"
    gone = dead_dsn()
    config.write_text(
        f'[[servers]]\nname = "a"\ndsn = "{two[0]}"\nlabels = {{ env = "prod" }}\n'
        f'[[servers]]\nname = "gone"\ndsn = "{gone}"\n'
    )
    env = {"QUERYWATCH_CONFIG": str(config)}
    result = CliRunner().invoke(app, ["check", "--format", "json"], env=env)
    assert result.exit_code == 1, result.output  # one server failed
    doc = json.loads(result.stdout)
    by_name = {s["server"]: s for s in doc["servers"]}
    assert by_name["a"]["ok"] and by_name["a"]["labels"] == {"env": "prod"}
    assert [c["name"] for c in by_name["a"]["checks"]][:2] == ["server version", "preload"]
    assert not by_name["gone"]["ok"]
    assert by_name["gone"]["checks"][0]["name"] == "connection"
    assert "Connection refused" in by_name["gone"]["checks"][0]["message"]
    text = CliRunner().invoke(app, ["check"], env=env).stdout
    assert "== a [env=prod]: " in text and "== gone: FAIL" in text
    both = CliRunner().invoke(app, ["check", "--dsn", two[0], "--dsn", two[1]])
    assert both.stdout.count("\n== ") + both.stdout.startswith("== ") == 2, both.stdout


def test_a_second_watcher_is_refused_a_leased_server_and_takes_it_once_released(
    two: tuple[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "qw.db"
    Store(path).close()
    first = Watch(Settings(store=str(path), interval=0.5, servers=(ServerEntry("a", two[0]),)))
    try:
        assert wait_until(lambda: counts(path).get("a", 0) >= 2, 30)
        alone = Settings(store=str(path), interval=0.5, dsn=two[0], server_name="a")
        with pytest.raises(ServerLeased, match="server 'a' is watched by querywatch watch"):
            run_watch(alone, WatchOptions(), threading.Event())
        both = (ServerEntry("a", two[0]), ServerEntry("b", two[1]))
        second = Watch(Settings(store=str(path), interval=0.5, servers=both))
        try:
            assert wait_until(lambda: counts(path).get("b", 0) >= 2, 30)
            before = counts(path)["a"]
            first.stop()  # releases its lease: the second takes server a over
            taken = wait_until(lambda: counts(path)["a"] >= before + 2, 30)
            assert taken, "the second watcher never took the released server over"
        finally:
            second.stop()
    finally:
        first.stop()
    with Store(path, create=False) as st:
        assert st.leases() == []  # both released at their stop


def test_collect_takes_one_server_of_a_fleet_and_respects_leases(
    two: tuple[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "querywatch.toml"
    config.write_text(
        f'[[servers]]\nname = "a"\ndsn = "{two[0]}"\n[[servers]]\nname = "b"\ndsn = "{two[1]}"\n'
    )
    env = {"QUERYWATCH_CONFIG": str(config)}
    store = str(tmp_path / "qw.db")
    both = CliRunner().invoke(app, ["collect", "--once", "--store", store], env=env)
    assert both.exit_code != 0 and "pass --server NAME" in str(both.exception)
    one = CliRunner().invoke(app, ["collect", "--once", "--store", store, "--server", "b"], env=env)
    assert one.exit_code == 0, one.output
    with Store(store, create=False) as st:
        assert [s.name for s in st.servers()] == ["b"] and st.leases() == []  # released
    watch = Watch(Settings(store=store, interval=0.5, servers=(ServerEntry("b", two[1]),)))
    try:
        assert wait_until(lambda: leased(Path(store)), 30), "the watch never took its lease"
        taken = CliRunner().invoke(
            app, ["collect", "--once", "--store", store, "--server", "b"], env=env
        )
        assert isinstance(taken.exception, ServerLeased), taken.output
    finally:
        watch.stop()


class SlowProxy:
    """A TCP proxy on 127.0.0.1 that holds every reply of the server for ``delay`` seconds: a
    slow, far-away server (each monitoring query takes that much longer)."""

    def __init__(self, port: int, delay: float) -> None:
        self.upstream, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.delay), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


def test_a_slow_server_never_delays_the_others(two: tuple[str, str], tmp_path: Path) -> None:
    port = int(two[1].split("port=")[1].split()[0])
    proxy = SlowProxy(port, 0.15)  # every reply of "slow" arrives 0.15 s late
    path = tmp_path / "qw.db"
    Store(path).close()
    slow = two[1].replace(f"port={port}", f"port={proxy.port}")
    servers = (ServerEntry("fast", two[0]), ServerEntry("slow", slow))
    watch = Watch(Settings(store=str(path), interval=1.0, activity_interval=0.5, servers=servers))
    try:
        assert wait_until(lambda: counts(path).get("fast", 0) >= 3, 60)
        since = time.time()
        time.sleep(8)
    finally:
        watch.stop()
        proxy.close()
    with Store(path, create=False) as st:
        by_name = {s.name: s.id for s in st.servers()}
        fast = [
            s.seconds for s in st.summaries(by_name["fast"], since, time.time()) if s.start >= since
        ]
        slow_n = len(st.summaries(by_name["slow"], since, time.time())) if "slow" in by_name else 0
    assert len(fast) >= 6, fast
    off = [round(x, 3) for x in fast if abs(x - 1.0) > 0.1]
    assert not off, f"the fast server's intervals were delayed: {off}"
    assert slow_n < len(fast), (slow_n, len(fast))  # the slow one did fall behind
    print(f"fast: {len(fast)} intervals {min(fast):.3f}-{max(fast):.3f} s; slow: {slow_n}")
