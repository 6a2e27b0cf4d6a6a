"""TLS passthrough through a real Envoy: each connection goes, unopened, to the backends of
the rule whose hosts match the name its client sends (SNI); the backends' own certificates
are what the client sees."""

from __future__ import annotations

import pytest

from devbed.l7harness import Bed, der, listener, load_balancer, served_certificate, service
from devbed.process import wait_until
from slb.model import ModelError
from slb.snapshot import Put
from slb.storage.store import Store

TLS_PORT = 50443


def test_connections_go_by_their_server_name_to_backends_that_terminate_tls(
    store: Store, bed: Bed
) -> None:
    exact, wild, fallback = bed.backends(["s1", "s2", "s3"], tls_port=TLS_PORT)
    vip = bed.net.address(9)

    def backend(server: str) -> Put:
        chosen = {"s1": exact, "s2": wild, "s3": fallback}[server]
        return Put(service(server, [(chosen.address, TLS_PORT)], port_name="tls"))

    rules = [
        {"name": "exact", "hosts": ["s1.shop.test"],
         "forward_to": [{"selector": {"match_labels": {"app": "s1"}}}]},
        {"name": "wild", "hosts": ["*.shop.test", "s1.shop.test"],
         "forward_to": [{"selector": {"match_labels": {"app": "s2"}}}]},
    ]  # fmt: skip
    store.apply([
        Put(load_balancer("lb", vip)),
        backend("s1"), backend("s2"), backend("s3"),
        Put(listener("pass", "TLS", 8443, app="s3", target_port="tls", routes=rules)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")

    def sees(sni: str) -> bytes:
        return served_certificate(vip, 8443, sni)[0]

    wait_until(lambda: sees("s1.shop.test") == der(exact.tls_certificate()), 30, "passthrough")
    assert sees("a.b.shop.test") == der(wild.tls_certificate())  # the wildcard's
    assert sees("s1.shop.test") == der(exact.tls_certificate())  # exact before wildcard
    assert sees("elsewhere.test") == der(fallback.tls_certificate())  # the listener's own


def test_a_passthrough_listener_refuses_what_needs_envoy_to_read_requests() -> None:
    with pytest.raises(ModelError) as refused:
        listener(
            "pass", "TLS", 8443, access_log=True, health_check={"type": "http", "path": "/"},
            routes=[{"name": "a", "path_prefix": "/x"}], limits={"requests_per_second": 5},
        )  # fmt: skip
    fields = {e.field for e in refused.value.errors}
    assert {"access_log", "health_check.type", "routes.0.path_prefix",
            "limits.requests_per_second"} <= fields  # fmt: skip
