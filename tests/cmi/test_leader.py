"""Two `slb cmi` processes: one writes; when it dies, the other takes over within the lease."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import requests

from cmi.k8s.client import KubeClient, KubeError
from cmi.k8s.lease import LeaderElector
from devbed.kube import KubeAPI
from devbed.process import Process, free_port, wait_until
from devbed.redis import RedisServer
from slb.model import LoadBalancer, Owner, OwnerKind
from slb.storage.store import Fence, Store
from tests.cmi.conftest import POOL, service_body

LEASE_S = 3


def test_leader_failover_between_processes(
    redis_server: RedisServer,
    store: Store,
    admin: KubeClient,
    cmi_kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    lease = f"cmi-{uuid.uuid4().hex[:6]}"
    env = {
        **cmi_env(redis_server, store, cmi_kubeconfig, namespace, lease),
        "OPENSLB_CMI_LEASE_DURATION_S": str(LEASE_S),
        "OPENSLB_CMI_RENEW_DEADLINE_S": "2",
        "OPENSLB_CMI_RETRY_PERIOD_S": "1",
        "OPENSLB_CMI_HOLDOFF_MS": "20",
    }
    probes = {"a": f"http://127.0.0.1:{free_port()}", "b": f"http://127.0.0.1:{free_port()}"}
    processes = {
        who: Process(f"cmi-{who}", [sys.executable, "-m", "slb.cli", "cmi"], tmp_path,
                     env={**env, "OPENSLB_CMI_IDENTITY": who,
                          "OPENSLB_CMI_HEALTH_BIND": probes[who].removeprefix("http://")}).start()
        for who in ("a", "b")
    }  # fmt: skip
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/openslb-system/leases/{lease}"

    def holder() -> str:
        return _holder(admin, lease_path)

    try:
        wait_until(lambda: holder() in ("a", "b"), 30, "a leader")
        leader = holder()
        other = "b" if leader == "a" else "a"
        expose(admin, namespace, "first")
        wait_until(lambda: _exposed(store, namespace, "first"), 30, "exposed by the leader")

        # Both are alive; the metrics say which one leads and what it did.
        for probe in probes.values():
            wait_until(partial(_answers, f"{probe}/healthz"), 30, f"{probe}/healthz")
        assert _get(f"{probes[leader]}/healthz") == (200, "leading\n")
        assert _get(f"{probes[other]}/healthz") == (200, "standing by (another cmi leads)\n")
        metrics = _metrics(probes[leader])
        assert metrics["openslb_cmi_leader"] == 1
        assert metrics["openslb_cmi_store_writes_total"] >= 1
        assert metrics["openslb_cmi_reconciles_total"] >= 1
        assert metrics["openslb_cmi_revision"] == store.revision()
        assert _metrics(probes[other])["openslb_cmi_leader"] == 0
        assert "openslb_cmi_reconciles_total" not in _metrics(probes[other])
        assert _get(f"{probes[other]}/nothing")[0] == 404

        processes[leader].kill()
        killed = time.monotonic()
        wait_until(lambda: holder() == other, 3 * LEASE_S, "the other takes over")
        takeover = time.monotonic() - killed
        expose(admin, namespace, "second")
        wait_until(lambda: _exposed(store, namespace, "second"), 30, "exposed by the new leader")

        writers = [c.meta.get("who") for c in store.changes(0)]
        switch = writers.index(other)
        assert set(writers[:switch]) == {leader}, writers
        assert set(writers[switch:]) == {other}, writers  # never both
        assert takeover <= LEASE_S + 2, f"took over after {takeover:.1f} s"
        assert int(store.redis.get(store.key("fence", "cmi")) or 0) >= 1
        assert _metrics(probes[other])["openslb_cmi_leader"] == 1
    finally:
        for process in processes.values():
            process.stop()
    print(f"takeover {takeover:.2f} s", file=sys.stderr)


def _get(url: str) -> tuple[int, str]:
    response = requests.get(url, timeout=5)
    return response.status_code, response.text


def _answers(url: str) -> bool:
    return _get(url)[0] == 200


def _metrics(probe: str) -> dict[str, float]:
    status, text = _get(f"{probe}/metrics")
    assert status == 200
    samples = (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, _, value in samples}


def cmi_env(
    redis_server: RedisServer, store: Store, kubeconfig: Path, namespace: str, lease: str
) -> dict[str, str]:
    """The settings of an `slb cmi` process on this test's Redis, namespace and Lease."""
    return {
        "OPENSLB_CONFIG": "",
        "OPENSLB_REDIS_URL": redis_server.url,
        "OPENSLB_REDIS_PREFIX": store.prefix,
        "OPENSLB_KUBE_KUBECONFIG": str(kubeconfig),
        "OPENSLB_CMI_NAMESPACE": namespace,
        "OPENSLB_CMI_POOL_CIDRS": POOL,
        "OPENSLB_CMI_ENDPOINT_SLICES_FROM": "*",
        "OPENSLB_CMI_LEASE_NAME": lease,
    }


def expose(admin: KubeClient, namespace: str, name: str) -> None:
    body = service_body(name, labels={"openslb.io/expose": "true"})
    admin.request("POST", f"/api/v1/namespaces/{namespace}/services", body=body)


def _holder(admin: KubeClient, lease_path: str) -> str:
    try:
        return str(admin.get(lease_path)["spec"].get("holderIdentity") or "")
    except KubeError:
        return ""


def _exposed(store: Store, namespace: str, name: str) -> bool:
    return store.redis.hexists(store.key("doc", "Service"), f"{namespace}/{name}") == 1


def test_a_leader_whose_controller_dies_gives_up_the_lease_and_exits(
    redis_server: RedisServer,
    store: Store,
    admin: KubeClient,
    cmi_kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A newer leader's fencing token in the store (as after a partition) makes the
    controller's next write fail: the process must not sit on the Lease serving nothing."""
    lease = f"cmi-{uuid.uuid4().hex[:6]}"
    env = {
        **cmi_env(redis_server, store, cmi_kubeconfig, namespace, lease),
        "OPENSLB_CMI_IDENTITY": "fenced",
    }
    process = Process("cmi-fenced", [sys.executable, "-m", "slb.cli", "cmi"], tmp_path,
                      env=env).start()  # fmt: skip
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/openslb-system/leases/{lease}"
    try:
        wait_until(lambda: _holder(admin, lease_path) == "fenced", 30, "it leads")
        store.redis.set(store.key("fence", "cmi"), 1_000_000)
        expose(admin, namespace, "first")
        wait_until(lambda: not process.alive(), 30, "the fenced leader exits")
        assert process.popen is not None
        assert process.popen.returncode == 1
        assert _holder(admin, lease_path) == ""
        log = process.log_path.read_text()
        assert "controller died; releasing the lease and exiting" in log
        assert "FencedError" in log
        assert not _exposed(store, namespace, "first")
    finally:
        process.stop()


def test_a_lease_made_again_does_not_fence_its_leaders_out(
    admin: KubeClient, store: Store, cmi_kubeconfig: Path
) -> None:
    """The Lease deleted and created again starts its transitions at 0: its leaders' tokens
    were older than the store's, and every write was fenced for as many restarts (#14).
    A new holder's token now starts above the store's newest."""
    assert cmi_kubeconfig.exists()  # (its fixture made namespace openslb-system)
    name = f"cmi-{uuid.uuid4().hex[:6]}"
    path = f"/apis/coordination.k8s.io/v1/namespaces/openslb-system/leases/{name}"

    def lead(identity: str) -> int:
        epochs: list[int] = []
        elector = LeaderElector(
            admin, "openslb-system", name, identity,
            lease_duration_s=3, renew_deadline_s=2, retry_period_s=0.2,
            on_started=epochs.append, on_stopped=lambda: None,
            floor=lambda: store.fence_token("cmi"),
        )  # fmt: skip
        runner = threading.Thread(target=elector.run, daemon=True)
        runner.start()
        wait_until(lambda: bool(epochs), 20, f"{identity} leads")
        elector.stop()
        runner.join(10)
        return epochs[0]

    store.put(balancer_for_fence("a"), fence=Fence("cmi", 7))  # leaders wrote up to token 7
    first = lead("one")
    assert first == 8
    store.put(balancer_for_fence("b"), fence=Fence("cmi", first))
    admin.request("DELETE", path)  # someone deletes the Lease; cmi makes it again
    second = lead("two")
    assert second == 9
    store.put(balancer_for_fence("c"), fence=Fence("cmi", second))  # not fenced out


def balancer_for_fence(name: str) -> LoadBalancer:
    return LoadBalancer(name=name, vip="198.18.0.9", owner=Owner(kind=OwnerKind.OPERATOR, name="o"))


def test_an_api_server_gone_neither_kills_nor_strands_cmi(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    """An API server that refuses connections (stopped, not slow): the leader steps down at
    its renew deadline and campaigns on, and a SIGTERM then ends the process. The refusal
    once escaped the campaign as urllib3's error, and the leader's threads, left running
    without the Lease, kept the process alive for good."""
    kube = KubeAPI(tmp_path / "kube").start()
    lease = f"cmi-{uuid.uuid4().hex[:6]}"
    env = {
        **cmi_env(redis_server, store, kube.cmi_kubeconfig(), "default", lease),
        "OPENSLB_CMI_IDENTITY": "alone",
        "OPENSLB_CMI_LEASE_DURATION_S": "3",
        "OPENSLB_CMI_RENEW_DEADLINE_S": "2",
        "OPENSLB_CMI_RETRY_PERIOD_S": "1",
    }
    process = Process("cmi-alone", [sys.executable, "-m", "slb.cli", "cmi"], tmp_path, env=env)
    admin = KubeClient.from_kubeconfig(str(kube.kubeconfig))
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/openslb-system/leases/{lease}"
    try:
        process.start()
        wait_until(lambda: _holder(admin, lease_path) == "alone", 30, "it leads")
        assert kube.apiserver is not None
        kube.apiserver.stop()
        wait_until(lambda: "alone no longer leads" in process.log_path.read_text(), 20,
                   "the step-down at the renew deadline")  # fmt: skip
        time.sleep(1.5)  # campaigning against the refusals
        assert process.alive(), process.log_tail()
        assert "Traceback" not in process.log_path.read_text()
        process.stop(timeout=15)
        assert process.popen is not None
        assert process.popen.returncode == 0, process.log_tail()
    finally:
        process.kill()
        kube.stop()
