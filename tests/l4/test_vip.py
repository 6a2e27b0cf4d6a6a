"""VIPs on the dummy interface, and the kernel settings, in the lab VM."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from l4.vip import SYSCTLS, VIPs, prepare_kernel

pytestmark = pytest.mark.lab


@pytest.fixture
def vips() -> Iterator[VIPs]:
    handle = VIPs("slbtest0")
    yield handle
    handle.remove_interface()
    handle.close()


def test_settings_are_written_and_each_reads_back() -> None:
    Path("/proc/sys/net/ipv4/vs/expire_nodest_conn").write_text("0")
    changed = prepare_kernel()
    assert changed.get("net.ipv4.vs.expire_nodest_conn") == "0"
    for name, value in SYSCTLS.items():
        assert Path("/proc/sys", name.replace(".", "/")).read_text().strip() == value
    assert prepare_kernel() == {}


def test_vips_are_bound_as_host_routes_and_removed(vips: VIPs) -> None:
    vips.add(["198.18.0.10", "2001:2::10"])
    assert vips.bound() == {"198.18.0.10", "2001:2::10"}
    shown = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", "slbtest0"], capture_output=True, text=True, check=True
    ).stdout
    assert "inet 198.18.0.10/32" in shown
    assert "inet6 2001:2::10/128" in shown
    assert "tentative" not in shown, "IPv6 VIPs skip duplicate address detection"
    link = subprocess.run(
        ["ip", "-d", "link", "show", "slbtest0"], capture_output=True, text=True, check=True
    ).stdout
    assert "dummy" in link
    assert "UP" in link
    vips.remove(["198.18.0.10"])
    assert vips.bound() == {"2001:2::10"}
