"""What the API server accepts, cmi takes: a Service is translated or refused alone, and
cmi never stops because of what an object holds.

Generated objects (`devbed.apiobjects`) keep to kube-apiserver 1.37's validation; the first
test runs them through the whole pure pipeline, the last creates a sample on the real API
server under a running controller.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cmi.build import Defaults, Previous, build, endpoint_ip
from cmi.k8s.client import KubeClient
from cmi.k8s.writer import CONDITION
from devbed.apiobjects import Cluster, clusters, sample, through_pipeline
from tests.cmi.test_controller import Start, create, eventually, put_slice, svc

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(clusters())
def test_every_valid_service_is_translated(cluster: Cluster) -> None:
    outcome = through_pipeline(cluster)  # nothing raises, from build to Envoy resources
    built = outcome.built
    assert built.refused is None, built.refused
    assert built.exposed
    assert built.service is not None
    messages = " ".join(e.message for e in built.events)
    for port in cluster.service["spec"]["ports"]:
        served = any(
            li.port == port["port"] and li.protocol.transport == port["protocol"]
            for li in built.listeners
        )
        if port["protocol"] == "SCTP":
            assert not served
            assert f"port {port['port']}/SCTP" in messages
        else:  # served, or an Event says why not
            assert served or f"port {port['port']}" in messages, (port, built.events)
    # Each listener is resolved (a Service's ports never clash with each other) ...
    assert {r.listener.name for r in outcome.state.listeners} == {li.name for li in built.listeners}
    # ... and forwards only to addresses the objects hold.
    given_addresses = {
        endpoint_ip(address)
        for slice_ in cluster.slices
        for endpoint in slice_["endpoints"]
        for address in endpoint["addresses"]
    } | {
        endpoint_ip(a["address"])
        for node in cluster.nodes.values()
        for a in node["status"]["addresses"]
    }
    for resolved in outcome.state.listeners:
        assert {b.address for b in resolved.backends} <= given_addresses


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("198.18.0.1", "198.18.0.1"),
        ("198.018.000.001", "198.18.0.1"),  # leading zeros: decimal, as Go's ParseIPSloppy
        ("::ffff:198.18.0.1", "198.18.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("198.18.0.256", None),
        ("198.18.0", None),
        ("198.18.0.\u0661", None),  # a digit (Arabic-Indic one), but not ASCII
        ("foo", None),
    ],
)
def test_endpoint_addresses_in_every_form_the_api_server_held(
    text: str, address: str | None
) -> None:
    assert endpoint_ip(text) == (ipaddress.ip_address(address) if address else None)


def labelled(ports: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop", "name": "cart", "labels": {"openslb.io/expose": "true"}, **meta
        },
        "spec": {"type": "LoadBalancer", "ports": ports},
    }  # fmt: skip


def test_a_long_port_name_is_served() -> None:
    """The issue's case: a name the API server takes (a DNS label) stopped cmi for good."""
    body = labelled([{"name": "metrics-exporter-http-port", "port": 9100, "protocol": "TCP"}])
    built = build(body, slices=[], nodes={}, defaults=Defaults(), previous=Previous(), instances={})
    assert built.refused is None
    (listener,) = built.listeners
    assert listener.target_port == "metrics-exporter-http-port"


def test_what_the_model_cannot_take_refuses_that_service_and_keeps_what_it_served() -> None:
    good = labelled([{"name": "web", "port": 80, "protocol": "TCP"}])
    served = build(
        good, slices=[], nodes={}, defaults=Defaults(), previous=Previous(), instances={}
    )
    assert served.service is not None
    assert served.dedicated is not None
    previous = Previous(
        service=served.service,
        listeners={li.name: li for li in served.listeners},
        load_balancer=served.dedicated,
    )
    # Not a Service the API server would take (a 64-character port name): the model's own
    # limits are the last line, and what trips them refuses this Service alone.
    bad = labelled([{"name": "p" * 64, "port": 80, "protocol": "TCP"}])
    kept = build(bad, slices=[], nodes={}, defaults=Defaults(), previous=previous, instances={})
    assert kept.refused is not None
    assert "spec.ports[0].name" in kept.refused
    assert kept.refused.endswith("keeping what it was served with")
    assert (kept.exposed, kept.service, kept.listeners) == (True, served.service, served.listeners)
    assert kept.dedicated == served.dedicated
    assert [e.reason for e in kept.events] == ["Refused"]
    new = build(bad, slices=[], nodes={}, defaults=Defaults(), previous=Previous(), instances={})
    assert (new.exposed, new.listeners) == (False, ())
    assert new.refused is not None
    assert new.refused.endswith("not exposed")
    # A body that is not even shaped as the API has it is refused too, never raised.
    shapeless = labelled([{"name": "web"}])  # no port number
    odd = build(
        shapeless, slices=[], nodes={}, defaults=Defaults(), previous=Previous(), instances={}
    )
    assert odd.refused is not None
    assert "KeyError" in odd.refused


def test_on_the_api_server_cmi_stays_up_and_exposes_the_services_after(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    """A sample of generated Services and slices created on kube-apiserver, then one plain
    Service: cmi keeps running and exposes it."""
    running = cmi()
    drawn = sample(clusters(legacy=False, namespace=namespace), 20)
    dedicated = []  # the Services that ask for an instance of their own
    for number, generated in enumerate(drawn):
        service, slices = generated.numbered(number).for_api()
        create(admin, namespace, service)
        if service["metadata"]["labels"]["openslb.io/expose"] == "true":
            dedicated.append(service["metadata"]["name"])
        for slice_ in slices:
            put_slice(admin, namespace, slice_)
    create(admin, namespace, labelled([{"name": "web", "port": 80, "protocol": "TCP"}])
           | {"metadata": {"name": "canary", "labels": {"openslb.io/expose": "true"}}})  # fmt: skip

    def exposed(name: str) -> bool:
        conditions = svc(admin, namespace, name).get("status", {}).get("conditions") or []
        return any(c["type"] == CONDITION and c["status"] == "True" for c in conditions)

    eventually(lambda: exposed("canary"), "the canary exposed", timeout=60)
    assert running.thread.is_alive()
    eventually(lambda: all(exposed(name) for name in dedicated), "every generated one exposed")
    listed = admin.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert [e["message"] for e in listed if e["reason"] == "Refused"] == []
