"""What an LB node's Envoy answers on, seen from the node's own network (a namespace with a
management address and a VIP, as the unit in deploy/lb-node sets them up) (#14)."""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from devbed.envoy import envoy_binary
from devbed.netns import Netns
from devbed.process import Process, wait_until
from l7.bootstrap import bootstrap
from slb.cli import main

MANAGEMENT, VIP = "198.18.1.21", "198.18.0.10"
_base_ids = itertools.count(os.getpid() % 10_000 * 100 + 50)


@pytest.fixture
def node() -> Iterator[Netns]:
    netns = Netns(f"t-node-{os.getpid()}")
    try:
        for address in (MANAGEMENT, VIP):  # (this kernel has no dummy devices: lo holds both)
            netns.ip("addr", "add", f"{address}/32", "dev", "lo")
        yield netns
    finally:
        netns.delete()


def answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_envoys_stats_listener_answers_on_the_management_address_not_on_a_vip(
    node: Netns, tmp_path: Path
) -> None:
    """`VIP:9902/stats/prometheus` used to list every tenant's listeners to any client: the
    unit bound the stats listener on 0.0.0.0."""
    config = bootstrap("g", "lb1", "127.0.0.1:1", stats_address=MANAGEMENT, stats_port=9902)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    envoy = Process(
        "envoy",
        ["ip", "netns", "exec", node.name, str(envoy_binary()), "--config-path", str(path),
         "--disable-hot-restart", "--base-id", str(next(_base_ids)), "--log-level", "warn"],
        tmp_path,
    ).start()  # fmt: skip
    try:
        # No xDS server here: Envoy opens its listeners once the initial fetches time
        # out (15 s each for clusters and listeners).
        wait_until(lambda: envoy.check_alive() and node.call(answers, MANAGEMENT, 9902), 60,
                   "the stats listener on the management address")  # fmt: skip
        assert not node.call(answers, VIP, 9902)
    finally:
        envoy.stop()


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]"])  # noqa: S104 - refused
def test_the_bootstrap_refuses_a_stats_listener_on_every_address(address: str) -> None:
    refused = CliRunner().invoke(
        main, ["envoy-bootstrap", "--node-id", "lb1", "--stats-address", address],
        env={"OPENSLB_CONFIG": ""},
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "its VIPs included" in refused.output
