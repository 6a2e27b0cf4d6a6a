"""`slb dev up|status|down` through the CLI: the platform starts, shows traffic, is
idempotent, and stops. Without the lab VM here (the end-to-end tests run it with the VM);
its own 198.19.N.0/24, so it runs beside a developer's `slb dev up`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devbed import demo
from devbed.l7harness import free_octet
from devbed.platform import DevPlatform
from slb import config
from slb.storage.store import Store

COMPONENTS = {"redis", "kube-apiserver", "samples", "xds", "envoy", "cmi", "worker-control",
              "console"}  # fmt: skip


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    octet = free_octet()
    return {
        **os.environ,
        "OPENSLB_CONFIG": "",
        "OPENSLB_DEV_STATE_DIR": str(tmp_path / "dev"),
        "OPENSLB_DEV_VIP_CIDR": f"198.19.{octet}.0/25",
        "OPENSLB_DEV_SAMPLE_CIDR": f"198.19.{octet}.128/25",
        "OPENSLB_DEV_LAB": "false",
    }


def slb(environment: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slb.cli", *argv], env=environment,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def routes() -> str:
    return subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


@pytest.mark.timeout(600)
def test_up_shows_traffic_is_idempotent_and_down_stops_everything(
    environment: dict[str, str],
) -> None:
    state = Path(environment["OPENSLB_DEV_STATE_DIR"])
    vip_cidr = environment["OPENSLB_DEV_VIP_CIDR"]
    try:
        first = slb(environment, "dev", "up")
        assert first.returncode == 0, first.stderr
        platform = DevPlatform(state)
        components = platform.components()
        assert set(components) == COMPONENTS
        assert all(c.alive() for c in components.values())
        # The gRPC sample answered through its VIP, by every one of its endpoints.
        line = next(x for x in first.stdout.splitlines() if x.startswith("demo/grpc-echo"))
        assert f"VIP {vip_cidr.rsplit('.', 1)[0]}." in line
        answers = first.stdout.split("answered by:", 1)[1].splitlines()[0].split()
        assert set(answers) == {"echo-1", "echo-2", "echo-3"}
        assert f"local {vip_cidr} dev lo" in routes()

        # The written config points slb at this platform's Redis, where cmi wrote the VIP.
        settings = config.load(platform.config_file, environ={})
        store = Store.connect(settings.redis)
        assert store.revision() > 0
        vip = demo.exposure(platform.kube(), "grpc-echo").vip
        assert vip is not None

        again = slb(environment, "dev", "up")
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("already running") == len(COMPONENTS)
        assert platform.components() == components
        assert "answered by:" in again.stdout

        status = slb(environment, "dev", "status")
        assert status.returncode == 0
        assert status.stdout.count(" up ") == len(COMPONENTS)
    finally:
        down = slb(environment, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert not any(c.alive() for c in components.values())
    assert slb(environment, "dev", "status").returncode == 1
    assert vip_cidr not in routes()
