"""VIP failover between two LB nodes with keepalived's VRRP, configured by the agents."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from devbed.labpair import (
    L7_PORT,
    NODES,
    READY_PORT,
    SERVERS,
    VIP,
    LBPair,
    desired_state,
    echoes,
)
from devbed.process import wait_until
from devbed.redis import RedisServer
from slb.snapshot import Delete
from slb.storage.store import Store

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[LBPair]:
    client = redis_server.client()
    store = Store(client, prefix="failover")
    lbs = LBPair(tmp_path_factory.mktemp("pair"), store, redis_server.socket_url)
    try:
        desired_state(store)
        # one after the other, as a rollout does: with nopreempt, the node whose agent
        # configures keepalived first becomes MASTER, whatever the priorities
        booted = time.time()
        lbs.boot("lb1")
        lbs.wait_master()
        lbs.boot("lb2")
        wait_until(lambda: lbs.synced_since("lb2", booted), 90, "lb2's agent synced")
        yield lbs
    finally:
        lbs.close()
        client.close()


def other(name: str) -> str:
    return next(n for n in NODES if n != name)


def test_one_node_holds_the_vip_and_the_gateway_and_serves(pair: LBPair) -> None:
    master = pair.wait_master()
    assert master == "lb1"  # up first; lb2 (lower priority, nopreempt) stays BACKUP
    assert pair.nodes[master].holds("198.18.32.1", "eth1")
    assert not pair.nodes["lb2"].holds(VIP)
    include = (pair.nodes["lb1"].state_dir / "openslb.conf").read_text()
    assert f"{VIP}/32 dev eth0" in include
    wait_until(pair.answers, 60, "an answer through the VIP")
    assert {pair.ask() for _ in range(8)} == set(SERVERS)
    # HTTP (L7): by direct routing to both nodes' Envoys, flows spread by Maglev hashing
    assert {pair.ask(VIP, 1.0, L7_PORT) for _ in range(16)} == set(NODES)


def test_the_backup_takes_over_when_the_master_dies_and_connections_survive(
    pair: LBPair,
) -> None:
    master = pair.wait_master()
    wait_until(pair.answers, 60, "an answer through the VIP")
    established = pair.open_connection()
    assert echoes(established)
    backup = other(master)
    source = f"{established.getsockname()[0]}:{established.getsockname()[1]}"
    try:  # IPVS connection sync tells the backup about it
        wait_until(lambda: source in pair.connections(backup), 20, "the connection synced")
    except TimeoutError:
        raise AssertionError(
            f"{backup} does not know {source}:\n{pair.connections(backup)}\n"
            f"{master}:\n{pair.connections(master)}"
        ) from None
    pair.kill(master)
    pair.first_answer_after(time.monotonic())
    assert pair.master() == backup
    assert pair.nodes[backup].holds("198.18.32.1", "eth1")
    assert {pair.ask() for _ in range(8)} == set(SERVERS)
    # IPVS connection sync gave the backup the connection: it carries on
    assert echoes(established)
    established.close()
    # L7: at the takeover the new MASTER probed the dead node's Envoy, which did not
    # answer, so it is out at once rather than after two failed checks; its flows rehash
    wait_until(lambda: pair.l7_answered_by_only(backup), 30, f"HTTP answered by {backup} alone")
    assert pair.l7_weights(backup) == {NODES[master][0]: 0, NODES[backup][0]: 1}
    dead_envoy = f"http://{NODES[master][0]}:{READY_PORT}"
    assert any(
        f.startswith(dead_envoy) and "no answer at the VRRP takeover" in f
        for f in pair.failing(backup)
    ), f"{pair.failing(backup)}\n{pair.diagnosis()}"

    booted = time.time()
    pair.revive(master)
    wait_until(lambda: pair.synced_since(master, booted), 90, f"{master}'s agent synced")
    time.sleep(3)  # an advert of the lower priority arrives every 0.2 s: time to preempt
    assert pair.master() == backup  # nopreempt: the node that came back stays BACKUP


def test_a_new_vip_in_the_desired_state_is_announced_by_the_master(pair: LBPair) -> None:
    extra = "198.18.30.20"
    desired_state(pair.store, (VIP, extra))
    master = pair.wait_master()
    wait_until(lambda: pair.nodes[master].holds(extra), 60, f"{extra} on the MASTER")
    assert not pair.nodes[other(master)].holds(extra)
    wait_until(lambda: pair.answers(extra), 30, f"an answer through {extra}")
    pair.store.apply([Delete("Listener", "tcp1"), Delete("Service", "lab/svc1"),
                      Delete("LoadBalancer", "lb1")])  # fmt: skip
    wait_until(lambda: not pair.nodes[master].holds(extra), 60, f"{extra} released")


def test_a_busy_master_keeps_the_vip(pair: LBPair) -> None:
    """Adverts every 200 ms must not cost false takeovers: with every CPU of the machine
    busy (two spinning processes per CPU, 20 s), no node enters MASTER state again."""
    master = pair.wait_master()
    elections = pair.elections_won()
    netns = pair.nodes[master].netns.name
    spin = ["ip", "netns", "exec", netns, "timeout", "20", "sh", "-c", "while :; do :; done"]
    hogs = [subprocess.Popen(spin) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        holders = set()
        while any(hog.poll() is None for hog in hogs):
            holders.add(pair.master())
            time.sleep(0.2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert holders == {master}
    assert pair.elections_won() == elections, pair.diagnosis()
    assert pair.answers()
