"""Which Services are openslb's (label, `spec.loadBalancerClass`, `cmi.claim_classless`), and
the Service spec fields of type LoadBalancer that openslb honours or refuses by name."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cmi import vips
from cmi.build import Previous, dedicated_name
from cmi.k8s.writer import CONDITION
from cmi.report import exposure
from slb.config import CmiSettings, ConfigError
from slb.model import AddressPool
from tests.cmi.test_build import DEFAULTS, run, service
from tests.cmi.test_steps import Allocations

UNLABELLED = {"app": "cart"}
CLASSLESS = replace(DEFAULTS, claim_classless=True)


def lb(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return service(labels=labels, type="LoadBalancer", **spec)


def test_a_service_of_openslbs_class_is_claimed_without_the_label() -> None:
    built = run(lb(UNLABELLED, loadBalancerClass="openslb.io/slb"))
    assert built.exposed
    assert built.instance == dedicated_name("shop", "cart")
    assert len(built.listeners) == 3
    assert not built.events


def test_the_class_is_a_setting() -> None:
    defaults = replace(DEFAULTS, load_balancer_class="example.com/ours")
    assert run(lb(UNLABELLED, loadBalancerClass="example.com/ours"), defaults=defaults).exposed
    mine = run(lb(UNLABELLED, loadBalancerClass="openslb.io/slb"), defaults=defaults)
    assert not mine.exposed
    assert mine.foreign


@pytest.mark.parametrize("labels", [UNLABELLED, None])  # None: labelled expose=true
def test_another_class_is_never_touched_label_or_not(labels: dict[str, str] | None) -> None:
    built = run(lb(labels, loadBalancerClass="example.com/other"))
    assert not built.exposed
    assert built.foreign
    assert (built.service, built.dedicated, built.listeners) == (None, None, ())
    if labels is None:  # the label is ignored, and the Service hears why
        (event,) = built.events
        assert (event.type, event.reason) == ("Warning", "OtherLoadBalancerClass")
        assert "example.com/other" in event.message
        assert "openslb.io/expose" in event.message
    else:  # not labelled: another controller's business, nothing said
        assert not built.events


def test_another_class_wins_over_a_label_naming_a_shared_instance() -> None:
    built = run(lb({"openslb.io/expose": "public"}, loadBalancerClass="example.com/other"))
    assert not built.exposed
    assert [e.reason for e in built.events] == ["OtherLoadBalancerClass"]


def test_classless_services_are_claimed_only_with_claim_classless() -> None:
    assert not run(lb(UNLABELLED)).exposed
    assert not run(lb(UNLABELLED)).foreign
    claimed = run(lb(UNLABELLED), defaults=CLASSLESS)
    assert claimed.exposed
    assert claimed.instance == dedicated_name("shop", "cart")
    # Only type LoadBalancer: a ClusterIP Service still needs the label.
    assert not run(service(labels=UNLABELLED, type="ClusterIP"), defaults=CLASSLESS).exposed


def test_the_label_keeps_working_on_any_type() -> None:
    for type_ in ("ClusterIP", "NodePort", "LoadBalancer"):
        assert run(service(type=type_)).exposed
    shared = run(lb({"openslb.io/expose": "public"}, loadBalancerClass="openslb.io/slb"))
    assert shared.instance == "public"


def test_a_deleted_service_of_openslbs_class_owns_nothing() -> None:
    body = lb(UNLABELLED, loadBalancerClass="openslb.io/slb")
    body["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    assert not run(body).exposed


@pytest.mark.parametrize("bad", ["slb", "openslb.io/", "Open SLB/x", "openslb.io/" + "x" * 64])
def test_the_class_setting_must_be_a_class_kubernetes_accepts(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^cmi\.load_balancer_class: "):
        CmiSettings(load_balancer_class=bad)


# -- spec fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "annotations", "allowed"),
    [
        ({"loadBalancerSourceRanges": ["198.18.10.0/24", "198.19.0.1/16"]}, {},
         ("198.18.10.0/24", "198.19.0.0/16")),
        ({}, {"service.beta.kubernetes.io/load-balancer-source-ranges": "198.18.10.0/24, ::1/128"},
         ("198.18.10.0/24", "::1/128")),
        ({"loadBalancerSourceRanges": ["0.0.0.0/0", "198.18.10.0/24"]}, {},
         ("0.0.0.0/0", "198.18.10.0/24")),
    ],
)  # fmt: skip
def test_source_ranges_become_every_listeners_allowed_sources(
    spec: dict[str, Any], annotations: dict[str, str], allowed: tuple[str, ...]
) -> None:
    """#17 item 2: both tiers enforce a listener's allowed networks (Envoy's RBAC, the LB
    node's VIP guard), so a restricted Service is served, restricted, on every port."""
    body = lb(UNLABELLED, loadBalancerClass="openslb.io/slb", **spec)
    body["metadata"]["annotations"] = annotations
    built = run(body)
    assert built.exposed
    assert built.listeners
    for listener in built.listeners:
        assert tuple(str(n) for n in listener.allowed_sources) == allowed
    assert built.events == ()


def test_bad_source_ranges_are_refused_by_name_and_a_served_service_keeps_its_own() -> None:
    body = lb(loadBalancerSourceRanges=["198.18.10.0/24", "not-a-cidr"])
    built = run(body)
    assert not built.exposed
    assert built.refused_reason == "InvalidSourceRanges"
    (event,) = built.events
    assert (event.type, event.reason) == ("Warning", "InvalidSourceRanges")
    assert "spec.loadBalancerSourceRanges[1]: 'not-a-cidr' is not a CIDR" in event.message
    served = run(lb(loadBalancerSourceRanges=["198.18.10.0/24"]))
    previous = Previous(service=served.service, load_balancer=served.dedicated,
                        listeners={li.name: li for li in served.listeners})  # fmt: skip
    kept = run(body, previous=previous)
    assert kept.exposed
    assert kept.listeners == served.listeners
    assert kept.refused_reason == "InvalidSourceRanges"


def test_source_ranges_open_to_every_address_restrict_nothing() -> None:
    built = run(lb(loadBalancerSourceRanges=["0.0.0.0/0", "::/0"]))
    assert built.exposed
    assert built.refused is None
    assert all(li.allowed_sources == () for li in built.listeners)


def test_load_balancer_ip_asks_for_the_vip_and_the_annotation_wins() -> None:
    built = run(lb(loadBalancerIP="198.18.0.77"))
    assert built.dedicated is not None
    assert str(built.dedicated.vip) == "198.18.0.77"
    both = run(service(annotations={"openslb.io/vip": "198.18.0.78"}, loadBalancerIP="198.18.0.77"))
    assert both.dedicated is not None
    assert str(both.dedicated.vip) == "198.18.0.78"
    assert [e.reason for e in both.events] == ["LoadBalancerIPIgnored"]


def test_a_load_balancer_ip_no_vip_may_have_refuses_the_service() -> None:
    built = run(lb(loadBalancerIP="127.0.0.1"))
    assert not built.exposed
    assert built.refused is not None
    assert "spec.loadBalancerIP" in built.refused
    assert [e.reason for e in built.events] == ["Refused"]


def test_load_balancer_ip_on_a_shared_instance_is_ignored_with_a_warning() -> None:
    built = run(lb({"openslb.io/expose": "public"}, loadBalancerIP="198.18.0.99"))
    assert built.instance == "public"
    assert [e.reason for e in built.events] == ["LoadBalancerIPIgnored"]
    same = run(lb({"openslb.io/expose": "public"}, loadBalancerIP="198.18.0.10"))
    assert not same.events


def test_the_vip_is_of_the_services_primary_ip_family_where_its_pool_has_one() -> None:
    dual = {"default": AddressPool.model_validate(
        {"name": "default", "cidrs": ["198.18.0.0/29", "2001:db8::/125"]})}  # fmt: skip
    for families, version in ((["IPv6"], 6), (["IPv4"], 4), ([], 4)):
        built = run(lb(ipFamilies=families))
        served, _ = vips.desired(built, Previous(), Allocations(), dual)
        assert served.dedicated is not None
        assert served.dedicated.vip is not None
        assert served.dedicated.vip.version == version
        assert served.caveats == ()
    v4_only = {
        "default": AddressPool.model_validate({"name": "default", "cidrs": ["198.18.0.0/29"]})
    }
    served, _ = vips.desired(run(lb(ipFamilies=["IPv6"])), Previous(), Allocations(), v4_only)
    assert served.dedicated is not None
    assert str(served.dedicated.vip) == "198.18.0.1"
    assert [e.reason for e in served.events] == ["IPFamilyNotOffered"]
    message = exposure(served, served.dedicated.vip, {}, None).conditions[CONDITION]
    assert message[:2] == ("True", "Exposed")
    assert "not as asked: IPFamilyNotOffered: " in message[2]


@pytest.mark.parametrize(
    ("policy", "families"),
    [("RequireDualStack", ["IPv4", "IPv6"]), ("PreferDualStack", ["IPv6", "IPv4"]),
     ("RequireDualStack", ["IPv4"])],
)  # fmt: skip
def test_dual_stack_is_served_on_the_primary_family_and_says_so(
    policy: str, families: list[str]
) -> None:
    built = run(lb(ipFamilyPolicy=policy, ipFamilies=families))
    assert built.exposed
    assert built.ip_family == (6 if families[0] == "IPv6" else 4)
    (caveat,) = built.caveats
    assert caveat.startswith(f"DualStackNotSupported: ipFamilyPolicy {policy}")
    (event,) = built.events
    assert (event.type, event.reason) == ("Warning", "DualStackNotSupported")
    single = run(lb(ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"]))
    assert (single.caveats, single.events) == ((), ())


def test_allocate_load_balancer_node_ports_false_leaves_node_mode_no_nodeports() -> None:
    ports = [{"name": "grpc", "port": 50051}]
    body = lb(ports=ports, allocateLoadBalancerNodePorts=False)
    body["metadata"]["annotations"] = {"openslb.io/backend-mode": "node"}
    built = run(body)
    assert built.service is not None
    assert built.service.backend_mode == "pod"
    (event,) = built.events
    assert "allocateLoadBalancerNodePorts" in event.message
