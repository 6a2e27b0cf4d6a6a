"""HTTPS through a real Envoy: SNI picks the certificate; a certificate Envoy rejects is
NACKed, recorded, and leaves the last good one in force until a valid change arrives."""

from __future__ import annotations

import http.client
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from devbed.l7harness import (
    Bed,
    der,
    https_get,
    listener,
    load_balancer,
    served_certificate,
    service,
    tls_connect,
    who,
)
from devbed.pki import Chain, Pair, chain, key_pem, self_signed
from devbed.process import wait_until
from slb.model import Certificate
from slb.snapshot import Put
from slb.storage.secrets import SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store


def certificate(name: str, pair: Pair, key_ref: str, store: Store) -> Certificate:
    SecretStore(store).put_key(key_ref, pair.key_pem)
    return Certificate(name=name, chain_pem=pair.chain_pem, key_ref=key_ref)


def https_world(store: Store, bed: Bed, certs: list[Certificate], **extra: Any) -> tuple[str, int]:
    backends = bed.backends(["web1", "web2"])
    vip = bed.net.address(2)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("web", [(b.address, b.http_port) for b in backends], port_name="http")),
        *(Put(c) for c in certs),
        Put(listener("web", "HTTPS", 8443, app="web", target_port="http",
                     certificates=[c.name for c in certs], **extra)),
    ])  # fmt: skip
    return vip, 8443


def _admitted(vip: str, port: int, sni: str | None) -> bool:
    """Whether a TLS handshake with the listener completes (a refused one is closed)."""
    try:
        served_certificate(vip, port, sni)
    except OSError:  # ssl.SSLError is one
        return False
    return True


def test_one_certificates_connection_limit_counts_clients_with_and_without_sni(
    store: Store, bed: Bed
) -> None:
    """`max_connections` holds for the whole listener, whatever name a client sends or if
    it sends none (each filter chain counts its own: one chain, one count)."""
    pair = self_signed("shop.test")
    vip, port = https_world(store, bed, [certificate("shop", pair, "shop-1", store)],
                            limits={"max_connections": 2})  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: _admitted(vip, port, "shop.test"), 30, "the listener answers")
    held = [tls_connect(vip, port, "shop.test"), tls_connect(vip, port, None)]
    time.sleep(0.5)
    assert not _admitted(vip, port, "shop.test")
    assert not _admitted(vip, port, None)
    held.pop().close()
    wait_until(lambda: _admitted(vip, port, "shop.test"), 10, "a connection freed")
    for tls in held:
        tls.close()


def test_sni_picks_the_certificate_and_alpn_offers_h2(store: Store, bed: Bed) -> None:
    a = self_signed("a.shop.test", "www.a.shop.test")
    b = self_signed("b.shop.test", "*.b.shop.test")
    vip, port = https_world(
        store, bed,
        [certificate("site-a", a, "site-a-1", store), certificate("site-b", b, "site-b-1", store)],
    )  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    for sni, expected in [
        ("a.shop.test", a), ("www.a.shop.test", a), ("b.shop.test", b),
        ("api.b.shop.test", b), ("unknown.test", a), (None, a),
    ]:  # fmt: skip
        served, alpn = served_certificate(vip, port, sni)
        assert served == der(expected.chain_pem), sni
        assert alpn == "h2"
    status, body = https_get(vip, port, "b.shop.test")
    assert status == 200
    assert body in {"web1", "web2"}


def test_a_rejected_certificate_is_nacked_recorded_and_the_old_one_keeps_serving(
    store: Store, bed: Bed
) -> None:
    good = self_signed("shop.test")
    vip, port = https_world(store, bed, [certificate("shop", good, "shop-1", store)])
    bed.xds.start()
    bed.envoy("n1")
    assert served_certificate(vip, port, "shop.test")[0] == der(good.chain_pem)
    board = StatusBoard(store)

    # A renewed certificate whose key does not match it: Envoy must reject it.
    renewed = self_signed("shop.test")
    SecretStore(store).put_key("shop-2-wrong", key_pem())
    bad_revision = store.put(Certificate(name="shop", chain_pem=renewed.chain_pem,
                                         key_ref="shop-2-wrong"))  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = board.all("l7").get("n1")
        if status is not None and status.error:
            break
        time.sleep(0.1)
    assert status is not None
    assert status.error is not None
    assert status.error_revision == bad_revision
    assert status.revision < bad_revision  # it still serves the last good revision
    assert status.error.startswith("Secret: ")
    assert "KEY_VALUES_MISMATCH" in status.error  # Envoy's own words
    assert bed.xds.metric('openslb_xds_nacks_total{group="default",type="secrets"}') == 1
    assert served_certificate(vip, port, "shop.test")[0] == der(good.chain_pem)
    assert https_get(vip, port, "shop.test")[0] == 200

    # Not re-sent in a loop: nothing more goes out while the desired state stays the same.
    sent = bed.xds.metric('openslb_xds_responses_total{mode="delta",type="secrets"}')
    time.sleep(3)
    assert bed.xds.metric('openslb_xds_responses_total{mode="delta",type="secrets"}') == sent
    assert bed.xds.metric("openslb_xds_nacks_total") == 1

    # The next valid change applies, and the error clears.
    SecretStore(store).put_key("shop-2", renewed.key_pem)
    fixed = store.put(Certificate(name="shop", chain_pem=renewed.chain_pem, key_ref="shop-2"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if served_certificate(vip, port, "shop.test")[0] == der(renewed.chain_pem):
            break
        time.sleep(0.1)
    assert served_certificate(vip, port, "shop.test")[0] == der(renewed.chain_pem)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and board.all("l7")["n1"].revision < fixed:
        time.sleep(0.1)
    final = board.all("l7")["n1"]
    assert final.revision == fixed
    assert final.error is None


def test_grpc_over_tls_h2_end_to_end(store: Store, bed: Bed) -> None:
    """HTTPS listeners speak h2 (ALPN) downstream and gRPC passes through to h2c backends."""
    pair = self_signed("grpc.shop.test")
    backends = bed.backends(["g1", "g2"])
    vip = bed.net.address(9)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in backends])),
        Put(certificate("grpc", pair, "grpc-1", store)),
        Put(listener("echo", "HTTPS", 443, backend_protocol="h2c", certificates=["grpc"],
                     health_check={"type": "grpc"})),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    credentials = grpc.ssl_channel_credentials(root_certificates=pair.chain_pem.encode())
    options = [("grpc.ssl_target_name_override", "grpc.shop.test")]
    with grpc.secure_channel(f"{vip}:443", credentials, options=options) as chan:
        grpc.channel_ready_future(chan).result(timeout=20)
        answers = {who(chan) for _ in range(20)}
    assert answers == {"g1", "g2"}


def _handshake(vip: str, port: int, *, client: Chain | None = None,
               max_version: ssl.TLSVersion | None = None) -> str:  # fmt: skip
    """GET / over TLS with an optional client certificate; the status, or how it failed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        context.maximum_version = max_version
    if client is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_text(client.chain_pem)
            key.write_text(client.key_pem)
            context.load_cert_chain(cert, key)
    try:
        conn = http.client.HTTPSConnection(vip, port, timeout=5, context=context)
        conn.request("GET", "/", headers={"Host": "shop.test"})
        return str(conn.getresponse().status)
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__


def test_client_certificates_and_the_tls_policy(store: Store, bed: Bed) -> None:
    """#17 item 4: a listener requiring client certificates takes only those chaining to
    its CA and naming an allowed client; a TLS 1.3 listener refuses a TLS 1.2 client."""
    server = certificate("site", self_signed("shop.test"), "site-1", store)
    trusted = chain("app.clients.shop.test")
    other_name = chain("intruder.clients.shop.test")
    ca_bundle = trusted.root_pem + other_name.root_pem
    vip, port = https_world(store, bed, [server])
    mtls = {"mode": "required", "ca_pem": ca_bundle, "subject_alt_names": ["app.clients.shop.test"]}
    store.apply([
        Put(listener("mtls", "HTTPS", 8444, app="web", target_port="http",
                     certificates=["site"], client_certificates=mtls)),
        Put(listener("modern", "HTTPS", 8445, app="web", target_port="http",
                     certificates=["site"], tls_policy="tls13")),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: _handshake(vip, 8445) == "200", 30, "the listeners")
    assert _handshake(vip, 8444, client=trusted) == "200"
    assert _handshake(vip, 8444) != "200", "no client certificate"
    assert _handshake(vip, 8444, client=other_name) != "200", "a name not allowed"
    unknown = chain("app.clients.shop.test")  # the right name, from another CA
    assert _handshake(vip, 8444, client=unknown) != "200", "a CA not trusted"
    assert _handshake(vip, port) == "200", "the listener without client certificates"
    assert _handshake(vip, 8445, max_version=ssl.TLSVersion.TLSv1_2) != "200"
    assert _handshake(vip, port, max_version=ssl.TLSVersion.TLSv1_2) == "200"
