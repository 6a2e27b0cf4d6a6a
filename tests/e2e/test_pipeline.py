"""Label a Service and traffic flows: every component real, the L4 tier in the lab VM.

Each test leaves the demo apps as it found them (three endpoints each, exposed).
"""

from __future__ import annotations

import collections
import ipaddress
import time
from dataclasses import replace

import grpc
import pytest

from devbed import demo, scenarios
from devbed.l7harness import background_load
from devbed.platform import LAB_NODE, DevPlatform
from devbed.process import wait_until
from slb.storage.status import StatusBoard
from web.state import Boards, listener_states

pytestmark = pytest.mark.timeout(600)


def app_named(platform: DevPlatform, name: str) -> demo.SampleApp:
    return next(app for app in platform.apps() if app.name == name)


def target_of(platform: DevPlatform, app: demo.SampleApp) -> str:
    exposed = demo.wait_programmed(platform.kube(), app.name, 120)
    return f"{exposed.vip}:{app.port}"


def answers_become(platform: DevPlatform, target: str, names: set[str], timeout: float) -> None:
    def answered() -> bool:
        return set(demo.grpc_who(target, 3 * len(names))) == names

    wait_until(answered, timeout, f"{target} answered by {sorted(names)}", interval=0.2)


def test_labelled_services_carry_traffic_through_both_tiers(platform: DevPlatform) -> None:
    report = platform.show_traffic(print)
    print("\n".join(report))
    kube = platform.kube()
    grpc_vip = demo.exposure(kube, "grpc-echo").vip
    tcp_vip = demo.exposure(kube, "tcp-echo").vip
    assert grpc_vip is not None
    assert tcp_vip is not None
    assert ipaddress.ip_address(grpc_vip) in ipaddress.ip_network(platform.vip_cidr)
    assert grpc_vip != tcp_vip

    # L7: one HTTP/2 connection, yet each call is balanced over all three endpoints.
    spread = collections.Counter(demo.grpc_who(f"{grpc_vip}:50051", 30))
    assert set(spread) == {"echo-1", "echo-2", "echo-3"}
    assert min(spread.values()) >= 5, spread

    # L4: connections from the VM's client namespace cross IPVS to the three pods.
    answers = platform.lab_node().tcp(f"{tcp_vip}:9000", count=6)
    assert set(answers) == {"pod1", "pod2", "pod3"}, answers

    # The console says what cmi says: every listener served (the one readiness rule).
    store = platform.store()
    board = StatusBoard(store)

    def console_states() -> dict[str, str]:
        boards = Boards(l4=board.all("l4"), l7=board.all("l7"))
        return {name: s.state for name, s in listener_states(store.snapshot(), boards).items()}

    wait_until(lambda: set(console_states().values()) == {"served"}, 30,
               "every listener served on the console", interval=0.5)  # fmt: skip
    apps = len(platform.apps()) + len(platform.deployments())
    assert len(console_states()) == apps + 1  # and the demo's Gateway's listener


def test_unlabelling_withdraws_the_vip_and_clears_the_status(platform: DevPlatform) -> None:
    kube = platform.kube()
    solo = replace(app_named(platform, "grpc-echo"), name="solo")
    demo.apply(kube, [solo])
    target = target_of(platform, solo)
    assert set(demo.grpc_who(target, 6)) == {"echo-1", "echo-2", "echo-3"}

    demo.label(kube, "solo", None)

    def withdrawn() -> bool:
        now = demo.exposure(kube, "solo")
        return now.vip is None and not now.conditions

    wait_until(withdrawn, 30, "status of demo/solo cleared", interval=0.2)

    def refused() -> bool:
        try:
            demo.grpc_who(target, 1, timeout=2)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False

    wait_until(refused, 30, f"{target} stops answering", interval=0.2)
    kube.request("DELETE", f"/api/v1/namespaces/{demo.NAMESPACE}/services/solo")


def test_scaling_endpoints_under_load_fails_no_call(platform: DevPlatform) -> None:
    kube = platform.kube()
    app = app_named(platform, "grpc-echo")
    target = target_of(platform, app_named(platform, "grpc-echo"))
    with background_load(target, connections=4, window=4) as load:
        for endpoints in (app.endpoints[:2], app.endpoints[:1], app.endpoints):
            demo.apply(kube, [replace(app, endpoints=endpoints)])
            names = {f"echo-{i + 1}" for i in range(len(endpoints))}
            answers_become(platform, target, names, 30)
            time.sleep(1.0)  # load runs on the new set for a while
    print(f"under load: {load.ok} calls, {load.failed} failed, by backend {load.by_backend}")
    assert load.ok > 100
    assert load.failed == 0, load.errors


def test_an_ipvs_rule_deleted_by_hand_comes_back(platform: DevPlatform) -> None:
    tcp = target_of(platform, app_named(platform, "tcp-echo"))
    node = platform.lab_node()
    deleted = node.run(f"ipvsadm -D -t {tcp}")
    assert deleted["returncode"] == 0, deleted
    began = time.monotonic()

    def restored() -> bool:
        return bool(node.run(f"ipvsadm -Ln -t {tcp}")["returncode"] == 0)

    wait_until(restored, 60, f"virtual service {tcp} restored", interval=0.5)
    print(f"restored after {time.monotonic() - began:.1f} s (re-assertion every 5 s)")
    assert set(node.tcp(tcp, count=6)) == {"pod1", "pod2", "pod3"}


def test_a_redis_restart_loses_nothing(platform: DevPlatform) -> None:
    store = platform.store()
    kube = platform.kube()
    grpc_target = target_of(platform, app_named(platform, "grpc-echo"))
    tcp = target_of(platform, app_named(platform, "tcp-echo"))
    before = store.snapshot()
    platform.restart_redis()
    after = store.snapshot()
    assert after.revision == before.revision
    assert after.objects == before.objects

    # Every component reconnects: a change still reaches both tiers.
    app = app_named(platform, "grpc-echo")
    demo.apply(kube, [replace(app, endpoints=app.endpoints[:2])])
    answers_become(platform, grpc_target, {"echo-1", "echo-2"}, 90)
    demo.apply(kube, [app])
    answers_become(platform, grpc_target, {"echo-1", "echo-2", "echo-3"}, 60)
    tcp_app = app_named(platform, "tcp-echo")
    demo.apply(kube, [replace(tcp_app, endpoints=tcp_app.endpoints[:1])])
    node = platform.lab_node()
    wait_until(lambda: set(node.tcp(tcp, count=3)) == {"pod1"}, 90, "L4 follows", interval=1)
    demo.apply(kube, [tcp_app])
    wait_until(lambda: len(set(node.tcp(tcp, count=6))) == 3, 90, "L4 restored", interval=1)
    status = StatusBoard(store).all("l4")[LAB_NODE]
    assert status.error is None


def test_a_burst_of_1000_revisions_ends_in_a_few_applies(platform: DevPlatform) -> None:
    burst = scenarios.burst_of_revisions(platform, 1000)
    try:
        listing = platform.lab_node().run("ipvsadm -Ln")["stdout"]
        assert burst.final_target in listing
        assert f"{burst.vip}:{burst.first_port + burst.revisions - 2}" not in listing
        answers = platform.lab_node().tcp(burst.final_target, count=6)
        assert set(answers) == {"pod1", "pod2", "pod3"}, answers
        print(f"1,000 revisions: {burst.applies} applies on {LAB_NODE} in {burst.seconds:.1f} s")
        assert 1 <= burst.applies <= 50
    finally:
        scenarios.remove_burst(platform)
