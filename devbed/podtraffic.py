"""gRPC traffic through a VIP while Kubernetes changes the pods behind it, and when each
pod turned Ready: what the cluster tests and `bench/cluster.py` measure.

- `EchoLoad`: client threads, each on its own connection, calling echo-basic's Echo
  (devbed.grpcecho) through Envoy in a loop bounded in calls and in seconds; it records the
  failed calls with their status, the calls each pod answered and when each pod first did.
- `PodWatch`: watches on the pods of one app and its Service's EndpointSlices, noting the
  monotonic time each pod's Ready condition turned True as the event arrives
  (lastTransitionTime only has seconds) and when its address turned ready in a slice.
- `EnvoyHosts`: when each host appeared in, was first sent a request by, and left an Envoy
  cluster.
- What the tests do to a `demo.DeploymentApp` of echo-basic: scale it, kill a pod or crash
  its server, wait until it is down to its replicas, remove it.

Times are `time.monotonic()` in this process, so a pod's first answer and its Ready compare.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from cmi.build import short_name
from cmi.k8s.client import GoneError, KubeClient, KubeError, Watch
from devbed import demo, grpcecho
from devbed.demo import DeploymentApp
from devbed.envoy import EnvoyProxy
from devbed.l7harness import channel, cluster_hosts
from devbed.platform import DevPlatform
from devbed.process import wait_until

NAMESPACE = demo.NAMESPACE
MAX_FAILURES_KEPT = 1000


# -- load ---------------------------------------------------------------------------------


@dataclass
class Failure:
    at: float  # monotonic
    code: str
    details: str


@dataclass
class TrafficResult:
    ok: int = 0
    failed: int = 0
    by_pod: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_answer: dict[str, float] = field(default_factory=dict)
    last_answer: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    """The first MAX_FAILURES_KEPT failed calls, in order."""
    seconds: float = 0.0

    def failed_since(self, moment: float) -> int:
        return sum(1 for f in self.failures if f.at >= moment)


class EchoLoad:
    """`clients` threads calling Echo through `target` back to back until the block ends,
    or after `max_calls` calls in all or `max_seconds`, whichever comes first (`cut_short`).

        with EchoLoad(target) as load:
            ...  # change the pods
        load.result
    """

    def __init__(
        self,
        target: str,
        *,
        clients: int = 8,
        max_calls: int = 1_000_000,
        max_seconds: float = 300.0,
        call_timeout: float = 5.0,
    ) -> None:
        self.target, self.clients = target, clients
        self.max_calls, self.max_seconds, self.call_timeout = max_calls, max_seconds, call_timeout
        self.result = TrafficResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._calls = 0
        self._started = 0.0
        self.cut_short = False
        """Whether a bound (calls or seconds) ended the load before the block did."""

    def __enter__(self) -> EchoLoad:
        self._started = time.monotonic()
        ready = threading.Barrier(self.clients + 1)
        self._threads = [
            threading.Thread(target=self._client, args=(ready,), name=f"echo-load-{i}",
                             daemon=True)
            for i in range(self.clients)
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()
        ready.wait(30)  # every connection is up before the block changes anything
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.call_timeout + 5)
        self.result.seconds = time.monotonic() - self._started

    def wait_answered(self, pods: set[str], timeout: float = 30.0) -> float:
        """Wait until each of `pods` has answered a call; the seconds it took."""

        def answered() -> bool:
            with self._lock:
                return set(self.result.first_answer) >= pods

        return wait_until(answered, timeout, f"answers from all {len(pods)} pods", interval=0.05)

    def _take_call(self) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            if self._calls >= self.max_calls or time.monotonic() - self._started > self.max_seconds:
                self.cut_short = True
                return False
            self._calls += 1
            return True

    def _client(self, ready: threading.Barrier) -> None:
        with channel(self.target) as chan:
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(chan).result(timeout=10)
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.wait(30)
            while self._take_call():
                try:
                    pod = grpcecho.echo_who(chan, timeout=self.call_timeout)
                except grpc.RpcError as exc:
                    self._failed(exc)
                else:
                    self._answered(pod)

    def _answered(self, pod: str) -> None:
        now = time.monotonic()
        result = self.result
        with self._lock:
            result.ok += 1
            result.by_pod[pod] += 1
            result.first_answer.setdefault(pod, now)
            result.last_answer[pod] = now

    def _failed(self, exc: grpc.RpcError) -> None:
        now = time.monotonic()
        code = exc.code().name
        details = exc.details() or ""
        result = self.result
        with self._lock:
            result.failed += 1
            result.errors[f"{code}: {details}"] += 1
            if len(result.failures) < MAX_FAILURES_KEPT:
                result.failures.append(Failure(now, code, details))


# -- pods ---------------------------------------------------------------------------------


class _Follow:
    """A thread listing then watching `path` (relisting when the watch ends or fails),
    handing each object labelled `label` (key, value) to `seen` as its event arrives, with
    the event's type and whether it came from the first listing."""

    def __init__(
        self,
        kube: KubeClient,
        path: str,
        label: tuple[str, str],
        seen: Callable[[dict[str, Any], str, bool], None],
    ) -> None:
        self.kube, self.path, self.label, self.seen = kube, path, label, seen
        self.listed = threading.Event()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow {path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(10)

    def _run(self) -> None:
        key, value = self.label
        while not self._stop.is_set():
            try:
                listed = self.kube.get(self.path, labelSelector=f"{key}={value}")
                for obj in listed.get("items") or []:
                    self.seen(obj, "ADDED", not self.listed.is_set())
                self.listed.set()
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    self._watch = self.kube.watch(self.path, version, timeout_s=60)
                    for event in self._watch:  # every object of the namespace: filtered here
                        obj = event.get("object") or {}
                        metadata = obj.get("metadata") or {}
                        version = metadata.get("resourceVersion", version)
                        if (metadata.get("labels") or {}).get(key) == value:
                            self.seen(obj, event.get("type", ""), False)
            except (GoneError, KubeError, OSError):
                self._stop.wait(0.2)  # relist: a few events' times may come late


class PodWatch:
    """The pods of app `app` as they change: when each turned Ready (a watch event, not the
    second-granular lastTransitionTime), when its address turned ready in the Service's
    EndpointSlices, its IP, when it was deleted. Pods Ready already when the watch starts
    are in `ready_before`, not in `ready_at`."""

    def __init__(self, kube: KubeClient, app: str, namespace: str = NAMESPACE) -> None:
        self.kube, self.app, self.namespace = kube, app, namespace
        self.ready_at: dict[str, float] = {}
        self.ready_before: set[str] = set()
        self.ips: dict[str, str] = {}
        self.in_slice_at: dict[str, float] = {}  # by IP
        self.deleted_at: dict[str, float] = {}
        self._follows: list[_Follow] = []

    def __enter__(self) -> PodWatch:
        base = f"/api/v1/namespaces/{self.namespace}"
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        self._follows = [
            _Follow(self.kube, f"{base}/pods", ("app", self.app), self._pod),
            _Follow(self.kube, slices, ("kubernetes.io/service-name", self.app), self._slice),
        ]
        for follow in self._follows:
            if not follow.listed.wait(30):
                raise TimeoutError(f"{follow.path}: not listed after 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        for follow in self._follows:
            follow.stop()

    def _pod(self, pod: dict[str, Any], event: str, initial: bool) -> None:
        now = time.monotonic()
        name = pod["metadata"]["name"]
        if event == "DELETED":
            self.deleted_at.setdefault(name, now)
            return
        status = pod.get("status") or {}
        if status.get("podIP"):
            self.ips[name] = status["podIP"]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])  # fmt: skip
        if not ready or name in self.ready_at or name in self.ready_before:
            return
        if initial:
            self.ready_before.add(name)
        else:
            self.ready_at[name] = now

    def _slice(self, slice_: dict[str, Any], event: str, initial: bool) -> None:
        now = time.monotonic()
        if event == "DELETED" or initial:
            return
        for endpoint in slice_.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                for address in endpoint.get("addresses") or []:
                    self.in_slice_at.setdefault(address, now)


class EnvoyHosts:
    """When each host first appeared in, was first sent a request by, and left an Envoy
    cluster: /clusters polled (its per-host `rq_total` counts requests Envoy sent)."""

    def __init__(self, envoy: EnvoyProxy, cluster: str, interval: float = 0.02) -> None:
        self.envoy, self.cluster, self.interval = envoy, cluster, interval
        self.before: set[str] = set()
        self.added_at: dict[str, float] = {}
        self.first_request_at: dict[str, float] = {}  # hosts added while polled only
        self.removed_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="envoy-hosts", daemon=True)

    def __enter__(self) -> EnvoyHosts:
        self.before = envoy_hosts(self.envoy, self.cluster)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        last = set(self.before)
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                stats = cluster_hosts(self.envoy, self.cluster)
                now = time.monotonic()
                now_hosts = set(stats)
                for host in now_hosts - last:
                    self.added_at.setdefault(host, now)
                for host in now_hosts - self.before:
                    if int(stats[host].get("rq_total", "0")) > 0:
                        self.first_request_at.setdefault(host, now)
                for host in last - now_hosts:
                    self.removed_at.setdefault(host, now)
                last = now_hosts


def ready_to_traffic_ms(watch: PodWatch, traffic: TrafficResult) -> dict[str, float]:
    """For each pod that turned Ready under the watch and then answered: Ready -> first answer."""
    return {
        pod: (traffic.first_answer[pod] - ready) * 1000
        for pod, ready in watch.ready_at.items()
        if pod in traffic.first_answer
    }


# -- the app ------------------------------------------------------------------------------
# A demo.DeploymentApp of kind "grpc" (echo-basic), and what the tests do to it.


def listener(app: DeploymentApp) -> str:
    """The Envoy cluster of the app's Service port (cmi names its listener so)."""
    return short_name(NAMESPACE, app.name, app.kind)


def scale(kube: KubeClient, app: DeploymentApp, replicas: int) -> DeploymentApp:
    kube.request("PATCH", f"{_deployment(app)}/scale", body={"spec": {"replicas": replicas}},
                 content_type="application/merge-patch+json")  # fmt: skip
    return replace(app, replicas=replicas)


def pods(kube: KubeClient, app: DeploymentApp, *, terminating: bool = False) -> dict[str, str]:
    """Pod name -> IP of the app's pods; those being deleted too with `terminating`."""
    listed = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"app={app.name}")
    return {
        pod["metadata"]["name"]: (pod.get("status") or {}).get("podIP", "")
        for pod in listed.get("items") or []
        if terminating or not pod["metadata"].get("deletionTimestamp")
    }


def wait_settled(kube: KubeClient, app: DeploymentApp, timeout: float = 180.0) -> set[str]:
    """Rolled out and every other pod gone, terminating ones too: the app's pods."""
    demo.wait_rolled_out(kube, app, timeout)
    wait_until(lambda: len(pods(kube, app, terminating=True)) == app.replicas, timeout,
               f"{NAMESPACE}/{app.name} down to {app.replicas} pods", interval=0.2)  # fmt: skip
    return set(pods(kube, app))


def force_delete_pod(kube: KubeClient, pod: str) -> None:
    """`kubectl delete pod --grace-period=0 --force`: gone from the API at once."""
    kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}",
                 body={"kind": "DeleteOptions", "apiVersion": "v1",
                       "gracePeriodSeconds": 0})  # fmt: skip


def crash(pod: str) -> None:
    """SIGKILL the pod's server from the host, as a crash would: the pod stays, the kubelet
    restarts its container. The server is the process whose environment names the pod."""
    marker = f"POD_NAME={pod}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
    if not pids:
        raise LookupError(f"no process of pod {pod} on this host")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(kube: KubeClient, app: DeploymentApp, timeout: float = 60.0) -> None:
    """Delete the Service, the Deployment and its pods (at once), and wait until they are gone."""
    for path in (f"/api/v1/namespaces/{NAMESPACE}/services/{app.name}", _deployment(app)):
        with contextlib.suppress(KubeError):
            kube.request("DELETE", path, body={"propagationPolicy": "Background"})

    def gone() -> bool:  # until the garbage collector takes the ReplicaSet, it makes more
        if not pods(kube, app, terminating=True):
            return True
        with contextlib.suppress(KubeError):
            kube.request(
                "DELETE",
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                query={"labelSelector": f"app={app.name}", "gracePeriodSeconds": 0},
            )
        return False

    wait_until(gone, timeout, f"pods of {NAMESPACE}/{app.name} gone", interval=0.5)


def _deployment(app: DeploymentApp) -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{app.name}"


@contextlib.contextmanager
def deployed(
    kube: KubeClient,
    app: DeploymentApp,
    timeout: float = 180.0,
    who: Callable[[str, int], list[str]] | None = None,
) -> Iterator[str]:
    """The app applied, rolled out and answered by each of its pods through its VIP: yields
    VIP:port, and removes it all afterwards so the next test starts clean. `who(target, n)`:
    the pods that answered n calls (default: the gRPC Echo's, from here)."""
    ask = who or (lambda target, calls: grpcecho.who(target, calls, timeout=2))
    demo.apply(kube, [app])
    try:
        running = wait_settled(kube, app, timeout)
        exposed = demo.wait_programmed(kube, app.name, timeout)
        target = f"{exposed.vip}:{app.port}"

        def answered() -> bool:
            try:
                return set(ask(target, 6 * len(running))) == running
            except grpc.RpcError:
                return False

        wait_until(answered, 60, f"{target} answered by {sorted(running)}", interval=0.2)
        yield target
    finally:
        remove(kube, app)


def platform_envoy(platform: DevPlatform) -> EnvoyProxy:
    """A handle on the admin API of the platform's Envoy (the process is the platform's)."""
    return EnvoyProxy(platform.state_dir / "envoy", {}, admin_port=platform.ports()["envoy_admin"])


def envoy_hosts(envoy: EnvoyProxy, cluster: str) -> set[str]:
    """The hosts (address:port) Envoy has in `cluster` now."""
    return set(cluster_hosts(envoy, cluster))
