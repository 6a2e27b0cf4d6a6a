"""Inside the lab VM: the kernel's IPVS is there and usable from Python and ipvsadm."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

SCHEDULERS = ["rr", "wrr", "lc", "wlc", "sh", "mh", "dh", "sed", "nq", "lblc", "lblcr", "fo",
              "ovf"]  # fmt: skip


def test_ip_vs_module_loads() -> None:
    subprocess.run(["modprobe", "ip_vs"], check=True)
    assert Path("/proc/net/ip_vs").read_text().startswith("IP Virtual Server version")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_the_model_names_loads(scheduler: str) -> None:
    subprocess.run(["modprobe", f"ip_vs_{scheduler}"], check=True)
    subprocess.run(["ipvsadm", "-A", "-t", "198.18.0.10:80", "-s", scheduler], check=True)
    try:
        listing = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True)
        assert f"198.18.0.10:80 {scheduler}" in listing.stdout
    finally:
        subprocess.run(["ipvsadm", "-D", "-t", "198.18.0.10:80"], check=True)


def test_pyroute2_programs_ipvs_over_netlink() -> None:
    from pyroute2 import IPVS, IPVSDest, IPVSService

    subprocess.run(["modprobe", "ip_vs_rr"], check=True)
    ipvs = IPVS()
    service = IPVSService(addr="198.18.0.11", port=443, protocol=6, sched_name="rr")
    try:
        ipvs.service("add", service=service)
        for last in (21, 22, 23):
            dest = IPVSDest(addr=f"198.18.1.{last}", port=8443, fwd_method=0, weight=1)
            ipvs.dest("add", service=service, dest=dest)
        listing = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True)
        assert "TCP  198.18.0.11:443 rr" in listing.stdout
        assert listing.stdout.count("Masq") == 3
    finally:
        ipvs.service("del", service=service)
        ipvs.close()
