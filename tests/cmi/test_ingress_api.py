"""Ingresses against a real kube-apiserver and Redis, served through a real Envoy: cmi, as
its least-privilege ServiceAccount, gives an Ingress of its IngressClass an instance of its
own, serves its rules with the ingress-nginx annotations it honours, writes its address, and
names in an Event what it does not honour."""

from __future__ import annotations

from typing import Any

from cmi.gateway import instance_name as gateway_instance
from cmi.ingress import CONTROLLER, GROUP, NGINX, instance_name
from cmi.k8s.client import KubeClient
from devbed.l7harness import Bed, http_request, https_get
from devbed.redis import lose
from slb.model import Listener, LoadBalancer, OwnerKind
from slb.storage.store import Store
from tests.cmi.test_controller import events
from tests.cmi.test_gateway_api import (
    Start,
    apply,
    bed_backend,
    eventually,
    gateway,
    gateway_address,
    gateway_class,
    start_on_bed,
)
from tests.cmi.test_tls_secrets import HOST, RENEWED, SITE, put_secret, secret_body, serves
from tests.l7.conftest import bed, net  # noqa: F401  (the L7 bed's fixtures)

API = f"/apis/{GROUP}/v1"


def ingress_class(admin: KubeClient, name: str) -> None:
    apply(admin, f"{API}/ingressclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "IngressClass", "metadata": {"name": name},
        "spec": {"controller": CONTROLLER},
    })  # fmt: skip


def ingress(
    admin: KubeClient,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> None:
    apply(admin, f"{API}/namespaces/{namespace}/ingresses", {
        "apiVersion": f"{GROUP}/v1", "kind": "Ingress",
        "metadata": {"name": name,
                     "annotations": {NGINX + k: v for k, v in (annotations or {}).items()}},
        "spec": spec,
    })  # fmt: skip


def to(service: str, path: str = "/", kind: str = "Prefix") -> dict[str, Any]:
    return {"path": path, "pathType": kind,
            "backend": {"service": {"name": service, "port": {"number": 80}}}}  # fmt: skip


def address(admin: KubeClient, namespace: str, name: str) -> str:
    def ip() -> str | None:
        body = admin.get(f"{API}/namespaces/{namespace}/ingresses/{name}")
        found = ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}]
        return str(found[0]["ip"]) if found[0].get("ip") else None

    return str(eventually(ip, f"Ingress {name}'s address"))


def test_an_ingress_and_its_canary_are_served_through_envoy_as_ingress_nginx_would(
    cmi: Start,
    admin: KubeClient,
    namespace: str,
    store: Store,
    bed: Bed,  # noqa: F811
) -> None:
    """TLS from its Secret, HTTP redirected to HTTPS for its host, a rewrite-target with
    the path's groups, a canary by header, its address in its status (the canary's too), an
    Event naming a snippet it does not run."""
    web, nxt = bed.backends(["web1", "next1"])
    put_secret(admin, namespace, secret_body(SITE))
    bed_backend(admin, namespace, "web", web.address, web.http_port)
    bed_backend(admin, namespace, "web-next", nxt.address, nxt.http_port)
    start_on_bed(cmi, bed)
    class_name = f"openslb-{namespace}"
    ingress_class(admin, class_name)
    shop = to("web", "/shop(/|$)(.*)", "ImplementationSpecific")
    ingress(admin, namespace, "shop", {
        "ingressClassName": class_name,
        "tls": [{"hosts": [HOST], "secretName": "site"}],
        "rules": [{"host": HOST, "http": {"paths": [shop]}},
                  {"host": "plain.test", "http": {"paths": [shop]}}],
    }, {"rewrite-target": "/$2", "configuration-snippet": "return 200 'pwned';"})  # fmt: skip
    ingress(admin, namespace, "shop-next", {
        "ingressClassName": class_name,
        "rules": [{"host": "plain.test", "http": {"paths": [
            to("web-next", "/shop(/|$)(.*)", "ImplementationSpecific")]}}],
    }, {"canary": "true", "canary-by-header": "X-Canary", "rewrite-target": "/$2"})  # fmt: skip
    vip = address(admin, namespace, "shop")

    eventually(lambda: serves(vip, SITE, 443), "Envoy serving the Ingress's certificate")
    status_code, body = https_get(vip, 443, HOST, "/shop/cart")
    assert (status_code, body.strip()) == (200, "web1")
    redirected = http_request(vip, 80, HOST, "/shop/cart")
    assert redirected.status == 308
    assert redirected.headers["location"] == f"https://{HOST}/shop/cart"
    plain = http_request(vip, 80, "plain.test", "/shop/cart?x=1")  # no TLS: not redirected
    assert (plain.status, plain.body.strip(), plain.seen_path) == (200, "web1", "/cart?x=1")
    by_header = {"X-Canary": "always"}
    canary = eventually(
        lambda: (a := http_request(vip, 80, "plain.test", "/shop/a", headers=by_header))
        and a.body.strip() == "next1" and a,
        "the canary answering by header",
    )  # fmt: skip
    assert canary.seen_path == "/a"
    assert address(admin, namespace, "shop-next") == vip  # the canary's is its Ingress's

    balancer = store.get(LoadBalancer, instance_name(namespace, "shop"))
    assert balancer is not None
    assert balancer.obj.owner.kind is OwnerKind.INGRESS
    listeners = [s.obj for s in store.all(Listener).values()
                 if s.obj.load_balancer == balancer.obj.name]  # fmt: skip
    assert sorted(li.port for li in listeners) == [80, 443]
    reasons = eventually(lambda: dict(events(admin, namespace, "shop")), "the Ingress's Events")
    assert f"{NGINX}configuration-snippet" in reasons.get("UnsupportedAnnotation", "")

    put_secret(admin, namespace, secret_body(RENEWED))  # cert-manager renews
    eventually(lambda: serves(vip, RENEWED, 443), "Envoy serving the renewed certificate")

    admin.request("DELETE", f"{API}/namespaces/{namespace}/ingresses/shop")
    eventually(lambda: not [s for s in store.all(Listener).values()
                            if s.obj.load_balancer == balancer.obj.name],
               "its listeners withdrawn (its VIP kept for the release grace)")  # fmt: skip


def test_a_lost_store_gives_gateways_and_ingresses_back_the_addresses_their_status_names(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """Fail static: a Gateway's and an Ingress's VIPs outlive Redis's loss in their status,
    as a Service's do. Gateways are rebuilt before Ingresses: without their status the
    Gateway made second would draw the Ingress's lower address, and clients of both would
    be cut off."""
    running = cmi()
    class_name = f"openslb-{namespace}"
    ingress_class(admin, class_name)
    ingress(admin, namespace, "shop", {"ingressClassName": class_name,
                                       "rules": [{"http": {"paths": [to("web")]}}]})  # fmt: skip
    shop = address(admin, namespace, "shop")
    gateway_class(admin, class_name)
    gateway(admin, namespace, "edge", class_name)
    edge = gateway_address(admin, namespace, "edge")
    assert shop != edge
    instances = {instance_name(namespace, "shop"): shop,
                 gateway_instance(namespace, "edge"): edge}  # fmt: skip
    assert lose(store)

    def vips() -> dict[str, str]:
        return {n: str(s.obj.vip) for n in instances if (s := store.get(LoadBalancer, n))}

    eventually(lambda: len(vips()) == 2, "both instances rebuilt")
    assert vips() == instances
    assert address(admin, namespace, "shop") == shop
    assert gateway_address(admin, namespace, "edge") == edge
    assert running.thread.is_alive()
