"""The one-node cluster: Kubernetes runs the pods and writes the endpoints, as in production.

A Deployment's pods become Ready through their readiness probe, the EndpointSlice
controller lists them, the host reaches them directly, a rolling update shows terminating
endpoints before the new pods take over, and nothing is left on the host: after stop(), also
when the kubelet and containerd crashed, and after a run whose owner was killed.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    DiscoveryV1Api,
    V1Namespace,
    V1ObjectMeta,
)

from devbed.cluster import CGROUP_FS, NODE_LINK, POD_BRIDGE, KubeNode, remove_run
from devbed.images import SAMPLE_HTTP
from devbed.process import wait_until

pytestmark = pytest.mark.cluster

APP_PORT = 8080


@pytest.fixture
def client(kube_node: KubeNode) -> Iterator[ApiClient]:
    with kube_node.client() as api:
        yield api


@pytest.fixture
def namespace(client: ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    CoreV1Api(client).create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    return name


def _deployment(name: str, version: str) -> dict[str, Any]:
    """3 replicas of the sample app; one pod more at a time, never one fewer ready."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "app",
                        "image": SAMPLE_HTTP.ref,
                        "imagePullPolicy": "Never",
                        "env": [{"name": "VERSION", "value": version}],
                        "ports": [{"name": "http", "containerPort": APP_PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": APP_PORT},
                            "periodSeconds": 1,
                            "failureThreshold": 1,
                        },
                        # endpoints stay `terminating` this long: long enough to be seen
                        "lifecycle": {"preStop": {"sleep": {"seconds": 3}}},
                    }],
                },
            },
        },
    }  # fmt: skip


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80,
                                                       "targetPort": "http"}]},
    }  # fmt: skip


def _endpoints(client: ApiClient, namespace: str, service: str) -> list[tuple[str, bool, bool]]:
    """(address, ready, terminating) of every endpoint in the Service's slices."""
    slices = DiscoveryV1Api(client).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return [
        (endpoint.addresses[0], bool(endpoint.conditions.ready),
         bool(endpoint.conditions.terminating))
        for endpoint_slice in slices.items
        for endpoint in endpoint_slice.endpoints or []
    ]  # fmt: skip


def _pods(client: ApiClient, namespace: str, app: str) -> dict[str, str]:
    """Pod IP -> pod name, for running pods not being deleted."""
    pods = CoreV1Api(client).list_namespaced_pod(namespace, label_selector=f"app={app}")
    return {
        pod.status.pod_ip: str(pod.metadata.name)
        for pod in pods.items
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None
    }


def _get(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:{APP_PORT}/", timeout=3) as resp:
        body: bytes = resp.read()
        return body.decode().strip()


def _rolled_out(client: ApiClient, namespace: str, name: str) -> bool:
    deployment = AppsV1Api(client).read_namespaced_deployment(name, namespace)
    status = deployment.status
    return (
        status.observed_generation == deployment.metadata.generation
        and status.updated_replicas == 3
        and status.ready_replicas == 3
        and status.replicas == 3
    )


def test_a_deployment_is_served_and_rolled_by_kubernetes(
    kube_node: KubeNode, client: ApiClient, namespace: str
) -> None:
    apps, core = AppsV1Api(client), CoreV1Api(client)
    apps.create_namespaced_deployment(namespace, _deployment("web", "one"))  # type: ignore[arg-type]
    core.create_namespaced_service(namespace, _service("web"))  # type: ignore[arg-type]
    pod_net = ipaddress.ip_network(kube_node.pod_cidr)

    wait_until(lambda: _rolled_out(client, namespace, "web"), 120, "3 ready pods", interval=0.5)

    def three_ready() -> bool:
        endpoints = _endpoints(client, namespace, "web")
        return len(endpoints) == 3 and all(ready for _, ready, _ in endpoints)

    wait_until(three_ready, 30, "an EndpointSlice with 3 ready endpoints", interval=0.2)
    addresses = {address for address, _, _ in _endpoints(client, namespace, "web")}
    assert all(ipaddress.ip_address(a) in pod_net for a in addresses), addresses
    old = _pods(client, namespace, "web")
    assert set(old) == addresses
    for ip, pod in old.items():
        assert _get(ip) == f"{pod} one"

    apps.patch_namespaced_deployment(
        "web", namespace,
        {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "VERSION", "value": "two"}]}]}}}},
    )  # fmt: skip
    seen_terminating: set[str] = set()
    deadline = time.monotonic() + 180
    while True:
        endpoints = _endpoints(client, namespace, "web")
        seen_terminating |= {address for address, _, terminating in endpoints if terminating}
        new = {address for address, ready, _ in endpoints if ready} - addresses
        if len(endpoints) == 3 and len(new) == 3 and _rolled_out(client, namespace, "web"):
            break
        assert time.monotonic() < deadline, f"rolling update not done: {endpoints}"
        time.sleep(0.2)

    assert seen_terminating, "no endpoint was ever marked terminating"
    assert seen_terminating <= addresses
    for ip, pod in _pods(client, namespace, "web").items():
        assert ip in new
        assert _get(ip) == f"{pod} two"


def _processes_naming(*paths: Path) -> list[str]:
    markers = [f"{path}/".encode() for path in paths]
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(marker in cmdline for marker in markers):
                argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {argv[:200]}")
    return found


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def test_stop_leaves_nothing_behind_even_after_a_crash(
    kube_node: KubeNode, client: ApiClient, namespace: str
) -> None:
    """Runs last in this file: it stops the session's cluster and starts it again."""
    apps = AppsV1Api(client)
    apps.create_namespaced_deployment(namespace, _deployment("left", "one"))  # type: ignore[arg-type]
    wait_until(lambda: _rolled_out(client, namespace, "left"), 120, "3 ready pods", interval=0.5)
    run_dir = kube_node.run_dir
    assert run_dir is not None
    api = kube_node.api
    assert api is not None
    veths = [p.name for p in Path(f"/sys/class/net/{POD_BRIDGE}/brif").iterdir()]
    assert len(veths) >= 3
    kubelet_existed = Path("/var/lib/kubelet").exists()

    # a crash: the kubelet and containerd die, the pods' processes and shims live on
    assert kube_node.kubelet is not None
    assert kube_node.containerd is not None
    kube_node.kubelet.kill()
    kube_node.containerd.kill()
    kube_node.stop()

    assert _processes_naming(run_dir, api.state_dir) == []
    assert not run_dir.exists()
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines()
                if f" {run_dir}" in line]  # fmt: skip
    assert not _link_exists(POD_BRIDGE)
    assert not _link_exists(NODE_LINK)
    assert not [veth for veth in veths if _link_exists(veth)]
    assert not list(CGROUP_FS.glob(f"*/{run_dir.name}"))
    assert not list(Path("/var/lib/cni/results").glob(f"{run_dir.name}-*"))
    if not kubelet_existed:
        assert not Path("/var/lib/kubelet").exists()

    # the next run starts cleanly beside what the first left (nothing), for later tests
    kube_node.start()
    assert kube_node.run_dir != run_dir


OWNER = """
import sys, time
from pathlib import Path
from devbed.cluster import KubeNode
node = KubeNode(Path(sys.argv[1])).start()
print(node.run_dir, flush=True)
time.sleep(600)
"""


def test_a_cluster_whose_owner_was_killed_is_removed_by_the_next_start(
    kube_node: KubeNode, tmp_path: Path
) -> None:
    """A test run killed outright leaves its cluster running; the next start() ends it."""
    kube_node.stop()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().strip()  # bounded: start() gives up after 180 s
        assert "openslb-node." in line, f"the owner's cluster did not start: {line!r}"
        dead_run = Path(line)
    finally:
        owner.kill()
        owner.wait()
    assert _processes_naming(dead_run), "the killed owner's cluster should still run"
    try:
        kube_node.start()
    except BaseException:
        remove_run(dead_run)  # leave nothing for the next session
        raise
    assert _processes_naming(dead_run, tmp_path) == []
    assert not dead_run.exists()
    assert not list(CGROUP_FS.glob(f"*/{dead_run.name}"))
