"""cmi at scale: 1,000 labelled Services x 10 endpoints in a real kube-apiserver.

Measures (1) a cold `slb cmi` process's time from start to the complete desired state in
Redis, (2) over 60 single changes (one endpoint added to one Service), the time from the
API write to the Redis revision that holds it, hold-off included, and (3) cmi's memory.

    .venv/bin/python -m bench.cmi [--services 1000] [--changes 60]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import results_file
from bench.procstat import rss_kib
from bench.results_file import metric
from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI
from devbed.process import Process, wait_until
from devbed.redis import RedisServer
from slb.config import CmiSettings
from slb.storage.store import Store

NAMESPACE = "bench"
POOL = "198.18.0.0/18"
"""VIPs for up to 16,384 Services; the pods' addresses follow it."""
PODS = ipaddress.IPv4Address("198.18.64.1")


def service(index: int) -> dict[str, Any]:
    labels = {"openslb.io/expose": "true", "app": f"a{index % 50}"}
    return {
        "metadata": {"name": f"svc-{index}", "labels": labels},
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": False,
            "ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}],
        },
    }


def endpoint_address(index: int, endpoint: int) -> str:
    """A distinct pod address for every endpoint, from 198.18.64.1 on (10,000 Services of
    10 end at 198.19.198.160, inside 198.18.0.0/15)."""
    return str(PODS + index * 10 + endpoint)


def endpoint_slice(index: int, count: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{index}-1",
            "labels": {"kubernetes.io/service-name": f"svc-{index}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [endpoint_address(index, e)], "conditions": {"ready": True}}
            for e in range(count)
        ],
    }


def populate(admin: KubeClient, services: int) -> None:
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}})
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"

    def one(i: int) -> None:
        admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", body=service(i))
        admin.request("POST", slices, body=endpoint_slice(i, 10))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(services)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cmi-"))
    redis_server = RedisServer(work / "redis").start()
    kube = KubeAPI(work / "kube").start()
    cmi: Process | None = None
    try:
        kubeconfig = kube.cmi_kubeconfig()
        admin = KubeClient.from_kubeconfig(str(kube.kubeconfig))
        began = time.monotonic()
        populate(admin, args.services)
        took = time.monotonic() - began
        print(f"created {args.services} Services x 10 endpoints in {took:.1f} s", file=sys.stderr)
        store = Store(redis_server.client(), prefix="bench")
        env = {
            "OPENSLB_CONFIG": "",
            "OPENSLB_REDIS_URL": redis_server.url,
            "OPENSLB_REDIS_PREFIX": "bench",
            "OPENSLB_KUBE_KUBECONFIG": str(kubeconfig),
            "OPENSLB_CMI_POOL_CIDRS": POOL,
            "OPENSLB_CMI_ENDPOINT_SLICES_FROM": "*",
            "OPENSLB_CMI_INSTANCES_PER_NAMESPACE": "0",  # 1,000 Services in one namespace
            "OPENSLB_CMI_LISTENERS_PER_NAMESPACE": "0",
            "OPENSLB_CMI_IDENTITY": "bench",
        }
        cmi = Process(
            "cmi", [sys.executable, "-m", "slb.cli", "cmi", "--log-level", "WARNING"], work, env=env
        )
        started = time.monotonic()
        cmi.start()
        docs = store.key("doc", "Service")

        def complete() -> bool:
            cmi.check_alive()
            return bool(int(store.redis.hlen(docs)) == args.services)

        patience = 300 * max(1, args.services // 1000)  # API writes grow with the Services
        full_sync_s = wait_until(complete, patience, "complete desired state", interval=0.01)
        full_sync_s = time.monotonic() - started
        print(f"cold full sync: {full_sync_s:.2f} s", file=sys.stderr)

        def written_back() -> bool:
            listed = admin.get(f"/api/v1/namespaces/{NAMESPACE}/services")["items"]
            with_vip = [
                s for s in listed if (s.get("status", {}).get("loadBalancer") or {}).get("ingress")
            ]
            return bool(len(with_vip) == args.services)

        status_s = wait_until(written_back, patience, "status on every Service", interval=0.5)
        status_s = time.monotonic() - started
        print(f"status written back to all Services after {status_s:.1f} s", file=sys.stderr)
        time.sleep(2)

        latencies = measure_changes(admin, store, args.changes, args.services)
        rss, peak = (kib / 1024 for kib in rss_kib(cmi.pid))
        cmi.stop()
        p50 = results_file.percentile(latencies, 50)
        p99 = results_file.percentile(latencies, 99)
        print(f"single change: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)}; "
              f"RSS {rss:.0f} MiB (peak {peak:.0f})", file=sys.stderr)  # fmt: skip
        figures = {"full_sync_s": full_sync_s, "p50": p50, "p99": p99, "rss": rss}
        setup = {
            "services": args.services,
            "endpoints_per_service": 10,
            "changes": len(latencies),
            "status_written_back_s": round(status_s, 1),
            "rss_peak_mb": round(peak, 1),
            "holdoff_ms": CmiSettings.holdoff_ms,
            "max_holdoff_ms": CmiSettings.max_holdoff_ms,
        }
        path = write_results(args.services, figures, setup)
        print(f"wrote {path}", file=sys.stderr)
    finally:  # cmi first: with the API server gone it would only campaign on
        if cmi is not None:
            cmi.stop()
        kube.stop()
        redis_server.stop()


def write_results(services: int, figures: dict[str, float], setup: dict[str, Any]) -> Path:
    """bench/results/cmi.json, keeping the figures and setup of the other sizes: 1,000
    Services are issue #3's figures; 10,000 are #18's (cold sync, RSS), suffixed `_10k`."""
    suffix = ""
    sync_target: float | None = 5.0
    rss_target: float | None = 200.0
    if services != 1000:
        suffix = results_file.size_suffix(services)
        sync_target, rss_target = (20.0, 500.0) if services == 10_000 else (None, None)
    measured = {
        f"cmi_full_sync_s{suffix}": metric(figures["full_sync_s"], "s", sync_target),
        f"cmi_change_p50_ms{suffix}": metric(figures["p50"], "ms", 150.0),
        f"cmi_change_p99_ms{suffix}": metric(figures["p99"], "ms", 150.0),
        f"cmi_rss_mb{suffix}": metric(figures["rss"], "MiB", rss_target),
    }
    return results_file.write_size("cmi", measured, f"setup{suffix}", setup)


def measure_changes(admin: KubeClient, store: Store, count: int, services: int) -> list[float]:
    """Add one endpoint to one Service at a time; time API write -> revision holding it."""
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
    latencies = []
    for n in range(count):
        index = (n * 37) % services
        body = admin.get(f"{slices}/svc-{index}-1")
        address = f"198.19.255.{n + 1}"  # above every pod's
        body["endpoints"].append({"addresses": [address], "conditions": {"ready": True}})
        since = store.revision()
        began = time.monotonic()
        admin.request("PUT", f"{slices}/svc-{index}-1", body=body)
        key = f"{NAMESPACE}/svc-{index}"
        while batch := store.changes(since, block_ms=2000):
            since = batch[-1].revision
            if any(kind == "Service" and k == key for c in batch for _, kind, k in c.ops):
                doc = store.redis.hget(store.key("doc", "Service"), key) or b""
                if address.encode() in doc:
                    break
        else:
            raise TimeoutError(f"change {n} never reached Redis")
        latencies.append((time.monotonic() - began) * 1000)
        time.sleep(0.2)  # one change at a time: no coalescing across measurements
    return latencies


if __name__ == "__main__":
    main()
