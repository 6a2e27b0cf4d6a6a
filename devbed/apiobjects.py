"""Services, EndpointSlices and Nodes within kube-apiserver 1.37's own rules, as hypothesis
strategies: what the API server accepts, cmi must take (`tests/cmi/test_accept.py`,
`bench.chaos`).

The rules are the API server's validation (`pkg/apis/core/validation`, `validateServicePort`;
`pkg/apis/discovery/validation`, `validateEndpoints` and `validatePorts`): port names are DNS
labels of up to 63 characters, a target port is a number or an IANA service name, appProtocol
any qualified name, an endpoint's zone any string, nodeName a DNS subdomain. With `legacy`,
endpoint addresses also come in the forms the API server took before strict IP validation
(IPv4 with leading zeros, IPv4-mapped IPv6); with `stored`, only what it takes on create today.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cmi.build import Built, Defaults, Previous, build
from l4.plan import IPVSPlan, plan
from l7.translate import Resources, translate
from slb.model import LBNode, LoadBalancer, NodeGroup, Owner, OwnerKind, StoredObject
from slb.resolve import DesiredState, resolve
from slb.snapshot import Snapshot, Stored

EXPOSE_LABEL = "openslb.io/expose"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SHARED_INSTANCE = "shared"
"""An operator's instance that generated Services may be labelled to share."""

Body = dict[str, Any]

DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
DNS_1035_LABEL = st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
DNS_SUBDOMAIN = (
    st.lists(DNS_LABEL, min_size=1, max_size=4).map(".".join).filter(lambda name: len(name) <= 253)
)
IANA_SERVICE_NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?", fullmatch=True).filter(
    lambda name: "--" not in name and any(c.isalpha() for c in name)
)
_NAME_PART = st.from_regex(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]", fullmatch=True)
QUALIFIED_NAME = st.one_of(
    _NAME_PART, st.tuples(DNS_SUBDOMAIN, _NAME_PART).map("/".join)
)  # label keys, appProtocol
LABEL_VALUE = st.one_of(st.just(""), _NAME_PART)
PORT = st.integers(1, 65535)
NODE_PORT = st.integers(30000, 32767)

APP_PROTOCOLS = st.one_of(
    st.sampled_from([
        "grpc", "http", "https", "http2", "h2c", "kubernetes.io/h2c", "kubernetes.io/ws",
        "kubernetes.io/wss", "kubernetes.io/grpc", "HTTP", "example.com/custom",
    ]),
    QUALIFIED_NAME,
)  # fmt: skip

VALID_ANNOTATIONS: dict[str, st.SearchStrategy[str]] = {
    "openslb.io/scheduler": st.sampled_from(["rr", "wrr", "lc", "wlc", "sh", "mh"]),
    "openslb.io/idle-timeout": st.integers(1, 86400).map(lambda n: f"{n}s"),
    "openslb.io/health-check-type": st.sampled_from(["tcp", "none"]),
    "openslb.io/backend-mode": st.sampled_from(["pod", "node"]),
    "openslb.io/node-group": st.just("default"),
}
"""Annotations and values cmi takes."""

ANY_TEXT = st.text(max_size=300) | st.text(alphabet="ab,=:/. \t", max_size=3000)


def _ip_texts(version: Literal[4, 6], *, legacy: bool) -> st.SearchStrategy[str]:
    """Addresses of one family that the API server takes for an endpoint; an IPv4-mapped
    one is IPv4 to it, not IPv6 (`netutils.IsIPv6String`)."""
    addresses = st.ip_addresses(v=version).filter(_endpoint_address)
    canonical = addresses.map(str)
    if not legacy:
        return canonical
    if version == 4:
        padded = addresses.map(lambda ip: ".".join(f"{int(p):03d}" for p in str(ip).split(".")))
        mapped = addresses.map(lambda ip: f"::ffff:{ip}")
        return st.one_of(canonical, padded, mapped)
    return canonical


def _endpoint_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """What `ValidateEndpointIP` refuses: unspecified, loopback, link-local."""
    local_multicast = ip in ipaddress.ip_network("224.0.0.0/24" if ip.version == 4 else "ff02::/16")
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    return not (
        ip.is_unspecified or ip.is_loopback or ip.is_link_local or local_multicast or mapped
    )


@dataclass
class Cluster:
    """One generated Service with its EndpointSlices, and the cluster's Nodes."""

    service: Body
    slices: list[Body] = field(default_factory=list)
    nodes: dict[str, Body] = field(default_factory=dict)

    def for_api(self) -> tuple[Body, list[Body]]:
        """The Service and its slices as bodies to create on an API server: NodePorts left
        for it to allocate (drawn ones could clash with other Services')."""
        spec = self.service["spec"]
        ports = [{k: v for k, v in p.items() if k != "nodePort"} for p in spec["ports"]]
        service = {**self.service, "spec": {**spec, "ports": ports}}
        kind = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice"}
        return service, [{**kind, **s} for s in self.slices]

    def numbered(self, number: int) -> Cluster:
        """The same objects under names unique to `number`: drawn names repeat."""
        name = f"s{number}-{self.service['metadata']['name']}"[:63].rstrip("-")
        service = {**self.service, "metadata": {**self.service["metadata"], "name": name}}
        slices = [
            {**s, "metadata": {**s["metadata"], "name": f"{name[:50]}-{i}",
                               "labels": {SERVICE_NAME_LABEL: name}}}
            for i, s in enumerate(self.slices)
        ]  # fmt: skip
        return Cluster(service, slices, self.nodes)


@st.composite
def service_ports(draw: st.DrawFn, service_type: str) -> list[Body]:
    count = draw(st.integers(1, 24))
    names = draw(st.lists(DNS_LABEL, min_size=count, max_size=count, unique=True))
    if count == 1 and draw(st.booleans()):
        names = [""]  # a lone port may be unnamed
    keys = draw(
        st.lists(
            st.tuples(PORT, st.sampled_from(["TCP", "TCP", "UDP", "SCTP"])),
            min_size=count, max_size=count, unique=True,
        )
    )  # fmt: skip
    node_ports = draw(st.lists(NODE_PORT, min_size=count, max_size=count, unique=True))
    ports = []
    for name, (number, protocol), node_port in zip(names, keys, node_ports, strict=True):
        port: Body = {"port": number, "protocol": protocol}
        if name:
            port["name"] = name
        if draw(st.booleans()):
            port["appProtocol"] = draw(APP_PROTOCOLS)
        port["targetPort"] = draw(st.one_of(PORT, IANA_SERVICE_NAME))
        if service_type != "ClusterIP":
            port["nodePort"] = node_port
        ports.append(port)
    return ports


@st.composite
def services(
    draw: st.DrawFn, *, namespace: str | None = None, shared: bool = True
) -> tuple[Body, list[str]]:
    """A labelled Service (and its port names); `shared`: it may share `SHARED_INSTANCE`."""
    service_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    ports = draw(service_ports(service_type))
    labels = draw(st.dictionaries(QUALIFIED_NAME, LABEL_VALUE, max_size=4))
    labels[EXPOSE_LABEL] = draw(st.sampled_from(["true", SHARED_INSTANCE] if shared else ["true"]))
    annotations = draw(
        st.fixed_dictionaries({}, optional=VALID_ANNOTATIONS)
        | st.dictionaries(
            st.sampled_from([*VALID_ANNOTATIONS, "openslb.io/vip", "openslb.io/unknown-knob"])
            | QUALIFIED_NAME,
            ANY_TEXT,
            max_size=4,
        )
    )
    spec: Body = {"type": service_type, "ports": ports}
    if service_type != "ClusterIP":
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    body = {
        "metadata": {
            "namespace": namespace or draw(DNS_LABEL),
            "name": draw(DNS_1035_LABEL),
            "labels": labels,
            "annotations": annotations,
            "creationTimestamp": "2026-12-02T09:00:00Z",
        },
        "spec": spec,
    }
    return body, [p.get("name", "") for p in ports]


@st.composite
def endpoint_slices(
    draw: st.DrawFn, service: Body, port_names: list[str], node_names: list[str], *, legacy: bool
) -> Body:
    address_type = draw(st.sampled_from(["IPv4", "IPv4", "IPv6", "FQDN"]))
    addresses = (
        st.lists(DNS_LABEL, min_size=2, max_size=4).map(".".join).filter(lambda n: len(n) <= 253)
        if address_type == "FQDN"
        else _ip_texts(4 if address_type == "IPv4" else 6, legacy=legacy)
    )
    names = draw(
        st.lists(st.sampled_from(port_names) | DNS_LABEL | st.just(""), max_size=6, unique=True)
    )
    ports = []
    for name in names:
        port: Body = {"name": name, "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"]))}
        if draw(st.integers(0, 9)):  # rarely none: "every port"
            port["port"] = draw(PORT)
        if draw(st.booleans()):
            port["appProtocol"] = draw(APP_PROTOCOLS)
        ports.append(port)
    endpoints = []
    for _ in range(draw(st.integers(0, 8))):
        endpoint: Body = {"addresses": draw(st.lists(addresses, min_size=1, max_size=3))}
        conditions = draw(
            st.fixed_dictionaries(
                {}, optional={k: st.booleans() for k in ("ready", "serving", "terminating")}
            )
        )
        if conditions:
            endpoint["conditions"] = conditions
        if draw(st.booleans()):
            endpoint["nodeName"] = draw(
                st.sampled_from(node_names) if node_names else DNS_SUBDOMAIN
            )
        if draw(st.booleans()):
            endpoint["zone"] = draw(st.text(max_size=80))
        if draw(st.booleans()):
            endpoint["hostname"] = draw(DNS_LABEL)
        endpoints.append(endpoint)
    meta = service["metadata"]
    return {
        "metadata": {
            "namespace": meta["namespace"],
            "name": f"{meta['name'][:50]}-{draw(st.from_regex(r'[a-z0-9]{5}', fullmatch=True))}",
            "labels": {SERVICE_NAME_LABEL: meta["name"]},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Body]:
    found: dict[str, Body] = {}
    for name in draw(st.lists(DNS_SUBDOMAIN, max_size=3, unique=True)):
        addresses = draw(
            st.lists(st.one_of(_ip_texts(4, legacy=True), _ip_texts(6, legacy=False)), max_size=2)
        )
        labels = draw(st.dictionaries(QUALIFIED_NAME, LABEL_VALUE, max_size=2))
        ready = draw(st.sampled_from(["True", "False", "Unknown"]))
        found[name] = {
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": draw(st.booleans())},
            "status": {
                "addresses": [{"type": "InternalIP", "address": a} for a in addresses],
                "conditions": [{"type": "Ready", "status": ready}],
            },
        }
    return found


@st.composite
def clusters(draw: st.DrawFn, *, legacy: bool = True, namespace: str | None = None) -> Cluster:
    """A Service, up to four of its EndpointSlices (mixed families, overlapping), the Nodes."""
    service, port_names = draw(services(namespace=namespace))
    found = draw(nodes())
    slices = [
        draw(endpoint_slices(service, port_names, list(found), legacy=legacy))
        for _ in range(draw(st.integers(0, 4)))
    ]
    if len(slices) > 1 and draw(st.booleans()):  # the same endpoints in two slices
        first = slices[0]["metadata"]
        slices.append({**slices[0], "metadata": {**first, "name": f"{first['name']}-dup"}})
    return Cluster(service, slices, found)


SHARED = LoadBalancer(
    name=SHARED_INSTANCE,
    vip=ipaddress.ip_address("198.18.0.10"),
    owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
    allowed_namespaces=("*",),  # the generated Services come from every namespace
)
DEDICATED_VIP = ipaddress.ip_address("198.18.0.11")
LB_NODE = "lb-1"


@dataclass(frozen=True)
class Outcome:
    """One generated cluster through the pure pipeline: build, resolve, IPVS plan, Envoy."""

    built: Built
    state: DesiredState
    plan: IPVSPlan
    resources: Resources


def through_pipeline(cluster: Cluster) -> Outcome:
    """What cmi builds from the Service, and what an LB node of group "default" serves of it
    (a dedicated instance given a VIP, as cmi's IPAM would)."""
    built = build(
        cluster.service, slices=cluster.slices, nodes=cluster.nodes,
        defaults=Defaults(endpoint_slices_from=frozenset({"*"})),  # hand-made slices: all
        previous=Previous(), instances={SHARED.name: SHARED},
    )  # fmt: skip
    objects: list[StoredObject] = [SHARED, *built.listeners]
    if built.service is not None:
        objects.append(built.service)
    if built.dedicated is not None:
        objects.append(built.dedicated.model_copy(update={"vip": DEDICATED_VIP}))
    group = NodeGroup(
        name="default", nodes=(LBNode(name=LB_NODE, address=ipaddress.ip_address("198.18.1.1")),)
    )
    objects.append(group)
    stored: dict[str, dict[str, Stored[StoredObject]]] = {}
    for obj in objects:
        stored.setdefault(obj.kind, {})[obj.key] = Stored(obj, 1)
    state = resolve(Snapshot(1, stored))
    return Outcome(built, state, plan(state, LB_NODE, "default"), translate(state, "default", {}))


def sample(strategy: st.SearchStrategy[Cluster], count: int) -> list[Cluster]:
    """`count` examples of a strategy, drawn as hypothesis explores it (varied, not minimal),
    for objects that go to a real API server, where a test case cannot be replayed."""
    drawn: list[Cluster] = []

    @settings(
        max_examples=count, deadline=None, database=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(strategy)
    def collect(cluster: Cluster) -> None:
        drawn.append(cluster)

    collect()
    return drawn
