"""Pods under an L7 VIP on the real one-node cluster: from a new pod's Ready to its first
request through Envoy, calls lost in rolling updates, and the cluster's cold start.

- `cluster_up_s`: `KubeNode.start()` (binaries built and cached, images imported on each
  start) until the Node is Ready and pods can be created; then `stop()`. Repeated.
- Then the platform as `slb dev up` runs it, without the lab VM (no L4 here), and one
  echo-basic Deployment (demo.DeploymentApp, gRPC) behind a labelled Service, with
  `EchoLoad` calling its VIP throughout (8 client threads, a connection each).
- `pod_ready_to_traffic_*`: rounds of scaling 3 -> 30 -> 3; for each new pod, from its Ready
  condition turning True (a watch event) to Envoy's first request to it (the host's
  `rq_total` above 0 in the admin /clusters, polled every 20 ms: up to a poll late). Each
  is split where the pod's address turns ready in the Service's EndpointSlice (watched) and
  where Envoy has the host (the same poll): Kubernetes, then openslb (cmi, Redis, slb xds,
  EDS), then Envoy (its first health check, then the load's next call picking the host).
  `pod_ready_to_answer_p99_ms`: to the first answer back at the load's client, which adds
  the pod's reply and the Python client's own delays on the busy machine.
- `rolling_update_failed_calls`: the calls that failed over rolling updates (a new VERSION
  in the pod template; maxSurge 1, maxUnavailable 0, preStop sleep 5 s), in all.

    .venv/bin/python -m bench.cluster [--cold-starts 3] [--rounds 3] [--updates 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from bench import results_file
from devbed import demo, grpcecho, podtraffic
from devbed.cluster import KubeNode
from devbed.demo import DeploymentApp
from devbed.envoy import EnvoyProxy
from devbed.platform import SAMPLE_PORT, DevPlatform
from devbed.podtraffic import EchoLoad, EnvoyHosts, PodWatch
from devbed.process import StartError

VIP_CIDR, SAMPLE_CIDR = "198.18.64.0/24", "198.18.65.0/24"
CLIENTS = 8
T = TypeVar("T")
BUSY_WAIT_S = 600.0
"""How long to wait for another one-node cluster on the machine (only one runs) to end."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def when_free(start: Callable[[], T], undo: Callable[[], None] = lambda: None) -> T:
    """`start()`, again every 10 s while another one-node cluster runs (only one can)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return start()
        except StartError as exc:
            undo()
            if "only one runs at a time" not in str(exc) or time.monotonic() > deadline:
                raise
            log("  another one-node cluster runs on this machine: waiting for it to end")
            time.sleep(10)


def start_node(state_dir: Path) -> float:
    """Start a KubeNode and stop it: the seconds the start that succeeded took."""
    node = KubeNode(state_dir)

    def timed_start() -> float:
        began = time.monotonic()
        node.start()
        return time.monotonic() - began

    took = when_free(timed_start)
    node.stop()
    return took


def cold_starts(directory: Path, count: int) -> list[float]:
    seconds = []
    for i in range(count):
        took = start_node(directory / f"node-{i}")
        seconds.append(took)
        log(f"  cold start {i + 1}/{count}: {took:.1f} s")
    return seconds


@dataclass
class Splits:
    """Per new pod, in ms: Ready -> Envoy's first request to it, its three parts, and Ready
    -> the first answer back at the load's client."""

    total: list[float] = field(default_factory=list)
    to_slice: list[float] = field(default_factory=list)
    slice_to_envoy: list[float] = field(default_factory=list)
    envoy_to_request: list[float] = field(default_factory=list)
    to_answer: list[float] = field(default_factory=list)
    missed: int = 0  # new pods never sent a request, or never answering

    def add(self, watch: PodWatch, hosts: EnvoyHosts, load: podtraffic.TrafficResult) -> None:
        for pod, ready in watch.ready_at.items():
            ip = watch.ips.get(pod, "")
            host = f"{ip}:{grpcecho.PORT}"
            requested, answered = hosts.first_request_at.get(host), load.first_answer.get(pod)
            if requested is None or answered is None:
                self.missed += 1
                continue
            self.total.append((requested - ready) * 1000)
            self.to_answer.append((answered - ready) * 1000)
            in_slice, in_envoy = watch.in_slice_at.get(ip), hosts.added_at.get(host)
            if in_slice is not None and in_envoy is not None:
                self.to_slice.append((in_slice - ready) * 1000)
                self.slice_to_envoy.append((in_envoy - in_slice) * 1000)
                self.envoy_to_request.append((requested - in_envoy) * 1000)

    def summary(self) -> dict[str, dict[str, float]]:
        parts = {
            "ready_to_first_request": self.total,
            "ready_to_slice": self.to_slice,
            "slice_to_envoy": self.slice_to_envoy,
            "envoy_to_first_request": self.envoy_to_request,
            "ready_to_first_answer_at_client": self.to_answer,
        }
        return {
            name: {"p50": round(results_file.median(values), 1),
                   "p99": round(results_file.percentile(values, 99), 1),
                   "max": round(max(values), 1)}
            for name, values in parts.items() if values
        }  # fmt: skip


def scale_rounds(
    platform: DevPlatform, envoy: EnvoyProxy, app: DeploymentApp, target: str, rounds: int
) -> tuple[Splits, int]:
    """Rounds of 3 -> 30 -> 3 under load: the splits of every new pod, and the failed calls."""
    kube = platform.kube()
    splits, failed = Splits(), 0
    for i in range(rounds):
        with (
            PodWatch(kube, app.name) as watch,
            EnvoyHosts(envoy, podtraffic.listener(app)) as hosts,
            EchoLoad(target, clients=CLIENTS) as load,
        ):
            up = podtraffic.wait_settled(kube, podtraffic.scale(kube, app, 30))
            load.wait_answered(up)
            podtraffic.wait_settled(kube, podtraffic.scale(kube, app, app.replicas))
        splits.add(watch, hosts, load.result)
        failed += load.result.failed
        log(f"  round {i + 1}/{rounds}: {len(watch.ready_at)} new pods, {load.result.ok} calls, "
            f"{load.result.failed} failed; Ready -> first request so far: p50 "
            f"{results_file.median(splits.total or [0]):.0f} ms, "
            f"max {max(splits.total or [0]):.0f} ms")  # fmt: skip
    return splits, failed


def rolling_updates(
    platform: DevPlatform, app: DeploymentApp, target: str, count: int
) -> tuple[list[int], int]:
    """`count` rolling updates under load: the failed calls of each, the calls in all."""
    kube = platform.kube()
    failed, calls = [], 0
    for i in range(count):
        with PodWatch(kube, app.name), EchoLoad(target, clients=CLIENTS) as load:
            demo.apply(kube, [replace(app, version=f"v{i + 2}")])
            podtraffic.wait_settled(kube, app)
            time.sleep(1.0)
        failed.append(load.result.failed)
        calls += load.result.ok + load.result.failed
        log(f"  update {i + 1}/{count}: {load.result.ok} calls in {load.result.seconds:.1f} s, "
            f"{load.result.failed} failed {dict(load.result.errors)}")  # fmt: skip
    return failed, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openslb-bench-") as tmp:
        log(f"cold start of the one-node cluster, {args.cold_starts} times")
        up_s = cold_starts(Path(tmp), args.cold_starts)
        platform = DevPlatform(
            Path(tmp) / "platform", vip_cidr=VIP_CIDR, sample_cidr=SAMPLE_CIDR, lab=False
        )
        try:
            log("bringing the platform up (on the cluster, without the lab VM)")
            when_free(lambda: platform.up(lambda m: log(f"  {m}")),
                      lambda: platform.down(lambda m: None))  # fmt: skip
            envoy = podtraffic.platform_envoy(platform)
            app = DeploymentApp("bench", "grpc", SAMPLE_PORT)
            with podtraffic.deployed(platform.kube(), app) as target:
                log(f"3 -> 30 -> 3 under load, {args.rounds} rounds, through {target}")
                splits, scale_failed = scale_rounds(platform, envoy, app, target, args.rounds)
                log(f"rolling updates under load, {args.updates}")
                update_failed, update_calls = rolling_updates(platform, app, target, args.updates)
        finally:
            platform.down(lambda m: None)
    metrics = {
        "pod_ready_to_traffic_p50_ms": {
            "value": round(results_file.median(splits.total), 1), "unit": "ms", "target": None},
        "pod_ready_to_traffic_p99_ms": {
            "value": round(results_file.percentile(splits.total, 99), 1), "unit": "ms",
            "target": 500.0},
        "pod_ready_to_answer_p99_ms": {
            "value": round(results_file.percentile(splits.to_answer, 99), 1), "unit": "ms",
            "target": None},
        "rolling_update_failed_calls": {
            "value": sum(update_failed), "unit": "calls", "target": 0},
        "cluster_up_s": {"value": round(results_file.median(up_s), 1), "unit": "s",
                         "target": None},
    }  # fmt: skip
    for name, metric in metrics.items():
        log(f"{name}: {metric['value']} {metric['unit']} (target {metric['target']})")
    path = results_file.write(
        "cluster",
        metrics,
        setup={
            "clients": CLIENTS,
            "rounds": args.rounds,
            "new_pods": len(splits.total),
            "new_pods_missed": splits.missed,
            "scale_failed_calls": scale_failed,
            "ready_split_ms": splits.summary(),
            "ready_to_traffic_ms": [round(v, 1) for v in splits.total],
            "rolling_updates": args.updates,
            "rolling_update_calls": update_calls,
            "rolling_update_failed_each": update_failed,
            "cluster_up_s": [round(v, 1) for v in up_s],
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
