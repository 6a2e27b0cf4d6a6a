"""What load balancers stand on: LB node groups, load balancer instances and their VIPs,
the address pools VIPs come from, the certificates HTTPS listeners present, and the
namespaces' labels that decide which tenants may use an instance or a certificate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from slb.model.base import Model, Owner, StoredObject
from slb.model.errors import CrossFieldError
from slb.model.fields import (
    IPAddress,
    IPNetwork,
    Name,
    NamespaceRef,
    PemCertificates,
    VIPAddress,
)
from slb.model.traffic import HealthCheck
from slb.selector import LabelSelector, check_labels


class LBNode(Model):
    """One LB node: it runs IPVS (the l4 agent) and an Envoy."""

    name: Name
    address: IPAddress


class NodeGroup(StoredObject):
    """LB nodes that serve the same load balancers; Envoys join it by their xDS cluster name."""

    kind: ClassVar[str] = "NodeGroup"

    name: Name
    nodes: tuple[LBNode, ...] = ()
    envoy_check: HealthCheck | None = None
    """How the IPVS tier checks the group's Envoys, the real servers of L7 listeners (e.g.
    http /ready on the bootstrap's stats port, 9902). Without it, a dead node's Envoy keeps
    its share of new L7 flows until the node leaves the group."""

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, nodes: tuple[LBNode, ...]) -> tuple[LBNode, ...]:
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique within the group")
        return nodes


def _selector_text(value: Any) -> Any:
    """The `kubectl -l` form is taken too (`team=shop,env in (prod)`): the console, the API
    and `slb` pass what the operator typed, and a bad part is named here, once."""
    return LabelSelector.parse(value) if isinstance(value, str) else value


def _selects_something(selector: LabelSelector) -> LabelSelector:
    if selector.empty:
        raise ValueError(
            "an empty selector matches no namespace: give at least one requirement "
            "(e.g. team=shop), or leave it out"
        )
    return selector


NamespaceSelector = Annotated[
    LabelSelector,
    BeforeValidator(_selector_text, json_schema_input_type=str | LabelSelector),
    AfterValidator(_selects_something),
]
"""Which namespaces, by their labels (Gateway API's `allowedRoutes.namespaces.from:
Selector`); a LabelSelector or its `kubectl -l` form."""


class Namespace(StoredObject):
    """A Kubernetes namespace's labels, as cmi last saw them.

    cmi writes one per namespace it watches, so that `allowed_namespace_selector` is decided
    from the same labels by cmi and by whatever reads the store (the xDS server, the LB
    nodes, the console). Kubernetes' `edit` and `admin` roles let no tenant change its
    namespace's labels, which is what makes them fit to grant with.
    """

    kind: ClassVar[str] = "Namespace"

    name: Name
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


class LoadBalancer(StoredObject):
    """An LB instance: a VIP served by one LB node group."""

    kind: ClassVar[str] = "LoadBalancer"

    name: Name
    vip: VIPAddress | None = None
    pool: Name | None = None
    node_group: Name = "default"
    owner: Owner
    namespace: Name | None = None
    """The tenant that owns it: its Service's namespace, or the one an operator made it for;
    None: the cluster's (an operator's shared instance)."""
    allowed_namespaces: tuple[NamespaceRef, ...] = ()
    """Whose Services may also join it (`openslb.io/expose=NAME`), as Gateway API's
    `allowedRoutes`: its own namespace always, these too, `*` every one."""
    allowed_namespace_selector: NamespaceSelector | None = None
    """And the Services of every namespace whose labels this matches."""

    @model_validator(mode="after")
    def _has_address_source(self) -> Self:
        if self.vip is None and self.pool is None:
            raise CrossFieldError([("vip", "give a fixed vip or a pool to allocate one from")])
        return self

    def admits(self, namespace: str, labels: Mapping[str, str] | None = None) -> bool:
        """May a Service of `namespace` join this instance? `labels`: the namespace's (its
        `Namespace` object's); None if unknown, and then only a name admits it."""
        return _admits(namespace, labels, self)


def _admits(
    namespace: str, labels: Mapping[str, str] | None, holder: LoadBalancer | Certificate
) -> bool:
    """The tenancy rule of instances and certificates: the owner's namespace, the ones named
    (`*`: all), and those whose labels the selector matches."""
    if namespace == holder.namespace:
        return True
    if "*" in holder.allowed_namespaces or namespace in holder.allowed_namespaces:
        return True
    selector = holder.allowed_namespace_selector
    return selector is not None and labels is not None and selector.matches(labels)


class Certificate(StoredObject):
    """A PEM certificate chain; the private key lives apart, named by `key_ref`."""

    kind: ClassVar[str] = "Certificate"

    name: Name
    chain_pem: PemCertificates
    key_ref: str = Field(min_length=1, max_length=253)
    namespace: Name | None = None
    """The tenant that owns it; None: the cluster's."""
    allowed_namespaces: tuple[NamespaceRef, ...] = ()
    """Other namespaces whose Services may terminate TLS with it (`*`: all), as a Gateway
    API ReferenceGrant would allow; operators' own listeners may use any."""
    allowed_namespace_selector: NamespaceSelector | None = None
    """And the Services of every namespace whose labels this matches."""
    owner: Owner | None = None
    """None: uploaded by an operator. A Service: made by cmi from a `kubernetes.io/tls`
    Secret that the Service names (`cmi.tlssecret`), renewed when the Secret is."""

    def admits(self, namespace: str, labels: Mapping[str, str] | None = None) -> bool:
        """May a Service of `namespace` present this certificate? `labels` as for
        `LoadBalancer.admits`."""
        return _admits(namespace, labels, self)


class AddressPool(StoredObject):
    """CIDRs that VIPs are allocated from."""

    kind: ClassVar[str] = "AddressPool"

    name: Name
    cidrs: tuple[IPNetwork, ...] = Field(min_length=1)
    auto_assign: bool = True
    reserved: tuple[IPAddress, ...] = ()
    """Addresses in the CIDRs that are never a VIP: the gateway, a router, a node."""

    @model_validator(mode="after")
    def _reserved_inside(self) -> Self:
        outside = [str(a) for a in self.reserved if not any(a in net for net in self.cidrs)]
        if outside:
            raise CrossFieldError([("reserved", f"not in the pool's CIDRs: {', '.join(outside)}")])
        return self

    def offers(self, address: IPAddress) -> bool:
        """Can `address` be a VIP from this pool: in the `host_range` of one of its CIDRs,
        and not reserved? (IPAM draws from the same ranges.)"""
        return address not in self.reserved and any(_host_of(address, n) for n in self.cidrs)

    @field_validator("cidrs", mode="before")
    @classmethod
    def _strict_networks(cls, cidrs: Any) -> Any:
        if isinstance(cidrs, list | tuple):
            for cidr in cidrs:
                if isinstance(cidr, str):
                    try:
                        ipaddress.ip_network(cidr, strict=True)
                    except ValueError as exc:
                        raise ValueError(f"{cidr!r} is not a network address: {exc}") from None
        return cidrs


def _host_of(address: IPAddress, network: IPNetwork) -> bool:
    first, last = host_range(network)
    return address.version == network.version and first <= int(address) <= last


def host_range(network: IPNetwork) -> tuple[int, int]:
    """The first and last address of a network that may be a VIP, as integers (like
    `hosts()`): not IPv4's network and broadcast addresses, nor IPv6's subnet-router anycast
    address."""
    start, end = int(network.network_address), int(network.broadcast_address)
    if network.num_addresses == 1:
        return start, end
    if network.version == 4 and network.prefixlen >= 31:
        return start, end
    if network.version == 4:
        return start + 1, end - 1
    return start + 1, end
