"""VIP allocation against a real Redis: sticky, exclusive under races, released after grace."""

from __future__ import annotations

import ipaddress
import multiprocessing
import time

import pytest
import redis

from cmi.ipam import IPAM, IPAMError
from devbed.redis import RedisServer
from slb.model import AddressPool
from slb.storage.store import Store


def pool(*cidrs: str, name: str = "default") -> AddressPool:
    return AddressPool.model_validate({"name": name, "cidrs": list(cidrs)})


def test_allocation_is_sticky_and_skips_network_and_broadcast(store: Store) -> None:
    ipam = IPAM(store)
    small = pool("198.18.0.0/30")
    first = ipam.allocate("a", [small])
    assert first == ipaddress.ip_address("198.18.0.1")
    assert ipam.allocate("a", [small]) == first
    assert ipam.allocate("b", [small]) == ipaddress.ip_address("198.18.0.2")
    with pytest.raises(IPAMError, match="no free address"):
        ipam.allocate("c", [small])
    assert ipam.allocations() == {"a": first, "b": ipaddress.ip_address("198.18.0.2")}


def test_an_instance_with_an_address_is_answered_in_one_call(store: Store) -> None:
    """No free address is looked for (a scan past every held one, at 10,000 VIPs) for an
    instance that has one: one script call, no listing of the held addresses."""
    ipam = IPAM(store)
    wide = pool("198.18.0.0/16")
    first = ipam.allocate("a", [wide])
    fresh = IPAM(store)  # no hint of what is held
    calls = _command_calls(store)
    assert fresh.allocate("a", [wide]) == first
    after = _command_calls(store)
    sent = {name: after[name] - calls.get(name, 0) for name in ("evalsha", "hkeys")}
    assert sent == {"evalsha": 1, "hkeys": 0}  # (the script's own calls are counted too)
    assert fresh.allocate("b", [wide]) == ipaddress.ip_address("198.18.0.2")


def _command_calls(store: Store) -> dict[str, int]:
    stats = store.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_reserved_addresses_are_never_a_vip(store: Store) -> None:
    """The gateway an admin reserved is neither drawn nor given on request (#14)."""
    ipam = IPAM(store)
    gated = AddressPool.model_validate(
        {"name": "edge", "cidrs": ["198.18.0.0/29"], "reserved": ["198.18.0.1"]}
    )
    assert ipam.allocate("a", [gated]) == ipaddress.ip_address("198.18.0.2")
    with pytest.raises(IPAMError, match="reserved"):
        ipam.allocate("b", [gated], ipaddress.ip_address("198.18.0.1"))
    with pytest.raises(IPAMError, match="reserved"):
        ipam.allocate("c", [gated], ipaddress.ip_address("198.18.0.0"))  # the network's own


def test_requested_addresses_are_checked(store: Store) -> None:
    ipam = IPAM(store)
    pools = [pool("198.18.0.0/28"), pool("2001:db8::/126", name="v6")]
    assert ipam.allocate("a", pools, ipaddress.ip_address("198.18.0.9")) == ipaddress.ip_address(
        "198.18.0.9"
    )
    with pytest.raises(IPAMError, match="already the VIP of instance 'a'"):
        ipam.allocate("b", pools, ipaddress.ip_address("198.18.0.9"))
    with pytest.raises(IPAMError, match="outside every address pool"):
        ipam.allocate("b", pools, ipaddress.ip_address("198.18.9.9"))
    assert ipam.allocate("v6", pools[1:]) == ipaddress.ip_address("2001:db8::1")


def test_released_addresses_are_held_for_the_grace_period(store: Store) -> None:
    ipam = IPAM(store)
    tiny = pool("198.18.0.0/30")
    address = ipam.allocate("a", [tiny])
    ipam.allocate("b", [tiny])
    ipam.release("a")
    assert ipam.expire(grace_s=60) == []
    with pytest.raises(IPAMError):
        ipam.allocate("c", [tiny])  # still held for 'a'
    assert ipam.allocate("a", [tiny]) == address  # came back in time: same VIP
    ipam.release("a")
    time.sleep(0.05)
    assert ipam.expire(grace_s=0.01) == [("a", address)]
    assert ipam.allocate("c", [tiny]) == address


def test_changing_the_requested_vip_puts_the_old_one_in_grace(store: Store) -> None:
    ipam = IPAM(store)
    pools = [pool("198.18.0.0/29")]
    old = ipam.allocate("a", pools, ipaddress.ip_address("198.18.0.2"))
    new = ipam.allocate("a", pools, ipaddress.ip_address("198.18.0.3"))
    assert ipam.current("a") == new
    with pytest.raises(IPAMError, match="instance 'a'"):
        ipam.allocate("b", pools, old)
    time.sleep(0.05)
    assert ipam.expire(grace_s=0.01) == [("a", old)]
    assert ipam.allocate("b", pools, old) == old


def _grab(url: str, prefix: str, names: list[str]) -> list[str]:
    ipam = IPAM(Store(redis.Redis.from_url(url), prefix=prefix))
    got = []
    for name in names:
        try:
            got.append(f"{name}={ipam.allocate(name, [pool('198.18.0.0/26')])}")
        except IPAMError:
            got.append(f"{name}=none")
    return got


def test_racing_processes_never_share_an_address(store: Store, redis_server: RedisServer) -> None:
    """Four processes claim 100 addresses from a pool of 62: no address twice, no gaps."""
    batches = [[f"p{p}-{i}" for i in range(25)] for p in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as procs:
        results = procs.starmap(_grab, [(redis_server.url, store.prefix, b) for b in batches])
    claims = dict(item.split("=") for batch in results for item in batch)
    addresses = [a for a in claims.values() if a != "none"]
    assert len(addresses) == 62
    assert len(set(addresses)) == 62
    assert IPAM(store).allocations() == {
        n: ipaddress.ip_address(a) for n, a in claims.items() if a != "none"
    }
