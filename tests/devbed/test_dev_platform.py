"""`slb dev up|status|down` through the CLI: the platform starts, shows traffic (also from
the pods of Deployments the one-node cluster runs), is idempotent, and stops, the cluster
with it. Without the lab VM here (the end-to-end tests run it with the VM); its own
198.19.N.0/24 for VIPs and samples. It starts the one-node cluster, so never beside a
developer's `slb dev up` or another cluster (one runs on a machine at a time)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devbed import demo, podtraffic
from devbed.cluster import POD_BRIDGE, POD_CIDR
from devbed.l7harness import free_octet
from devbed.platform import Component, DevPlatform
from devbed.process import wait_until
from slb import config
from slb.storage.store import Store
from slb.storage.timeseries import TimeSeries

pytestmark = pytest.mark.cluster

COMPONENTS = {"redis", "kubernetes", "samples", "xds", "envoy", "envoy-stats", "cmi",
              "worker-control", "console"}  # fmt: skip
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"


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


def report_of(stdout: str, app: str) -> dict[str, list[str]]:
    """`slb dev up`'s lines about one app: "VIP", "pods ready" and "answered by" -> words."""
    lines = stdout.split(f"{demo.NAMESPACE}/{app}: ", 1)[1].splitlines()
    parts = {"VIP": lines[0].split("VIP ", 1)[1].split()[:1]}
    for line in lines[1:4]:
        key, _, words = line.strip().partition(": ")
        parts[key] = words.split()
    return parts


def deployment_pods(platform: DevPlatform, app: demo.DeploymentApp) -> dict[str, str]:
    """Name -> IP of the app's running pods, as Kubernetes lists them."""
    pods = platform.kube().get(f"/api/v1/namespaces/{demo.NAMESPACE}/pods",
                               labelSelector=f"app={app.name}")["items"]  # fmt: skip
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in pods
            if p["status"].get("phase") == "Running"}  # fmt: skip


def endpoint_addresses(platform: DevPlatform, app: demo.DeploymentApp) -> set[str]:
    """The ready endpoints of the app's EndpointSlices that Kubernetes' controller made."""
    slices = platform.kube().get(
        f"/apis/discovery.k8s.io/v1/namespaces/{demo.NAMESPACE}/endpointslices",
        labelSelector=f"kubernetes.io/service-name={app.name}",
    )["items"]
    return {address for s in slices
            if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by")
            == SLICE_CONTROLLER
            for e in s["endpoints"] or [] if e["conditions"].get("ready")
            for address in e["addresses"]}  # fmt: skip


def processes_naming(path: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"{path}/".encode() in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found


def routes() -> str:
    return subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


@pytest.mark.timeout(600)
def test_up_shows_traffic_is_idempotent_and_down_stops_everything(
    environment: dict[str, str],
) -> None:
    state = Path(environment["OPENSLB_DEV_STATE_DIR"])
    vip_cidr = environment["OPENSLB_DEV_VIP_CIDR"]
    vip_net = ipaddress.ip_network(vip_cidr)
    components: dict[str, Component] = {}
    run_dir = None
    try:
        first = slb(environment, "dev", "up")
        assert first.returncode == 0, first.stderr
        platform = DevPlatform(
            state, vip_cidr=vip_cidr, sample_cidr=environment["OPENSLB_DEV_SAMPLE_CIDR"], lab=False
        )
        components = platform.components()
        assert set(components) == COMPONENTS
        assert all(c.alive() for c in components.values())
        run_dir = platform.cluster.run_dir
        # The gRPC sample answered through its VIP, by every one of its endpoints.
        line = next(x for x in first.stdout.splitlines() if x.startswith("demo/grpc-echo"))
        assert f"VIP {vip_cidr.rsplit('.', 1)[0]}." in line
        answers = first.stdout.split("answered by:", 1)[1].splitlines()[0].split()
        assert set(answers) == {"echo-1", "echo-2", "echo-3"}
        assert f"local {vip_cidr} dev lo" in routes()

        # Each Deployment's 3 pods run on the node, Kubernetes' EndpointSlice controller
        # lists them, and each answered through its VIP, as the report says and again now.
        pods_of = {}
        for app in platform.deployments():
            pods = deployment_pods(platform, app)
            pods_of[app.name] = pods
            assert len(pods) == app.replicas == 3, pods
            assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR)
                       for ip in pods.values()), pods  # fmt: skip
            assert endpoint_addresses(platform, app) == set(pods.values())
            report = report_of(first.stdout, app.name)
            address, port = report["VIP"][0].rsplit(":", 1)
            assert ipaddress.ip_address(address) in vip_net
            assert int(port) == app.port
            assert set(report["pods ready"]) == set(pods)
            assert set(report["answered by"]) == set(pods)
            assert set(app.who(f"{address}:{port}", 12)) == set(pods)

        # The written config points slb at this platform's Redis, where cmi wrote the VIP.
        settings = config.load(platform.config_file, environ={})
        store = Store.connect(settings.redis)
        assert store.revision() > 0
        vip = demo.exposure(platform.kube(), "grpc-echo").vip
        assert vip is not None

        # The console's L7 charts: `slb envoy-stats` samples the demo Envoy into Redis.
        grpc_pods = next(a for a in platform.deployments() if a.kind == "grpc")
        target = report_of(first.stdout, grpc_pods.name)["VIP"][0]
        series = TimeSeries(store)

        def charted() -> bool:
            grpc_pods.who(target, 6)
            now = time.time()
            found = series.range("requests_per_second", now - 60, now,
                                 match={"listener": podtraffic.listener(grpc_pods)})  # fmt: skip
            return any(point.value > 0 for one in found for point in one.points)

        wait_until(charted, 30, "requests/s of demo/grpc-pods charted", interval=1.0)

        again = slb(environment, "dev", "up")
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("already running") == len(COMPONENTS)
        assert platform.components() == components
        assert platform.cluster.run_dir == run_dir
        for app in platform.deployments():  # the same pods, not new ones
            assert set(report_of(again.stdout, app.name)["answered by"]) == set(pods_of[app.name])

        status = slb(environment, "dev", "status")
        assert status.returncode == 0
        assert status.stdout.count(" up ") == len(COMPONENTS)
    finally:
        down = slb(environment, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert not any(c.alive() for c in components.values())
    assert slb(environment, "dev", "status").returncode == 1
    assert vip_cidr not in routes()
    # The cluster is gone: its processes, pods, bridge and mounts.
    assert run_dir is not None
    assert processes_naming(run_dir) == []
    assert not Path(f"/sys/class/net/{POD_BRIDGE}").exists()
    assert run_dir not in Path("/proc/self/mounts").read_text()
    assert not Path(run_dir).exists()
