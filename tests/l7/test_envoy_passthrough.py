"""TLS listeners through a real Envoy. Passthrough: each connection goes, unopened, to the
backends of the rule whose hosts match the name its client sends (SNI); the backends' own
certificates are what the client sees. Terminate: Envoy ends the TLS with the certificate
naming those hosts and forwards the plain stream."""

from __future__ import annotations

import pytest

from devbed.l7harness import (
    Bed,
    der,
    https_get,
    listener,
    load_balancer,
    served_certificate,
    service,
)
from devbed.pki import self_signed
from devbed.process import wait_until
from slb.model import ModelError
from slb.snapshot import Put
from slb.storage.store import Store
from tests.l7.test_envoy_tls import certificate

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


def test_a_terminating_tls_listener_ends_tls_and_forwards_the_plain_stream(
    store: Store, bed: Bed
) -> None:
    """The backends speak plain HTTP/1.1: what reaches them is the client's stream with the
    TLS taken off, by the rule of the name it sent, under the certificate of that name."""
    one, two = bed.backends(["s1", "s2"])
    vip = bed.net.address(10)
    a, b = self_signed("a.shop.test"), self_signed("b.shop.test")
    rules = [
        {"name": f"to-{n}", "hosts": [f"{h}.shop.test"],
         "forward_to": [{"selector": {"match_labels": {"app": n}}}]}
        for n, h in (("s1", "a"), ("s2", "b"))
    ]  # fmt: skip
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("s1", [(one.address, one.http_port)], port_name="http")),
        Put(service("s2", [(two.address, two.http_port)], port_name="http")),
        Put(certificate("site-b", b, "site-b-1", store)),
        Put(certificate("site-a", a, "site-a-1", store)),
        Put(listener("term", "TLS", 8443, app="s1", target_port="http",
                     certificates=["site-b", "site-a"], routes=rules)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: served_certificate(vip, 8443, "a.shop.test")[0] == der(a.chain_pem), 30,
               "terminate")  # fmt: skip
    assert https_get(vip, 8443, "a.shop.test") == (200, "s1")
    assert https_get(vip, 8443, "b.shop.test") == (200, "s2")
    served, alpn = served_certificate(vip, 8443, "b.shop.test")
    assert (served, alpn) == (der(b.chain_pem), None)  # no ALPN: the stream is not Envoy's
