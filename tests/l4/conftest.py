"""Fixtures for l4 tests inside the lab VM: a clean IPVS per test, drivers, namespaces, agents."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devbed.netns import Topology
from l4.agent import L4Agent
from l4.drivers import DRIVERS, Driver, open_driver
from l4.firewall import TABLE as GUARD_TABLE
from l4.vip import VIPs, prepare_kernel
from slb.config import L4Settings
from slb.storage.store import Store

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "mh", "dh", "sed", "nq", "lblc", "lblcr", "fo", "ovf")
INTERFACE = "slb0"


def flush_ipvs() -> None:
    subprocess.run(["ipvsadm", "-C"], check=True)


def remove_vip_guard() -> None:
    """Delete the VIP guard's table an agent (or a worker) left behind, if nft is here."""
    if shutil.which("nft"):
        subprocess.run(
            ["nft", "delete", "table", *GUARD_TABLE.split()], capture_output=True, check=False
        )


@pytest.fixture(scope="session")
def kernel() -> None:
    """IPVS loaded with the settings openslb writes, and every scheduler module."""
    prepare_kernel()
    for scheduler in SCHEDULERS:
        subprocess.run(["modprobe", f"ip_vs_{scheduler}"], check=True)


@pytest.fixture
def clean_ipvs(kernel: None) -> Iterator[None]:
    """No IPVS service, and no VIP guard, before and after the test."""
    flush_ipvs()
    remove_vip_guard()
    yield
    flush_ipvs()
    remove_vip_guard()


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, clean_ipvs: None) -> Iterator[Driver]:
    """Each driver in turn: the same tests pass with both."""
    opened = open_driver(request.param)
    yield opened
    opened.close()


@pytest.fixture
def observer(clean_ipvs: None) -> Iterator[Driver]:
    """A driver of its own for the test to look at the kernel with."""
    opened = open_driver("pyroute2")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def topology(kernel: None) -> Topology:
    return Topology()


def lab_settings(**overrides: Any) -> L4Settings:
    base = L4Settings(
        node="lb-a", interface=INTERFACE, drain_timeout_s=60, healthy_floor=0.5,
        resync_interval_s=3600, stats_interval_s=1, metrics_listen="",
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


AgentFactory = Callable[..., L4Agent]


@pytest.fixture
def agent_factory(store: Store, clean_ipvs: None, tmp_path: Path) -> Iterator[AgentFactory]:
    """Agents on this test's store, remembering what they applied under `tmp_path`; each is
    stopped, and slb0 removed, afterwards."""
    started: list[tuple[L4Agent, list[Driver]]] = []

    def make(driver: str = "pyroute2", through: Store | None = None, **overrides: Any) -> L4Agent:
        """`through`: the store as the agent reaches it (another client of the same data)."""
        settings = lab_settings(driver=driver, state_dir=str(tmp_path / "l4"), **overrides)
        drivers = [open_driver(driver), open_driver(driver)]
        agent = L4Agent(
            through or store, settings, settings.node, driver=drivers[0], vips=VIPs(INTERFACE),
            stats_driver=drivers[1],
        )  # fmt: skip
        started.append((agent, drivers))
        return agent.start()

    yield make
    for agent, drivers in started:
        agent.stop()
        for opened in drivers:
            opened.close()
        agent.vips.remove_interface()
        agent.vips.close()


@contextmanager
def following(agent: L4Agent) -> Iterator[None]:
    """The agent's follow loop (200 ms steps) in a thread while the block runs."""
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop, 200), daemon=True)
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=20)
    assert not loop.is_alive()
