"""TLS from Kubernetes Secrets against a real kube-apiserver, Redis, `slb xds` and Envoy:
cmi (under its own RBAC) turns a `kubernetes.io/tls` Secret a Service names into a
Certificate with its key encrypted apart; a renewal (as cert-manager writes one) reaches
Envoy over SDS with no listener rebuilt; a bad renewal keeps the certificate served and
says why in an Event; deleting the Service takes the certificate and its keys away."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cmi import tlssecret
from cmi.build import certificate_name
from cmi.k8s.client import KubeClient
from devbed.l7harness import Bed, der, https_get, served_certificate
from devbed.pki import Pair, self_signed
from slb.certificates import check_pair
from slb.model import Certificate, Listener, LoadBalancer, Owner, OwnerKind
from slb.storage.secrets import SecretStore, add_key
from slb.storage.store import Store
from tests.cmi.test_controller import Start, create, events, eventually, put_slice
from tests.l7.conftest import bed, net  # noqa: F401  (the L7 bed's fixtures)

SITE = self_signed("shop.example.test")
RENEWED = self_signed("shop.example.test")
HOST = "shop.example.test"


def secret_body(pair: Pair, key_pem: str | None = None) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "metadata": {"name": "site"},
        "type": tlssecret.SECRET_TYPE,
        "data": {"tls.crt": b64(pair.chain_pem), "tls.key": b64(key_pem or pair.key_pem)},
    }


def put_secret(admin: KubeClient, namespace: str, body: dict[str, Any]) -> None:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    try:
        admin.get(f"{base}/site")
    except Exception:
        admin.request("POST", base, body=body)
        return
    admin.request("PUT", f"{base}/site", body=body)


def https_service(instance: str = "true", backend_port: int = 8443) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "labels": {"openslb.io/expose": instance},
            "annotations": {tlssecret.ANNOTATION: "site",
                            "openslb.io/backend-protocol": "http1"},
        },
        "spec": {"type": "ClusterIP", "ports": [
            {"name": "https", "port": 8443, "appProtocol": "https", "targetPort": backend_port},
        ]},
    }  # fmt: skip


def https_slice(address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


def serves(address: str, pair: Pair, port: int = 8443) -> bool:
    """Does the TLS listener at `address` present `pair`'s certificate for HOST?"""
    try:
        return served_certificate(address, port, HOST)[0] == der(pair.chain_pem)
    except OSError:
        return False


def certificate(store: Store, namespace: str) -> Certificate | None:
    stored = store.get(Certificate, certificate_name(namespace, "web", "site"))
    return stored.obj if stored is not None else None


def test_a_secret_is_stored_encrypted_renewed_kept_when_bad_and_removed_with_its_service(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, tmp_path: Path
) -> None:
    keyring = add_key(tmp_path / "keys", "test")
    put_secret(admin, namespace, secret_body(SITE))
    cmi(keyring=keyring)
    create(admin, namespace, https_service())
    eventually(lambda: certificate(store, namespace), "the Secret's certificate")
    first = certificate(store, namespace)
    assert first is not None
    assert first.chain_pem == SITE.chain_pem
    assert first.namespace == namespace
    assert first.owner == Owner(kind=OwnerKind.SERVICE, name=f"{namespace}/web")
    listener = next(s.obj for s in store.snapshot().of(Listener).values()
                    if s.obj.owner.name == f"{namespace}/web")  # fmt: skip
    assert listener.certificates == (first.name,)
    raw = store.redis.get(store.key("secret", first.key_ref))
    assert raw is not None
    assert raw.startswith(b"openslb:enc:aesgcm:v1:test:")
    secrets = SecretStore(store, keyring)
    assert secrets.get_key(first.key_ref) == check_pair(SITE.chain_pem, SITE.key_pem).key_pem

    put_secret(admin, namespace, secret_body(RENEWED))  # cert-manager renews
    eventually(lambda: (c := certificate(store, namespace)) and c.chain_pem == RENEWED.chain_pem,
               "the renewed certificate")  # fmt: skip
    renewed = certificate(store, namespace)
    assert renewed is not None
    assert renewed.key_ref != first.key_ref
    assert secrets.get_key(renewed.key_ref) is not None
    eventually(lambda: secrets.get_key(first.key_ref) is None, "the old key deleted")

    wrong_key = self_signed("elsewhere.test").key_pem
    put_secret(admin, namespace, secret_body(SITE, key_pem=wrong_key))
    eventually(lambda: any(r == tlssecret.INVALID for r, _ in events(admin, namespace, "web")),
               "an Event about the bad Secret")  # fmt: skip
    message = next(m for r, m in events(admin, namespace, "web") if r == tlssecret.INVALID)
    assert "tls.key: does not match" in message
    assert "keeping the certificate it was served with" in message
    assert wrong_key.splitlines()[1] not in message
    assert certificate(store, namespace) == renewed

    admin.request("DELETE", f"/api/v1/namespaces/{namespace}/services/web")
    eventually(lambda: certificate(store, namespace) is None, "the certificate withdrawn")
    eventually(lambda: secrets.get_key(renewed.key_ref) is None, "its key deleted")


def test_a_renewed_secret_reaches_envoy_over_sds_without_rebuilding_the_listener(
    cmi: Start,
    admin: KubeClient,
    namespace: str,
    store: Store,
    bed: Bed,  # noqa: F811
) -> None:
    (web,) = bed.backends(["web1"])
    vip = bed.net.address(2)
    store.put(LoadBalancer(name="lb", vip=vip, owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
                           allowed_namespaces=(namespace,)))  # fmt: skip
    put_secret(admin, namespace, secret_body(SITE))
    put_slice(admin, namespace, https_slice(web.address, web.http_port))
    cmi()
    create(admin, namespace, https_service("lb", web.http_port))
    bed.xds.start()
    envoy = bed.envoy("n1")

    eventually(lambda: serves(vip, SITE), "Envoy serving the Secret's certificate")
    status, body = https_get(vip, 8443, HOST)
    assert (status, body.strip()) == (200, "web1")
    modified = envoy.stats("listener_manager.listener_modified")
    pid = envoy.process.pid

    put_secret(admin, namespace, secret_body(RENEWED))
    eventually(lambda: serves(vip, RENEWED), "Envoy serving the renewed certificate")
    assert https_get(vip, 8443, HOST)[0] == 200
    assert envoy.process.pid == pid
    assert envoy.stats("listener_manager.listener_modified") == modified  # SDS, not LDS
