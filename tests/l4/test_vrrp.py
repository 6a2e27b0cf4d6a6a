"""keepalived's VRRP instance from the desired state: golden files, settings, the file."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devbed.netns import Netns
from l4.vrrp import VRRP, Keepalived, TakeoverWatch, added_addresses, compile_instance
from slb.config import ConfigError, L4Settings
from tests.golden import Golden

TESTDATA = Path(__file__).parent / "vrrp_cases"

LB1 = L4Settings(
    node="lb1", vrrp_config="/etc/keepalived/openslb.conf", vrrp_interface="eth1",
    vrrp_priority=150, vrrp_peers="198.18.30.12", vrrp_check="curl -sf http://127.0.0.1:9901/ready",
    vrrp_gateway="198.18.32.1/24 dev eth2",
)  # fmt: skip

CASES: dict[str, tuple[L4Settings, str | None, tuple[str, ...]]] = {
    "unicast-check-gateway": (LB1, "lab", ("198.18.30.10", "198.18.30.11")),
    "multicast-dual-stack": (
        dataclasses.replace(
            LB1, vrrp_peers="", vrrp_check="", vrrp_gateway="", vrrp_advert_ms=1000
        ),
        "edge group",
        ("198.18.30.10", "2001:2:30::10"),
    ),
    "no-vips": (LB1, "lab", ()),
    "nothing-to-hold": (dataclasses.replace(LB1, vrrp_gateway=""), "lab", ()),
    "no-group": (LB1, None, ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compile_instance(case: str, golden: Golden) -> None:
    settings, group, vips = CASES[case]
    vrrp = VRRP.from_settings(settings)
    assert vrrp is not None
    text = compile_instance(group, vips, vrrp, "lb1")
    golden.check(TESTDATA / case, {"keepalived.json": text.splitlines()}, inputs=())


def test_vrrp_is_off_without_a_config_file() -> None:
    assert VRRP.from_settings(L4Settings()) is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"vrrp_priority": 255}, "l4.vrrp_priority"),
        ({"vrrp_router_id": 0}, "l4.vrrp_router_id"),
        ({"vrrp_advert_ms": 505}, "l4.vrrp_advert_ms"),
        ({"vrrp_interface": ""}, "l4.vrrp_interface"),
        ({"vrrp_peers": "198.18.30.12, lb2"}, "l4.vrrp_peers"),
        ({"vrrp_gateway": "198.18.32.1"}, "l4.vrrp_gateway"),
        ({"vrrp_gateway": "198.18.32.1/24 eth2"}, "l4.vrrp_gateway"),
    ],
)
def test_bad_settings_are_named(change: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        VRRP.from_settings(dataclasses.replace(LB1, **change))  # type: ignore[arg-type]


def test_the_file_is_rewritten_and_keepalived_reloaded_only_on_a_change(tmp_path: Path) -> None:
    # a process that counts its SIGHUPs stands where keepalived would
    counter = tmp_path / "hups"
    script = (
        "import signal, sys, time\n"
        "n = 0\n"
        "def hup(*_):\n"
        "    global n; n += 1; open(sys.argv[1], 'w').write(str(n))\n"
        "signal.signal(signal.SIGHUP, hup)\n"
        "open(sys.argv[1], 'w').write('0')\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(counter)])
    try:
        deadline = time.monotonic() + 10
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pidfile = tmp_path / "keepalived.pid"
        pidfile.write_text(f"{process.pid}\n")
        vrrp = VRRP.from_settings(
            dataclasses.replace(LB1, vrrp_config=str(tmp_path / "openslb.conf"),
                                vrrp_pidfile=str(pidfile))
        )  # fmt: skip
        assert vrrp is not None
        keepalived = Keepalived(vrrp)

        assert keepalived.update("first\n") == []
        wait_for(counter, "1")
        assert keepalived.update("first\n") == []  # the same: no reload
        time.sleep(0.5)
        assert counter.read_text() == "1"
        assert keepalived.update("second\n") == []
        wait_for(counter, "2")
        assert vrrp.config.read_text() == "second\n"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def wait_for(counter: Path, value: str) -> None:
    deadline = time.monotonic() + 10
    while counter.read_text() != value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counter.read_text() == value


def test_a_keepalived_that_is_not_running_is_reported(tmp_path: Path) -> None:
    vrrp = VRRP.from_settings(
        dataclasses.replace(LB1, vrrp_config=str(tmp_path / "openslb.conf"),
                            vrrp_pidfile=str(tmp_path / "missing.pid"))
    )  # fmt: skip
    assert vrrp is not None
    errors = Keepalived(vrrp).update("text\n")
    assert len(errors) == 1
    assert "missing.pid" in errors[0]
    assert "is it running" in errors[0]
    assert (tmp_path / "openslb.conf").read_text() == "text\n"


def test_the_takeover_watch_reports_addresses_added_to_its_interface_only() -> None:
    """The kernel's netlink announcements, in a namespace of the test's own: what keepalived
    adding the VIPs at a takeover looks like to the agent."""
    netns = Netns(f"t-vrrp-{os.getpid()}")
    seen: queue.Queue[set[str]] = queue.Queue()
    watch = TakeoverWatch("vrrp0", seen.put)
    try:
        netns.ip("link", "add", "vrrp0", "type", "veth", "peer", "name", "other0")
        netns.ip("link", "set", "vrrp0", "up")
        netns.call(watch.start)
        time.sleep(0.6)  # the watch looks the interface up between reads
        netns.ip("addr", "add", "198.18.40.9/32", "dev", "other0")
        netns.ip("addr", "add", "198.18.40.1/32", "dev", "vrrp0")
        netns.ip("addr", "add", "2001:db8::1/128", "dev", "vrrp0", "nodad")
        got: set[str] = set()
        while got != {"198.18.40.1", "2001:db8::1"}:
            got |= seen.get(timeout=5)
        assert "198.18.40.9" not in got
    finally:
        watch.stop()
        netns.delete()


def test_a_netlink_datagram_is_read_to_its_added_addresses() -> None:
    def message(kind: int, family: int, index: int, address: bytes) -> bytes:
        attribute = struct.pack("=HH", 4 + len(address), 1) + address
        body = struct.pack("=BBBBI", family, 32, 0, 0, index) + attribute
        return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body

    datagram = (
        message(20, socket.AF_INET, 3, bytes([198, 18, 40, 1]))
        + message(21, socket.AF_INET, 3, bytes([198, 18, 40, 2]))  # RTM_DELADDR
        + message(20, socket.AF_INET, 4, bytes([198, 18, 40, 3]))  # another interface
        + message(20, socket.AF_INET6, 3, bytes(15) + b"\x01")
    )
    assert added_addresses(datagram, 3) == {"198.18.40.1", "::1"}
    assert added_addresses(datagram[:30], 3) == set()  # cut short: nothing made up
