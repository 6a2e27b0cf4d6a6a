"""Changes reach real Envoys safely: backends come and go under load, the xDS server
restarts under load, SotW and Delta Envoys end up identical, and routes route."""

from __future__ import annotations

import time

import grpc
import pytest

from devbed.l7harness import (
    ECHO,
    RAW,
    BackendServer,
    Bed,
    background_load,
    channel,
    dynamic_resources,
    host_stats,
    http_get,
    listener,
    load_balancer,
    service,
    wait_for_answer,
    wait_programmed,
    who,
)
from devbed.pki import self_signed
from devbed.process import wait_until
from slb.model import Backend, Certificate, Conditions, Service
from slb.snapshot import Delete, Put
from slb.storage.secrets import SecretStore
from slb.storage.store import Store


def echo_service(backends: list[BackendServer], draining: tuple[str, ...] = ()) -> Service:
    svc = service("echo", [(b.address, b.grpc_port) for b in backends])
    terminating = Conditions(ready=False, serving=True, terminating=True)
    endpoints = tuple(
        Backend(address=b.address, port=b.grpc_port, conditions=terminating)
        if b.name in draining
        else Backend(address=b.address, port=b.grpc_port)
        for b in backends
    )
    return svc.model_copy(update={"backends": {"grpc": endpoints}})


def test_a_backend_leaves_and_another_joins_under_load_without_a_failed_call(
    store: Store, bed: Bed
) -> None:
    b1, b2, b3, b4 = bed.backends(["b1", "b2", "b3", "b4"])
    vip = bed.net.address(3)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(echo_service([b1, b2, b3])),
        Put(listener("echo", "GRPC", 50051)),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    target = f"{vip}:50051"
    wait_for_answer(target)
    with background_load(target) as result:
        time.sleep(1)
        # b1's pod terminates: it drains (no new calls), then stops; b4 joins.
        store.put(echo_service([b1, b2, b3], draining=("b1",)))
        wait_until(
            lambda: b1.grpc_target not in host_stats(envoy, "echo", "cx_active"), 10, "drain"
        )
        b1.stop()
        store.put(echo_service([b2, b3, b4]))
        wait_until(
            lambda: host_stats(envoy, "echo", "rq_success").get(b4.grpc_target, 0) > 20,
            20,
            "b4 taking calls",
        )
        time.sleep(1)
    assert result.failed == 0, result.errors
    assert result.ok > 200
    assert result.by_backend["b4"] > 0
    assert set(result.by_backend) == {"b1", "b2", "b3", "b4"}


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_restarting_the_xds_server_under_load_fails_no_call_and_envoy_resyncs(
    store: Store, bed: Bed, delta: bool
) -> None:
    b1, b2, b3, b4 = bed.backends(["b1", "b2", "b3", "b4"])
    vip = bed.net.address(4)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(echo_service([b1, b2, b3])),
        Put(listener("echo", "GRPC", 50051)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1", delta=delta)
    target = f"{vip}:50051"
    wait_for_answer(target)
    with background_load(target) as result:
        time.sleep(1)
        bed.xds.stop()
        time.sleep(1)
        revision = store.put(echo_service([b1, b2, b3, b4]))  # while the server is down
        time.sleep(1)
        bed.xds.start()
        wait_programmed(store, ["n1"], revision)
        wait_for_answer(target, expect={"b4"})
        time.sleep(0.5)
    assert result.failed == 0, result.errors
    assert result.ok > 200
    assert "n1 connected" in bed.xds.log()  # the new server's log


def test_sotw_and_delta_envoys_converge_to_the_same_configuration(store: Store, bed: Bed) -> None:
    b1, b2, b3 = bed.backends(["b1", "b2", "b3"])
    vip = bed.net.address(5)
    a = self_signed("a.shop.test")
    SecretStore(store).put_key("a-1", a.key_pem)
    web = service("web", [(b.address, b.http_port) for b in (b1, b2)], port_name="http")
    api = service("api", [(b3.address, b3.http_port)], port_name="http")
    routes = [
        {
            "name": "api",
            "path_prefix": "/api/",
            "forward_to": [{"selector": {"match_labels": {"app": "api"}}}],
        },
        {"name": "admin", "hosts": ["admin.shop.test"]},
    ]
    changes: list[list[Put | Delete]] = [
        [
            Put(load_balancer("lb", vip)), Put(echo_service([b1, b2])), Put(web), Put(api),
            Put(listener("echo", "GRPC", 50051)),
            Put(listener("web", "HTTP", 8080, target_port="http", routes=routes)),
        ],
        [Put(echo_service([b1, b2, b3]))],  # endpoints only
        [Put(listener("web", "HTTP", 8080, target_port="http", routes=routes[:1],
                      scheduler="lc", request_timeout_s=30))],
        [
            Delete("Listener", "web"),
            Put(Certificate(name="a", chain_pem=a.chain_pem, key_ref="a-1")),
            Put(listener("secure", "HTTPS", 8443, app="web", target_port="http",
                         certificates=["a"])),
        ],
    ]  # fmt: skip
    store.apply(changes[0])
    bed.xds.start()
    delta = bed.envoy("n-delta", delta=True)
    sotw = bed.envoy("n-sotw", delta=False)
    for i, ops in enumerate(changes):
        revision = store.apply(ops)
        wait_programmed(store, ["n-delta", "n-sotw"], revision)
        seen_delta, seen_sotw = dynamic_resources(delta), dynamic_resources(sotw)
        assert seen_delta == seen_sotw, f"after change {i}"
        assert seen_delta["listeners"], f"after change {i}"
    final = dynamic_resources(delta)
    assert sorted(final["listeners"]) == ["echo", "secure"]
    assert sorted(final["clusters"]) == ["echo", "secure"]
    assert sorted(final["secrets"]) == ["a"]
    assert len(final["endpoints"]["echo"]["endpoints"][0]["lb_endpoints"]) == 3


def test_routes_by_host_path_prefix_and_grpc_method(store: Store, bed: Bed) -> None:
    b1, b2, b3 = bed.backends(["b1", "b2", "b3"])
    vip = bed.net.address(6)
    http_routes = [
        {"name": "static", "path_prefix": "/static/",
         "forward_to": [{"selector": {"match_labels": {"app": "static"}}}]},
        {"name": "api", "hosts": ["api.shop.test", "*.api.shop.test"],
         "forward_to": [{"selector": {"match_labels": {"app": "api"}}}]},
    ]  # fmt: skip
    grpc_routes = [
        {"name": "hold", "grpc_service": "openslb.test.Echo", "grpc_method": "Hold",
         "forward_to": [{"selector": {"match_labels": {"app": "holder"}}}]},
    ]  # fmt: skip
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("web", [(b1.address, b1.http_port)], port_name="http")),
        Put(service("static", [(b2.address, b2.http_port)], port_name="http")),
        Put(service("api", [(b3.address, b3.http_port)], port_name="http")),
        Put(service("echo", [(b1.address, b1.grpc_port)])),
        Put(service("holder", [(b2.address, b2.grpc_port)])),
        Put(listener("web", "HTTP", 8080, target_port="http", routes=http_routes)),
        Put(listener("echo", "GRPC", 50051, routes=grpc_routes)),
        # HTTP listeners take h2c too: gRPC through an HTTP listener with h2c backends.
        Put(listener("mixed", "HTTP", 8081, app="echo", backend_protocol="h2c",
                     health_check={"type": "grpc"})),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    assert http_get(vip, 8080, "www.shop.test", "/") == (200, "b1")
    assert http_get(vip, 8080, "www.shop.test", "/static/app.js") == (200, "b2")
    assert http_get(vip, 8080, "api.shop.test", "/") == (200, "b3")
    assert http_get(vip, 8080, "v2.api.shop.test:8080", "/static/x") == (200, "b2")
    with channel(f"{vip}:50051") as chan:
        assert who(chan) == "b1"
        assert chan.unary_unary(ECHO + "Hold", **RAW)(b"1").decode() == "b2"
    with channel(f"{vip}:8081") as chan:
        assert who(chan) == "b1"
        with pytest.raises(grpc.RpcError):
            chan.unary_unary("/no.Such/Method", **RAW)(b"", timeout=5)


def test_a_removed_listener_drains_its_calls_in_flight(store: Store, bed: Bed) -> None:
    """#17 item 6: a call in flight when its listener is removed finishes (Envoy drains the
    listener: HTTP/2 GOAWAY, no new connection); the next call finds no listener."""
    (b1,) = bed.backends(["b1"])
    vip = bed.net.address(12)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b1.address, b1.grpc_port)])),
        Put(listener("echo", "GRPC", 50051)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1", drain_time_s=10)
    wait_for_answer(f"{vip}:50051")
    results: list[object] = []
    with channel(f"{vip}:50051") as chan:
        held = chan.unary_unary(ECHO + "Hold", **RAW).future(b"3000", timeout=10)
        time.sleep(0.5)
        store.apply([Delete("Listener", "echo")])
        wait_until(lambda: "echo" not in dynamic_resources(bed.envoys[0]).get("listeners", {}), 10,
                   "the listener removed")  # fmt: skip
        results.append(held.result(timeout=10))
    assert results == [b"b1"]
    with channel(f"{vip}:50051") as chan, pytest.raises(grpc.RpcError):
        who(chan, timeout=3)
