"""Chaos: a sick control plane never removes traffic, what the API server accepts never
stops cmi, and an offline node's queue stays short (#13).

Four parts: 1 and 2 each on generated objects within kube-apiserver 1.37's validation
(`devbed.apiobjects`):

1. fuzz: `--fuzz` clusters (a Service, its EndpointSlices, the Nodes) through the pure
   pipeline, build -> resolve -> the IPVS plan -> Envoy resources. An exception is what would
   stop the controller (`fuzz_controller_exits`); a refusal is a Service the model could not
   take although the API server did (`fuzz_refused`). Both must be 0.
2. apiserver: `--apiserver` of them created on a real kube-apiserver under a real `slb cmi`
   process; then one plain Service. cmi must still be the same running process, the leader,
   and expose that Service.
3. offline queue: a day of re-assertions (time compressed) announced to a node whose worker
   is down: its queue's length after (`chaos_offline_node_queue_len`).
4. live: the whole platform (`slb dev up`: Redis, kube-apiserver, cmi, workers, `slb xds`,
   Envoy, IPVS in the lab VM) under gRPC calls through the L7 VIP and TCP connections through
   the L4 VIP, while `devbed.chaos` empties Redis, restarts it from an older backup, and
   restarts the xDS server and the LB node on the wrong prefix, `--rounds` times each: the
   failed calls and connections of each, and VIPs that moved.

    .venv/bin/python -m bench.chaos [--fuzz 10000] [--apiserver 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from bench import results_file
from bench.results_file import median
from cmi.handoff import Handoff
from cmi.k8s.client import KubeClient, KubeError
from devbed import chaos
from devbed.apiobjects import Cluster, clusters, sample, through_pipeline
from devbed.kube import KubeAPI
from devbed.l7harness import free_octet
from devbed.platform import DevPlatform
from devbed.process import Process, wait_until
from devbed.redis import RedisServer
from slb import config
from slb.model import AddressPool, NodeGroup
from slb.pipeline import l4_queue, make_app
from slb.storage.store import Store

NAMESPACE = "chaos"
BLACKHOLE_TARGET_S = 2 * 3 + 1
"""The default health check's interval x unhealthy threshold, + 1 s (the issue's target)."""
POOL = "198.18.0.0/20"
GENERATE_ONLY = settings(
    deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)


def fuzz(count: int) -> dict[str, int]:
    """`count` generated clusters through the pure pipeline; what raised, what was refused."""
    tally = {"tried": 0, "exits": 0, "refused": 0, "listeners": 0}

    @settings(GENERATE_ONLY, max_examples=count)
    @given(clusters())
    def one(cluster: Cluster) -> None:
        tally["tried"] += 1
        try:
            outcome = through_pipeline(cluster)
        except Exception:
            tally["exits"] += 1
            if tally["exits"] <= 3:
                traceback.print_exc()
            return
        if outcome.built.refused is not None:
            tally["refused"] += 1
            if tally["refused"] <= 3:
                print(f"refused: {outcome.built.refused}", file=sys.stderr)
        tally["listeners"] += len(outcome.state.listeners)
        if tally["tried"] % 1000 == 0:
            print(f"fuzz: {tally['tried']}/{count}", file=sys.stderr)

    one()
    return tally


def on_apiserver(count: int, work: Path) -> dict[str, Any]:
    """`count` generated Services (and their slices) created under a running `slb cmi`."""
    redis_server = RedisServer(work / "redis").start()
    kube = KubeAPI(work / "kube").start()
    try:
        kubeconfig = kube.cmi_kubeconfig()
        admin = KubeClient.from_kubeconfig(str(kube.kubeconfig))
        admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}})
        env = {
            "OPENSLB_CONFIG": "", "OPENSLB_REDIS_URL": redis_server.url,
            "OPENSLB_REDIS_PREFIX": "chaos", "OPENSLB_KUBE_KUBECONFIG": str(kubeconfig),
            "OPENSLB_CMI_POOL_CIDRS": POOL, "OPENSLB_CMI_IDENTITY": "chaos",
            "OPENSLB_CMI_NAMESPACE": NAMESPACE, "OPENSLB_CMI_ENDPOINT_SLICES_FROM": "*",
            "OPENSLB_CMI_INSTANCES_PER_NAMESPACE": "0", "OPENSLB_CMI_LISTENERS_PER_NAMESPACE": "0",
        }  # fmt: skip
        argv = [sys.executable, "-m", "slb.cli", "cmi", "--log-level", "WARNING"]
        cmi = Process("cmi", argv, work, env=env).start()
        lease = "/apis/coordination.k8s.io/v1/namespaces/openslb-system/leases/openslb-cmi"
        tally = {"tried": 0, "accepted": 0, "api_refused": 0, "slices": 0}
        dedicated: list[str] = []  # the accepted Services with an instance of their own

        drawn = sample(clusters(legacy=False, namespace=NAMESPACE), count)
        for number, generated in enumerate(drawn):
            service, slices = generated.numbered(number).for_api()
            tally["tried"] += 1
            try:
                admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", body=service)
            except KubeError as exc:
                tally["api_refused"] += 1  # NodePorts used up
                if exc.status != 422:
                    raise
                print(f"refused by the API server: {exc}", file=sys.stderr)
                continue
            tally["accepted"] += 1
            if service["metadata"]["labels"]["openslb.io/expose"] == "true":
                dedicated.append(service["metadata"]["name"])
            path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
            for body in slices:
                admin.request("POST", path, body=body)
            tally["slices"] += len(slices)
            cmi.check_alive()

        canary = {
            "metadata": {"name": "canary", "labels": {"openslb.io/expose": "true"}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "web", "port": 80}]},
        }
        created = time.monotonic()
        admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/services", body=canary)

        def exposed(name: str) -> bool:
            cmi.check_alive()
            body = admin.get(f"/api/v1/namespaces/{NAMESPACE}/services/{name}")
            conditions = (body.get("status") or {}).get("conditions") or []
            return any(
                c["type"] == "openslb.io/Exposed" and c["status"] == "True" for c in conditions
            )

        wait_until(lambda: exposed("canary"), 120, "the canary Service exposed", interval=0.2)
        canary_s = time.monotonic() - created
        tally["dedicated"] = len(dedicated)
        tally["dedicated_exposed"] = sum(exposed(name) for name in dedicated)
        holder = admin.get(lease)["spec"].get("holderIdentity")
        alive = cmi.alive()
        cmi.stop()
        return {**tally, "canary_exposed_s": round(canary_s, 2), "leader": holder, "alive": alive}
    finally:
        kube.stop()
        redis_server.stop()


def offline_queue(work: Path) -> int:
    """A node offline for a day: 24 h of re-assertions (one per `celery.reassert_s`, time
    compressed, a new revision every 100) announced to it; its queue's length after."""
    redis_server = RedisServer(work / "redis-queue").start()
    try:
        settings = config.load(environ={})
        settings = replace(settings, redis=replace(settings.redis, url=redis_server.url))
        store = Store(redis_server.client(), prefix=settings.redis.prefix)
        store.put(NodeGroup.model_validate(
            {"name": "edge", "nodes": [{"name": "lb1", "address": "198.18.255.15"}]}))  # fmt: skip
        handoff = Handoff(store, make_app(settings, include_tasks=False))
        for beat in range(24 * 3600 // settings.celery.reassert_s):
            if beat % 100 == 0:
                pool = {"name": f"p{beat}", "cidrs": ["198.18.0.0/24"]}
                store.put(AddressPool.model_validate(pool))
            handoff.announce(store.revision(), force=True)
        return int(store.redis.llen(store.key("celery", l4_queue("lb1"))))
    finally:
        redis_server.stop()


def live(rounds: int, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Every scenario of `devbed.chaos`, `rounds` times, on one platform."""
    octet = free_octet()
    platform = DevPlatform(
        work / "platform", vip_cidr=f"198.19.{octet}.0/25", sample_cidr=f"198.19.{octet}.128/25",
        tuning={"celery": {"reassert_s": 5}},
    )  # fmt: skip
    say = partial(print, file=sys.stderr)
    outcomes: dict[str, list[dict[str, Any]]] = {name: [] for name in chaos.SCENARIOS}
    outcomes["redis_blackhole"] = []
    try:
        platform.up(say)
        platform.show_traffic(say)
        for round_no in range(rounds):
            for name, scenario in chaos.SCENARIOS.items():
                say(f"round {round_no + 1}/{rounds}: {name}")
                outcome = scenario(platform, say)
                outcomes[name].append({**asdict(outcome), "failed": outcome.failed})
            depool_s = chaos.redis_blackhole_depool(platform, say)
            outcomes["redis_blackhole"].append({"depool_s": round(depool_s, 2)})
    finally:
        platform.down(say)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--apiserver", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="of each live scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openslb-chaos-") as tmp:
        scenarios = live(
            args.rounds, Path(tmp)
        )  # first: the longest to set up, the likeliest to fail
        began = time.monotonic()
        fuzzed = fuzz(args.fuzz)
        print(f"fuzz: {fuzzed} in {time.monotonic() - began:.0f} s", file=sys.stderr)
        api = on_apiserver(args.apiserver, Path(tmp))
        queue_len = offline_queue(Path(tmp))

    def total(name: str, key: str) -> int:
        return sum(int(o[key]) for o in scenarios[name])

    print(f"apiserver: {api}", file=sys.stderr)
    print(f"an offline node's queue after a day: {queue_len}", file=sys.stderr)
    exits = fuzzed["exits"] + (0 if api["alive"] else 1)
    path = results_file.write(
        "chaos",
        {
            "fuzz_objects_tried": {"value": fuzzed["tried"], "unit": "objects", "target": 10_000},
            "fuzz_controller_exits": {"value": exits, "unit": "exits", "target": 0},
            "fuzz_refused": {"value": fuzzed["refused"], "unit": "Services", "target": 0},
            "apiserver_objects_tried": {
                "value": api["accepted"],
                "unit": "Services",
                "target": 200,
            },
            "chaos_offline_node_queue_len": {"value": queue_len, "unit": "tasks", "target": 2},
            "chaos_redis_flush_failed_requests": {
                "value": total("redis_flush", "failed"),
                "unit": "requests",
                "target": 0,
            },
            "chaos_vips_changed": {
                "value": sum(total(name, "vips_changed") for name in chaos.SCENARIOS),
                "unit": "VIPs",
                "target": 0,
            },
            "chaos_redis_rewind_failed_requests": {
                "value": total("redis_rewind", "failed"),
                "unit": "requests",
                "target": 0,
            },
            "chaos_wrong_prefix_failed_requests": {
                "value": total("wrong_prefix", "failed"),
                "unit": "requests",
                "target": 0,
            },
            "chaos_redis_blackhole_depool_s": {
                "value": round(median([o["depool_s"] for o in scenarios["redis_blackhole"]]), 2),
                "unit": "s",
                "target": BLACKHOLE_TARGET_S,
            },
            "chaos_requests_sent": {
                "value": sum(
                    total(n, k)
                    for n in chaos.SCENARIOS
                    for k in ("l7_ok", "l7_failed", "l4_ok", "l4_failed")
                ),
                "unit": "requests",
                "target": None,
            },
            "apiserver_services_not_exposed": {
                "value": api["dedicated"] - api["dedicated_exposed"],
                "unit": "Services",
                "target": 0,
            },
        },
        setup={"fuzz": fuzzed, "apiserver": api, "live": scenarios},
    )
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
