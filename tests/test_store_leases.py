"""Owner leases: one watcher per server; a live lease refuses others, an expired one is taken."""

from __future__ import annotations

import pytest

from querywatch.errors import ServerLeased
from querywatch.store import Store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_live_lease_refuses_a_second_owner(any_store: Store) -> None:
    clock = Clock(1000.0)
    any_store.clock = clock
    lease = any_store.claim_server("db1", "watch-a", ttl_s=30, host="host-a")
    assert (lease.server_name, lease.owner, lease.host) == ("db1", "watch-a", "host-a")
    clock.now = 1012.0
    with pytest.raises(ServerLeased) as err:
        any_store.claim_server("db1", "watch-b", ttl_s=30, host="host-b")
    message = str(err.value)
    assert message == (
        "server 'db1' is watched by watch-a on host-a (lease renewed 12s ago); stop it or wait 18s"
    )
    assert "\n" not in message
    other = any_store.claim_server("db2", "watch-b", ttl_s=30, host="host-b")
    assert other.server_id != lease.server_id
    assert {(x.server_name, x.owner) for x in any_store.leases()} == {
        ("db1", "watch-a"),
        ("db2", "watch-b"),
    }


def test_renewal_keeps_the_lease_and_expiry_lets_another_take_over(any_store: Store) -> None:
    clock = Clock(1000.0)
    any_store.clock = clock
    lease = any_store.claim_server("db1", "watch-a", ttl_s=30)
    for step in range(1, 6):  # renewed every 20 s, never taken
        clock.now = 1000.0 + 20 * step
        lease = any_store.renew(lease)
        with pytest.raises(ServerLeased):
            any_store.claim_server("db1", "watch-b", ttl_s=30)
    assert lease.renewed_at == 1100.0
    clock.now = 1100.0 + 30.5  # the owner stopped renewing: expired
    taken = any_store.claim_server("db1", "watch-b", ttl_s=30)
    assert taken.owner == "watch-b" and taken.token != lease.token
    with pytest.raises(ServerLeased, match="lease lost, now held by watch-b"):
        any_store.renew(lease)
    assert not any_store.release(lease)  # a stale token releases nothing
    assert any_store.leases()[0].owner == "watch-b"


def test_release_frees_the_server_at_once(any_store: Store) -> None:
    clock = Clock(1000.0)
    any_store.clock = clock
    lease = any_store.claim_server("db1", "watch-a", ttl_s=300)
    assert any_store.release(lease)
    assert any_store.leases() == []
    clock.now = 1001.0
    assert any_store.claim_server("db1", "watch-b", ttl_s=300).owner == "watch-b"
