"""l4 at scale, in one lab VM boot: 1,000 virtual services x 10 real servers.

(1) openslb applies the rule set to an empty kernel (the agent's own path: read the
kernel, reconcile, record ownership, apply through the pyroute2 driver), then the same
rules go in with `ipvsadm-restore`; three rounds each, alternating, medians compared.
(2) On top of that, 100 single-real-server changes (a weight, a removal, an addition, in
turn): the time for the agent to take the new plan to the kernel. Each plan is made as the
agent makes it, from the previous plan and what the change stream says changed (here: one
Service), so untouched services are the same objects; planning is timed apart and
reported in `setup`, and so are 20 more changes each planned from scratch, where every
object is new and the agent compares all 1,000 services with its view.

    .venv/bin/python -m bench.l4 [--services 1000] [--reals 10] [--changes 100] [--rounds 3]

Runs the measurements inside the lab VM (2 GiB), under emulation: absolute figures are
~10-20x what a real LB node would show; the ratio to ipvsadm-restore is the comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_file
from bench.guest import measure_in_lab_vm

NODE = "lb-a"


def desired_state(services: int, reals: int) -> Any:
    """1,000 Service-owned TCP listeners on 100 VIPs (10 ports each), 10 backends each."""
    from slb.resolve import resolve  # noqa: PLC0415

    return resolve(desired_snapshot(services, reals))


def desired_snapshot(services: int, reals: int) -> Any:
    """The objects of `desired_state`, as a store snapshot holds them."""
    from slb.model import Listener, LoadBalancer, NodeGroup, Service  # noqa: PLC0415
    from slb.snapshot import Snapshot, Stored  # noqa: PLC0415

    owner = {"kind": "Operator", "name": "bench"}
    objects: dict[str, dict[str, Stored[Any]]] = {
        "NodeGroup": {
            "default": Stored(
                NodeGroup.model_validate(
                    {"name": "default", "nodes": [{"name": NODE, "address": "198.18.255.15"}]}
                ),
                1,
            )
        },
        "LoadBalancer": {},
        "Listener": {},
        "Service": {},
    }
    for i in range(services):
        lb_name = f"lb-{i // 10}"
        if lb_name not in objects["LoadBalancer"]:
            vip = f"198.18.{i // 10 // 250}.{i // 10 % 250 + 1}"
            lb = LoadBalancer.model_validate({"name": lb_name, "vip": vip, "owner": owner})
            objects["LoadBalancer"][lb_name] = Stored(lb, 1)
        port = 8000 + i % 10
        backends = [
            {
                "address": f"198.19.{(i * reals + r) // 250}.{(i * reals + r) % 250 + 1}",
                "port": 8080,
            }
            for r in range(reals)
        ]
        service = Service.model_validate(
            {"namespace": "bench", "name": f"svc-{i}", "load_balancer": lb_name,
             "ports": [{"name": "main", "port": port}], "backends": {"main": backends}}
        )  # fmt: skip
        listener = Listener.model_validate(
            {"name": f"svc-{i}", "load_balancer": lb_name, "protocol": "TCP", "port": port,
             "target_port": "main", "health_check": None,
             "owner": {"kind": "Service", "name": f"bench/svc-{i}"}}
        )  # fmt: skip
        objects["Service"][service.key] = Stored(service, 1)
        objects["Listener"][listener.key] = Stored(listener, 1)
    return Snapshot(1, objects)


def changed(state: Any, step: int) -> tuple[Any, str]:
    """`state` with one real server of one listener changed (a weight, a removal, an
    addition), and the key of the Service whose endpoints changed."""
    index = (step * 37) % len(state.listeners)
    item = state.listeners[index]
    backends = list(item.backends)
    kind = step % 3
    if kind == 0:
        backends[0] = backends[0].model_copy(update={"weight": 2 + step})
    elif kind == 1:
        backends.pop()
    else:
        address = ipaddress.ip_address(f"198.19.200.{step % 250 + 1}")
        extra = backends[0].model_copy(update={"address": address})
        backends.append(extra)
    listeners = list(state.listeners)
    listeners[index] = dataclasses.replace(item, backends=tuple(backends))
    state = dataclasses.replace(state, listeners=tuple(listeners), revision=state.revision + 1)
    return state, item.services[0]


def flush() -> None:
    subprocess.run(["ipvsadm", "-C"], check=True)


def rule_count() -> int:
    out = subprocess.run(["ipvsadm", "-Sn"], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def say(message: str) -> None:
    print(f"[bench.l4] {message}", flush=True)


def restore_rules(full_plan: Any) -> Path:
    """The same rule set as ipvsadm-restore input, written by the ipvsadm driver."""
    from l4.drivers.ipvsadm import rule_line  # noqa: PLC0415
    from l4.ipvs import KernelState  # noqa: PLC0415
    from l4.reconcile import reconcile  # noqa: PLC0415

    ops = reconcile(
        full_plan.services, KernelState.empty(), set(), draining={}, now=0.0, drain_timeout=0.0
    ).ops
    rules = Path(tempfile.mkdtemp()) / "rules"
    rules.write_text("".join(rule_line(op) + "\n" for op in ops))
    return rules


def full_applies(
    args: argparse.Namespace, full_plan: Any, new_agent: Any, expected: int
) -> tuple[list[float], list[float]]:
    """Alternating rounds on an empty kernel: openslb's agent, then ipvsadm-restore."""
    rules = restore_rules(full_plan)
    openslb_s: list[float] = []
    restore_s: list[float] = []
    for round_no in range(args.rounds):
        flush()
        agent = new_agent(round_no)
        started = time.perf_counter()
        report = agent.apply_plan(full_plan)
        openslb_s.append(time.perf_counter() - started)
        assert not report.errors, report.errors[:3]
        assert rule_count() == expected
        flush()
        started = time.perf_counter()
        with rules.open() as stdin:
            subprocess.run(["ipvsadm-restore"], stdin=stdin, check=True)
        restore_s.append(time.perf_counter() - started)
        assert rule_count() == expected
        say(f"round {round_no + 1}: openslb {openslb_s[-1]:.2f} s, "
            f"ipvsadm-restore {restore_s[-1]:.2f} s")  # fmt: skip
    return openslb_s, restore_s


def single_changes(args: argparse.Namespace, state: Any, agent: Any) -> dict[str, Any]:
    """One real server changed per step; the agent's apply timed, the planning apart."""
    from l4.plan import Changed, plan  # noqa: PLC0415

    change_ms: list[float] = []
    replan_ms: list[float] = []
    current = state
    next_plan = None
    for step in range(args.changes):
        current, service_key = changed(current, step)
        started = time.perf_counter()
        what = Changed(services=frozenset([service_key]))
        next_plan = plan(current, NODE, "default", previous=agent.plan, changed=what)
        replan_ms.append(1000 * (time.perf_counter() - started))
        gc.collect()  # the replan's garbage is the replan's cost, not the apply's
        started = time.perf_counter()
        report = agent.apply_plan(next_plan)
        change_ms.append(1000 * (time.perf_counter() - started))
        assert not report.errors, report.errors
        assert len(report.operations) == 1, report.operations
    fresh_ms: list[float] = []
    for step in range(args.changes, args.changes + args.changes // 5):
        current, _ = changed(current, step)
        next_plan = plan(current, NODE, "default")
        gc.collect()
        started = time.perf_counter()
        report = agent.apply_plan(next_plan)
        fresh_ms.append(1000 * (time.perf_counter() - started))
        assert len(report.operations) == 1, report.operations
    check = agent.apply_plan(next_plan, full=True)
    assert check.operations == [], check.operations
    say(f"{args.changes} changes: p50 {results_file.percentile(change_ms, 50):.1f} ms, "
        f"p99 {results_file.percentile(change_ms, 99):.1f} ms")  # fmt: skip
    return {"change_ms": change_ms, "replan_ms": replan_ms, "fresh_ms": fresh_ms}


def acl_changes(args: argparse.Namespace, store: Any, settings: Any, vips: Any) -> list[float]:
    """Milliseconds from a listener's access control written to the store to the agent's
    sync returning with the VIP guard changed (one nft transaction), over `args.changes`
    changes at 1,000 listeners: each denies one more client address on another listener."""
    from l4.agent import L4Agent  # noqa: PLC0415
    from l4.drivers.nft import NftDriver  # noqa: PLC0415
    from l4.drivers.pyroute2 import Pyroute2Driver  # noqa: PLC0415
    from slb.model import Listener  # noqa: PLC0415
    from slb.snapshot import Put  # noqa: PLC0415

    snapshot = desired_snapshot(args.services, args.reals)
    objects = [s.obj for kind in snapshot.objects.values() for s in kind.values()]
    for i in range(0, len(objects), 500):
        store.apply([Put(o) for o in objects[i : i + 500]])
    agent = L4Agent(store, settings, NODE, driver=Pyroute2Driver(), vips=vips, firewall=NftDriver())
    report = agent.sync(full=True)
    assert not report.errors, report.errors[:3]
    listeners = sorted(snapshot.of(Listener).values(), key=lambda s: s.obj.name)
    took_ms = []
    denied = ""
    for step in range(args.changes):
        listener = listeners[(step * 37) % len(listeners)].obj
        denied = f"198.18.10.{step % 250 + 1}/32"
        changed = listener.model_copy(update={"denied_sources": (denied,)})
        started = time.perf_counter()
        store.put(Listener.model_validate(changed.model_dump()))
        report = agent.sync()
        took_ms.append(1000 * (time.perf_counter() - started))
        assert not report.errors, report.errors
    listed = subprocess.run(["nft", "list", "set", "inet", "openslb_guard", "denied4"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f" . {denied.removesuffix('/32')}" in listed, listed[-500:]  # nft omits a /32
    say(f"{args.changes} ACL changes: p50 {results_file.percentile(took_ms, 50):.1f} ms, "
        f"p99 {results_file.percentile(took_ms, 99):.1f} ms")  # fmt: skip
    subprocess.run(["nft", "delete", "table", "inet", "openslb_guard"], check=False)
    return took_ms


def guest(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the VM: every measurement; returns the figures."""
    from devbed.redis import RedisServer  # noqa: PLC0415
    from l4.agent import L4Agent  # noqa: PLC0415
    from l4.drivers.pyroute2 import Pyroute2Driver  # noqa: PLC0415
    from l4.plan import plan  # noqa: PLC0415
    from l4.vip import VIPs, prepare_kernel  # noqa: PLC0415
    from slb.config import L4Settings  # noqa: PLC0415
    from slb.storage.store import Store  # noqa: PLC0415

    prepare_kernel()
    redis_server = RedisServer(Path(tempfile.mkdtemp())).start()
    started = time.perf_counter()
    state = desired_state(args.services, args.reals)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    full_plan = plan(state, NODE, "default")
    plan_s = time.perf_counter() - started
    expected = args.services * (1 + args.reals)
    say(f"desired state built in {build_s:.1f} s, planned in {plan_s:.2f} s")

    settings = L4Settings(node=NODE, interface="slbbench0", state_dir=tempfile.mkdtemp())
    vips = VIPs("slbbench0")

    def new_agent(round_no: int) -> L4Agent:
        store = Store(redis_server.client(), prefix=f"bench{round_no}")
        return L4Agent(store, settings, NODE, driver=Pyroute2Driver(), vips=vips)

    openslb_s, restore_s = full_applies(args, full_plan, new_agent, expected)

    flush()  # the changes run on top of openslb's own full apply
    agent = new_agent(args.rounds)
    agent.apply_plan(full_plan)
    started = time.perf_counter()
    noop = agent.apply_plan(full_plan, full=True)
    resync_s = time.perf_counter() - started
    assert noop.operations == [], noop.operations[:3]
    changes = single_changes(args, state, agent)

    started = time.perf_counter()
    dumped = Pyroute2Driver().dump()
    dump_s = time.perf_counter() - started
    steps = range(args.changes + args.changes // 5)
    net = sum(1 for s in steps if s % 3 == 2) - sum(1 for s in steps if s % 3 == 1)
    rules = sum(len(s.dests) for s in dumped.services.values()) + len(dumped.services)
    assert rules == expected + net, rules
    started = time.perf_counter()
    vips.add(full_plan.vips)
    vips_s = time.perf_counter() - started
    vips.remove_interface()
    flush()
    acl_ms = acl_changes(args, Store(redis_server.client(), prefix="bench-acl"), settings, vips)
    vips.remove_interface()
    flush()
    redis_server.stop()
    return {
        "openslb_s": openslb_s,
        "restore_s": restore_s,
        **changes,
        "build_s": build_s,
        "plan_s": plan_s,
        "noop_resync_s": resync_s,
        "dump_s": dump_s,
        "vips": len(full_plan.vips),
        "vips_s": vips_s,
        "rules": expected,
        "acl_ms": acl_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--reals", type=int, default=10)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    measured = measure_in_lab_vm("l4", args, guest)
    if measured is None:
        return
    figures, boot_s = measured
    from devbed.labvm import kernel_version  # noqa: PLC0415

    full = results_file.median(figures["openslb_s"])
    restore = results_file.median(figures["restore_s"])
    p50 = results_file.percentile(figures["change_ms"], 50)
    p99 = results_file.percentile(figures["change_ms"], 99)
    metrics = {
        "ipvs_full_apply_s": {"value": round(full, 2), "unit": "s", "target": None},
        "ipvsadm_restore_s": {"value": round(restore, 2), "unit": "s", "target": None},
        "ipvs_full_apply_ratio_vs_restore": {
            "value": round(full / restore, 2), "unit": "x", "target": 1.5,
        },
        "ipvs_change_p50_ms": {"value": round(p50, 1), "unit": "ms", "target": None},
        "ipvs_change_p99_ms": {"value": round(p99, 1), "unit": "ms", "target": 50.0},
        "acl_change_to_enforced_p99_ms": {
            "value": round(results_file.percentile(figures["acl_ms"], 99), 1), "unit": "ms",
            "target": 1000.0,
        },
    }  # fmt: skip
    setup = {
        "where": f"lab VM: qemu TCG (emulated), 2 vCPU, 2048 MiB, kernel {kernel_version()}",
        "services": args.services,
        "real_servers_per_service": args.reals,
        "rules": figures["rules"],
        "rounds": args.rounds,
        "openslb_full_apply_s": [round(v, 2) for v in figures["openslb_s"]],
        "ipvsadm_restore_s": [round(v, 2) for v in figures["restore_s"]],
        "changes": args.changes,
        "change_max_ms": round(max(figures["change_ms"]), 1),
        "plan_1000_services_s": round(figures["plan_s"], 2),
        "replan_p50_ms": round(results_file.percentile(figures["replan_ms"], 50), 1),
        "changes_planned_from_scratch": len(figures["fresh_ms"]),
        "change_planned_from_scratch_p50_ms": round(
            results_file.percentile(figures["fresh_ms"], 50), 1
        ),
        "change_planned_from_scratch_max_ms": round(max(figures["fresh_ms"]), 1),
        "noop_full_resync_s": round(figures["noop_resync_s"], 2),
        "full_dump_s": round(figures["dump_s"], 2),
        "vips_bound": figures["vips"],
        "vip_binding_s": round(figures["vips_s"], 2),
        "vm_boot_s": round(boot_s, 1),
        "acl_change_to_enforced_p50_ms": round(results_file.percentile(figures["acl_ms"], 50), 1),
    }
    path = results_file.write("l4", metrics, setup=setup)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
