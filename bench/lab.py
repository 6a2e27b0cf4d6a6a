"""VIP failover between two LB nodes (keepalived VRRP + IPVS connection sync) in the lab VM.

    python -m bench.lab [--trials 12] [--trials-without-sync 3]

Inside the lab VM, two LB nodes in network namespaces share a VIP (devbed/labpair.py:
the sysctl and keepalived files from deploy/lb-node/, the l4 agents writing keepalived's
instance). Each trial: an established TCP connection through the VIP, known to the
backup through connection sync; the MASTER dies (keepalived killed, links down); the
time from that moment to the first successful new call through the VIP on the BACKUP;
whether the established connection still carries data; the dead node boots again (as
BACKUP) and the next trial kills the other one. A few more trials with connection sync
stopped show what it buys. Writes bench/results/lab.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_file
from bench.guest import measure_in_lab_vm

TARGET_P99_MS = 1000.0
L7_TARGET_P99_MS = 2000.0


def say(message: str) -> None:
    print(message, flush=True)


def trial(pair: Any, *, synced: bool) -> tuple[float, bool, float]:
    """One failover: ms to the first new call through the VIP, whether the established
    connection survived, ms until HTTP calls all reach the backup's Envoy."""
    from devbed.labpair import NODES, echoes  # noqa: PLC0415
    from devbed.process import wait_until  # noqa: PLC0415

    master = pair.wait_master()
    backup = next(n for n in NODES if n != master)
    established = pair.open_connection()
    assert echoes(established), "a new connection through the VIP carries no data"
    if synced:
        source = "{}:{}".format(*established.getsockname())
        wait_until(lambda: source in pair.connections(backup), 20, "the connection synced")
    started = time.monotonic()
    pair.kill(master, agent=False)
    seconds = pair.first_answer_after(started)
    survived = echoes(established, timeout=5.0)
    established.close()
    wait_until(lambda: pair.l7_answered_by_only(backup, 0.2), 30, f"HTTP answered by {backup}")
    l7_seconds = time.monotonic() - started
    pair.revive(master, agent=False)
    time.sleep(2)  # the revived keepalived hears the MASTER and settles as BACKUP
    return seconds * 1000, survived, l7_seconds * 1000


def guest(args: argparse.Namespace) -> dict[str, Any]:
    from devbed.labpair import NODES, LBPair, desired_state  # noqa: PLC0415
    from devbed.process import wait_until  # noqa: PLC0415
    from devbed.redis import RedisServer  # noqa: PLC0415
    from slb.storage.store import Store  # noqa: PLC0415

    state = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    server = RedisServer(state / "redis").start()
    client = server.client()
    store = Store(client, prefix="bench-lab")
    pair = LBPair(state / "pair", store, server.socket_url)
    figures: dict[str, list[Any]] = {
        "failover_ms": [], "survived": [], "failover_ms_without_sync": [], "l7_recovered_ms": [],
        "survived_without_sync": [],
    }  # fmt: skip
    try:
        desired_state(store)
        for name in NODES:
            pair.boot(name)
        pair.wait_master()

        wait_until(pair.answers, 120, "an answer through the VIP")
        rounds = ((True, args.trials, ""), (False, args.trials_without_sync, "_without_sync"))
        for synced, count, suffix in rounds:
            if not synced:
                for name in NODES:
                    pair.stop_conn_sync(name)
            for number in range(1, count + 1):
                ms, survived, l7_ms = trial(pair, synced=synced)
                figures[f"failover_ms{suffix}"].append(ms)
                figures["l7_recovered_ms"].append(l7_ms)
                figures[f"survived{suffix}"].append(survived)
                say(f"trial {number}/{count}{suffix.replace('_', ' ')}: failover {ms:.0f} ms, "
                    f"connection {'survived' if survived else 'lost'}")  # fmt: skip
    finally:
        pair.close()
        client.close()
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trials-without-sync", type=int, default=3)
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    measured = measure_in_lab_vm("lab", args, guest)
    if measured is None:
        return
    figures, boot_s = measured
    from devbed.labvm import kernel_version  # noqa: PLC0415

    failover = figures["failover_ms"]
    survived = figures["survived"]
    l7 = figures["l7_recovered_ms"]
    metrics = {
        "vip_failover_p50_ms": {
            "value": round(results_file.percentile(failover, 50)), "unit": "ms", "target": None,
        },
        "vip_failover_p99_ms": {
            "value": round(results_file.percentile(failover, 99)), "unit": "ms",
            "target": TARGET_P99_MS,
        },
        "l7_failover_p50_ms": {
            "value": round(results_file.percentile(l7, 50)), "unit": "ms", "target": None,
        },
        "l7_failover_p99_ms": {
            "value": round(results_file.percentile(l7, 99)), "unit": "ms",
            "target": L7_TARGET_P99_MS,
        },
        "tcp_conn_survives_failover": {
            "value": int(bool(survived) and all(survived)), "unit": "bool", "target": 1,
        },
    }  # fmt: skip
    setup = {
        "where": f"lab VM: qemu TCG (emulated), 2 vCPU, 2048 MiB, kernel {kernel_version()}",
        "nodes": "lb1 (priority 150), lb2 (100) in network namespaces; keepalived "
        "VRRPv3, advert 200 ms, unicast, nopreempt; IPVS NAT, the real servers' gateway "
        "moves with the VIP; connection sync on the back network",
        "death": "keepalived SIGKILLed and both links down; measured from then to the "
        "first new TCP call through the VIP answered (client retries every 100 ms)",
        "trials": len(failover),
        "failover_ms": [round(v) for v in failover],
        "l7": "an HTTP listener by direct routing to both nodes' (stand-in) Envoys, checked by "
        "the group's envoy_check (http /ready, 1 s, 2 failures), and at a takeover probed at "
        "once (0.3 s, one failure takes a peer's Envoy out); l7_failover: from the death "
        "to 8 calls in a row answered by the survivor's Envoy (each call given 0.2 s)",
        "l7_failover_ms": [round(v) for v in l7],
        "connections_survived": f"{sum(survived)}/{len(survived)}",
        "trials_without_sync": len(figures["survived_without_sync"]),
        "failover_ms_without_sync": [round(v) for v in figures["failover_ms_without_sync"]],
        "connections_survived_without_sync": (
            f"{sum(figures['survived_without_sync'])}/{len(figures['survived_without_sync'])}"
        ),
        "vm_boot_s": round(boot_s, 1),
    }
    path = results_file.write("lab", metrics, setup=setup)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
