"""Pure: one Gateway API Gateway (with its class and the HTTPRoutes, GRPCRoutes, TLSRoutes,
TCPRoutes and UDPRoutes that name it) -> the desired state and the status the specification
asks for.

A Gateway of openslb's class becomes an instance (`LoadBalancer`, its VIP from the pool or
`spec.addresses`) owned by the Gateway; its listeners on one port become one openslb
listener, and each route rule match attached to them becomes a rule of that listener,
in the specification's precedence, forwarding to the Services its backendRefs name. A
GRPCRoute's rules match gRPC calls only (by content-type), so gRPC and HTTP routes share a
hostname safely, and reach their backends over HTTP/2. A request no rule matches gets a
404, as the specification says. A TLS listener (mode Passthrough) becomes a TLS
passthrough listener: each TLSRoute's hostnames go, by the name a client sends (SNI), to
its backends, which terminate TLS themselves. A TCP or UDP listener is served by IPVS:
the one TCPRoute or UDPRoute it binds (the oldest, if several name it: IPVS matches
nothing to choose between them) makes its backends' endpoints the real servers, each
backendRef's share by its weight. What cannot be served is
refused in the status of the object that asked for it (a listener's protocol, a route's
filter, a backendRef), never by stopping the controller.

The Services a route names are stored by their own build (`cmi.build.referenced`), so
their endpoints reach the tiers as every other Service's do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cmi import tlssecret
from cmi.build import VIP_UNAVAILABLE, Built, Defaults, Event, Previous, endpoint_ip, short_name
from cmi.tlssecret import TlsPair
from slb.model import (
    MAX_ROUTES,
    IPAddress,
    Listener,
    LoadBalancer,
    ModelError,
    Owner,
    OwnerKind,
    Protocol,
    Route,
    Scheduler,
    host_covers,
)
from slb.selector import LabelSelector

if TYPE_CHECKING:  # the name only: loading the client would load urllib3 and kubernetes
    from cmi.k8s.client import Body
GROUP = "gateway.networking.k8s.io"
CONTROLLER_NAME = "openslb.io/gateway-controller"
"""The `spec.controllerName` of the GatewayClasses that are openslb's."""
KEY_PREFIX = "gateway:"
"""A Gateway's key among the controller's dirty keys (a Service's has none)."""
HTTPROUTE = "HTTPRoute"
GRPCROUTE = "GRPCRoute"
TLSROUTE = "TLSRoute"
TCPROUTE = "TCPRoute"
UDPROUTE = "UDPRoute"
ROUTE_RESOURCES = {HTTPROUTE: "httproutes", GRPCROUTE: "grpcroutes", TLSROUTE: "tlsroutes",
                   TCPROUTE: "tcproutes", UDPROUTE: "udproutes"}  # fmt: skip
"""The route kinds openslb serves, and their resources in the API."""
PROTOCOLS = {"HTTP": Protocol.HTTP, "HTTPS": Protocol.HTTPS, "TLS": Protocol.TLS,
             "TCP": Protocol.TCP, "UDP": Protocol.UDP}  # fmt: skip
"""The Gateway listener protocols openslb serves (TLS: mode Passthrough)."""
ROUTE_KINDS = {
    Protocol.HTTP: (HTTPROUTE, GRPCROUTE),
    Protocol.HTTPS: (HTTPROUTE, GRPCROUTE),
    Protocol.TLS: (TLSROUTE,),
    Protocol.TCP: (TCPROUTE,),
    Protocol.UDP: (UDPROUTE,),
}
"""The route kinds each listener protocol takes."""
H2C = "kubernetes.io/h2c"
"""The `appProtocol` of a Service port whose backends speak HTTP/2 without TLS."""
APP_PROTOCOLS = {H2C: "h2c", "kubernetes.io/wss": "tls"}
"""The Service port `appProtocol`s (GEP-1911) that change how a rule reaches its backends
(`kubernetes.io/ws` needs nothing: WebSocket upgrades pass on HTTP/1.1)."""
NOT_FOUND_RULE = "no-route-matched"
"""The last rule of every Gateway listener: the specification's 404."""
MAX_RULES = MAX_ROUTES - 1
"""Rules per port, the model's limit less the 404."""


def gateway_key(namespaced: str) -> str:
    """The dirty key of the Gateway `namespace/name`."""
    return f"{KEY_PREFIX}{namespaced}"


def is_gateway_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def instance_name(namespace: str, name: str) -> str:
    """The instance a Gateway gets (never a Service's: those have no `gateway` part)."""
    return short_name(namespace, name, "gateway")


def route_kind(route: Body) -> str:
    """A route's kind (the API server gives every custom resource its `kind`)."""
    return str(route.get("kind") or HTTPROUTE)


def route_key(kind: str, namespaced: str) -> str:
    """A route's key, `Kind/namespace/name`: an HTTPRoute and a GRPCRoute may share a name."""
    return f"{kind}/{namespaced}"


def key_of_route(route: Body) -> str:
    meta = route["metadata"]
    return route_key(route_kind(route), f"{meta['namespace']}/{meta['name']}")


def split_route_key(key: str) -> tuple[str, str, str]:
    """`route_key`'s parts: kind, namespace, name."""
    kind, namespace, name = key.split("/", 2)
    return kind, namespace, name


def named_by(ref: Body, namespace: str) -> str:
    """The `namespace/name` an object reference names: its own namespace, else `namespace`
    (that of the object holding the reference)."""
    return f"{ref.get('namespace') or namespace}/{ref['name']}"


def parent_gateway(ref: Body, route_namespace: str) -> str | None:
    """The Gateway (`namespace/name`) a route's parentRef names; None: another kind."""
    if ref.get("group", GROUP) != GROUP or ref.get("kind", "Gateway") != "Gateway":
        return None
    return named_by(ref, route_namespace)


def parent_refs(route: Body) -> list[str]:
    """The Gateways (`namespace/name`) a route names as parents."""
    namespace = route["metadata"]["namespace"]
    named = (
        parent_gateway(r, namespace) for r in (route.get("spec") or {}).get("parentRefs") or []
    )
    return [gateway for gateway in named if gateway is not None]


def certificate_secrets(gateway: Body) -> set[str]:
    """The Secrets (`namespace/name`) a Gateway's listeners name as certificates."""
    namespace = gateway["metadata"]["namespace"]
    return {
        named_by(ref, namespace)
        for listener in (gateway.get("spec") or {}).get("listeners") or []
        for ref in (listener.get("tls") or {}).get("certificateRefs") or []
        if ref.get("group", "") == "" and ref.get("kind", "Secret") == "Secret"
    }


def backend_services(route: Body) -> set[str]:
    """The Services (`namespace/name`) a route's rules name, as backends or mirrors."""
    namespace = route["metadata"]["namespace"]
    return {
        named_by(ref, namespace)
        for rule in (route.get("spec") or {}).get("rules") or []
        for ref in [*(rule.get("backendRefs") or []), *_mirror_refs(rule)]
        if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
    }


def _mirror_refs(rule: Body) -> list[Body]:
    return [
        (f.get("requestMirror") or {}).get("backendRef") or {}
        for f in rule.get("filters") or []
        if f.get("type") == "RequestMirror"
    ]


def condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> Body:
    """A status condition; `lastTransitionTime` is the writer's (kept while unchanged)."""
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def class_accepted(gateway_class: Body) -> Body:
    """The status of one of openslb's GatewayClasses: accepted as it is."""
    generation = gateway_class["metadata"].get("generation", 0)
    return {
        "conditions": [condition("Accepted", True, "Accepted", "openslb serves it", generation)]
    }


@dataclass
class GatewayBuilt:
    """What a Gateway owns in the store (`built`), and the status of it and its routes."""

    built: Built
    listeners: list[Body] = field(default_factory=list)
    """`status.listeners` as the specification lists them."""
    conditions: list[Body] = field(default_factory=list)
    """The Gateway's Accepted; Programmed is the reporter's (it needs the VIP)."""
    routes: dict[str, list[Body]] = field(default_factory=dict)
    """Each route's (`namespace/name`) entries in `status.parents` for this Gateway: one
    per parentRef naming it, accepted if any of its listeners took the route."""


@dataclass(frozen=True)
class _World:
    """What a Gateway's listeners and routes are judged against."""

    gateway: Body
    services: Mapping[str, Body]
    grants: Sequence[Body]
    namespace_labels: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Body]
    """The TLS Secrets its listeners name, by `namespace/name`."""

    @property
    def generation(self) -> int:
        return int(self.gateway["metadata"].get("generation", 0))

    @property
    def named(self) -> str:
        """The Gateway's `namespace/name`, as a parentRef names it."""
        meta = self.gateway["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


@dataclass
class _Port:
    """The Gateway listeners on one port: one openslb listener."""

    port: int
    protocol: Protocol
    names: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    rules: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    """(precedence, route fields)."""
    holder: str | None = None
    """TCP and UDP: the route (its key) whose rule the port forwards by."""


def build_gateway(
    gateway: Body,
    *,
    gateway_class: Body | None,
    routes: Sequence[Body],
    services: Mapping[str, Body],
    namespace_labels: Mapping[str, Mapping[str, str]],
    grants: Sequence[Body] = (),
    secrets: Mapping[str, Body] | None = None,
    defaults: Defaults,
    previous: Previous,
    now: float = 0.0,
) -> GatewayBuilt:
    """A Gateway of openslb's class -> its instance, listeners and statuses. `routes`: the
    routes of every kind that name it; `services`: the Services they name, by key;
    `grants`: the ReferenceGrants of the namespaces they name; `secrets`: the TLS Secrets
    its listeners name, by key."""
    meta, spec = gateway["metadata"], gateway.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    key, generation = gateway_key(f"{namespace}/{name}"), meta.get("generation", 0)
    if gateway_class is None or gateway_class.get("spec", {}).get("controllerName") != (
        CONTROLLER_NAME
    ):
        return GatewayBuilt(Built(key, exposed=False, foreign=True))
    instance = instance_name(namespace, name)
    owner = Owner(kind=OwnerKind.GATEWAY, name=f"{namespace}/{name}")
    vip, address_problem = _requested_address(spec)
    balancer = LoadBalancer(
        name=instance,
        vip=vip or (previous.load_balancer.vip if previous.load_balancer else None),
        pool=defaults.pool,
        node_group=defaults.node_group,
        owner=owner,
        namespace=namespace,
    )
    world = _World(gateway, services, grants, namespace_labels, secrets or {})
    listener_status: list[Body] = []
    ports: dict[tuple[int, str], _Port] = {}
    attached: dict[str, dict[str, Body]] = {}
    pairs: dict[str, TlsPair] = {}
    for listener in spec.get("listeners") or []:
        listener_status.append(
            _gateway_listener(
                world,
                listener,
                routes,
                ports=ports,
                attached=attached,
                previous=previous,
                pairs=pairs,
            )
        )
    _isolate(spec.get("listeners") or [], ports, owner)
    events: list[Event] = []
    listeners = []
    for _, group in sorted(ports.items()):
        made = _listener(group, instance, owner=owner, previous=previous, now=now, events=events)
        if made is not None:
            listeners.append(made)
    named = {
        target.service.split("/", 1)[0]
        for made in listeners
        for rule in made.routes
        for target in rule.forward_to
        if target.service is not None
    }
    # Its routes were admitted by allowedRoutes and ReferenceGrants: the instance takes
    # the Services they name, of whichever namespace.
    balancer = balancer.model_copy(update={"allowed_namespaces": tuple(sorted(named))})
    gateway_ok = address_problem is None
    invalid = [e["name"] for e in listener_status if e["conditions"][0]["status"] != "True"]
    if not gateway_ok:
        accepted = condition("Accepted", False, "UnsupportedAddress", address_problem or "",
                             generation)  # fmt: skip
    elif invalid:  # accepted while any listener is (the specification's ListenersNotValid)
        some = len(invalid) < len(listener_status)
        why = f"listener(s) not accepted: {', '.join(invalid)}"
        accepted = condition("Accepted", some, "ListenersNotValid", why, generation)
    else:
        accepted = condition("Accepted", True, "Accepted", "openslb serves it", generation)
    conditions = [accepted]
    built = Built(
        key,
        exposed=gateway_ok,
        instance=instance,
        dedicated=balancer if gateway_ok else None,
        listeners=tuple(listeners) if gateway_ok else (),
        certificates=tuple(pairs.values()) if gateway_ok else (),
        events=tuple(events),
        refused=address_problem,
        remembered_vip=None if balancer.vip else _status_address(gateway),
    )
    parents = _unmatched_parents(world, routes, attached)
    return GatewayBuilt(built, listener_status, conditions, parents)


def _wider(hostname: str | None, than: str | None) -> bool:
    """Is a listener of `hostname` (None: any) wider than one of `than`: a different
    hostname it covers? Isolation keeps the narrower one's requests to its own routes."""
    if not than or than == hostname:
        return False
    return not hostname or host_covers(hostname, than)


def _narrower(world: _World, listener: Body) -> list[str]:
    """The hostnames of the listeners on its port narrower than it."""
    return [
        other["hostname"]
        for other in (world.gateway.get("spec") or {}).get("listeners") or []
        if other.get("port") == listener["port"]
        and _wider(listener.get("hostname"), other.get("hostname"))
    ]


def _isolate(
    spec_listeners: Sequence[Body], ports: Mapping[tuple[int, str], _Port], owner: Owner
) -> None:
    """Listener isolation: a request for a hostname a listener names goes to that
    listener's routes alone, never to those of a wider listener on its port (one with a
    wildcard covering it, or none). Each listener with a wider one beside it gets a 404
    for its hostname, tried after its own routes and before any wider host's."""
    for (port, _), group in ports.items():
        if not group.protocol.is_http:  # TLS: server names pick filter chains; L4: no hosts
            continue
        served = [li for li in spec_listeners
                  if li.get("port") == port and li["name"] in group.names]  # fmt: skip
        for listener in served:
            host = listener.get("hostname")
            if host and any(_wider(other.get("hostname"), host) for other in served):
                name = short_name(*owner.name.split("/", 1), "isolation", listener["name"])
                answer = {"status": 404, "body": ""}
                group.rules.append((
                    (host_rank([host]), 2),
                    {"name": name, "hosts": [host], "fixed_response": answer},
                ))  # fmt: skip


def _ref_id(ref: Body) -> str:
    return repr(sorted(ref.items()))


def _unmatched_parents(
    world: _World, routes: Sequence[Body], attached: dict[str, dict[str, Body]]
) -> dict[str, list[Body]]:
    """Every route's entries, with NoMatchingParent for a parentRef no listener matched."""
    out = {}
    for route in routes:
        rmeta = route["metadata"]
        rkey = key_of_route(route)
        entries = attached.get(rkey, {})
        for ref in (route.get("spec") or {}).get("parentRefs") or []:
            if parent_gateway(ref, rmeta["namespace"]) != world.named or _ref_id(ref) in entries:
                continue
            why = "no listener of the Gateway matches its sectionName and port"
            entries[_ref_id(ref)] = _entry(ref, route, (False, "NoMatchingParent", why))
        out[rkey] = list(entries.values())
    return out


def _entry(ref: Body, route: Body, accepted: tuple[bool, str, str],
           resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "")) -> Body:  # fmt: skip
    """A route's entry in `status.parents` for one parentRef."""
    generation = route["metadata"].get("generation", 0)
    fields = ("group", "kind", "namespace", "name", "sectionName", "port")
    return {
        "parentRef": {k: v for k, v in ref.items() if k in fields},
        "controllerName": CONTROLLER_NAME,
        "conditions": [
            condition("Accepted", *accepted, generation),
            condition("ResolvedRefs", *resolved, generation),
        ],
    }


def _requested_address(spec: Body) -> tuple[str | None, str | None]:
    """The VIP `spec.addresses` asks for, and why it cannot be served (one IPAddress)."""
    addresses = spec.get("addresses") or []
    if not addresses:
        return None, None
    if len(addresses) > 1:
        return None, "spec.addresses: openslb gives a Gateway one address"
    address = addresses[0]
    if address.get("type", "IPAddress") != "IPAddress":
        return None, f"spec.addresses[0].type {address.get('type')}: only IPAddress"
    try:
        return str(ipaddress.ip_address(address.get("value", ""))), None
    except ValueError:
        return None, f"spec.addresses[0].value {address.get('value')!r} is not an IP address"


def _status_address(gateway: Body) -> IPAddress | None:
    """The first IP address the Gateway's `status.addresses` names: where its VIP outlives
    a lost store."""
    for address in (gateway.get("status") or {}).get("addresses") or []:
        ip = endpoint_ip(str(address.get("value") or ""))
        if address.get("type", "IPAddress") == "IPAddress" and ip is not None:
            return ip
    return None


def _gateway_listener(
    world: _World,
    listener: Body,
    routes: Sequence[Body],
    *,
    ports: dict[tuple[int, str], _Port],
    attached: dict[str, dict[str, Body]],
    previous: Previous,
    pairs: dict[str, TlsPair],
) -> Body:
    """One Gateway listener: it joins its port's openslb listener (with its certificates,
    `pairs` gathers them), its routes attach; its entry in `status.listeners`."""
    generation, name = world.generation, listener["name"]
    protocol = PROTOCOLS.get(listener.get("protocol", ""))
    accepted, reason, message = True, "Accepted", "openslb serves it"
    resolved, programmed = (True, "ResolvedRefs", ""), True
    slot = (listener["port"], protocol.transport if protocol is not None else "TCP")
    group = ports.get(slot)
    certificates: list[TlsPair] = []
    terminates = protocol is Protocol.HTTPS or (
        protocol is Protocol.TLS and _tls_mode(listener) == "Terminate"
    )
    mixed = protocol is Protocol.TLS and _mixed_tls(world, listener["port"])
    if protocol is None:
        accepted, reason = False, "UnsupportedProtocol"
        message = (f"protocol {listener.get('protocol')}: openslb's Gateways serve HTTP, HTTPS, "
                   "TLS, TCP and UDP")  # fmt: skip
    elif mixed:
        accepted, reason = False, "ProtocolConflict"
        message = (f"port {listener['port']}: its TLS listeners both terminate and pass "
                   "through TLS; openslb serves one mode per port")  # fmt: skip
    elif group is not None and group.protocol is not protocol:
        accepted, reason = False, "ProtocolConflict"
        message = f"port {listener['port']} is {group.protocol.value} for listener(s) {group.names}"
    elif group is not None and not protocol.is_l7:
        accepted, reason = False, "HostnameConflict"
        message = (f"port {listener['port']}/{protocol.transport} is listener(s) {group.names}'s: "
                   "a TCP or UDP listener has no hostname to share it by")  # fmt: skip
    elif terminates:
        certificates, refs = _certificates(world, listener, previous)
        resolved = refs
        if not certificates:
            accepted, reason, message = True, "Accepted", "no certificate it can serve"
    _, unsupported = _route_kinds(listener)
    if unsupported and resolved[0]:
        kinds = ", ".join(str(k.get("kind")) for k in unsupported)
        resolved = (False, "InvalidRouteKinds", f"route kinds openslb does not serve: {kinds}")
    served = accepted and (not terminates or bool(certificates))
    count = 0
    if served and protocol is not None:
        group = ports.setdefault(slot, _Port(listener["port"], protocol))
        group.names.append(name)
        for pair in certificates:
            pairs[pair.certificate.name] = pair
            group.certificates.append(pair.certificate.name)
        count = _attach(world, listener, routes, group, attached)
    else:
        programmed = False
        if accepted and protocol is not None:  # routes attach, counted, though not served
            count = _attach(world, listener, routes, _Port(listener["port"], protocol), attached)
    conditions = [
        condition("Accepted", accepted, reason, message, generation),
        condition("ResolvedRefs", *resolved, generation),
        condition("Programmed", programmed, "Programmed" if programmed else "Invalid",
                  "" if programmed else message, generation),
    ]  # fmt: skip
    if reason in ("ProtocolConflict", "HostnameConflict"):
        conditions.append(condition("Conflicted", True, reason, message, generation))
    serves_kinds = protocol is not None and not mixed  # mixed: no mode, so no kind
    return {"name": name, "supportedKinds": _supported_kinds(listener) if serves_kinds else [],
            "attachedRoutes": count, "conditions": conditions}  # fmt: skip


def _tls_mode(listener: Body) -> str:
    """A listener's `tls.mode`: Terminate unless it says Passthrough."""
    return str((listener.get("tls") or {}).get("mode") or "Terminate")


def _mixed_tls(world: _World, port: int) -> bool:
    """Do the TLS listeners on `port` both terminate and pass through TLS? One filter
    chain per name serves either; openslb's listener of a port does one or the other."""
    modes = {
        _tls_mode(other)
        for other in (world.gateway.get("spec") or {}).get("listeners") or []
        if other.get("port") == port and other.get("protocol") == "TLS"
    }
    return len(modes) > 1


def _route_kinds(listener: Body) -> tuple[list[Body], list[Body]]:
    """The route kinds a listener allows (`allowedRoutes.kinds`; none given: those of its
    protocol, `ROUTE_KINDS`), split into those openslb serves on it and those it does not."""
    protocol = PROTOCOLS.get(listener.get("protocol", ""))
    served = ROUTE_KINDS.get(protocol, ()) if protocol is not None else ()
    asked = (listener.get("allowedRoutes") or {}).get("kinds")
    if not asked:
        return [{"group": GROUP, "kind": k} for k in served], []
    ours = [k for k in asked if k.get("group", GROUP) == GROUP and k.get("kind") in served]
    kinds: list[Body] = [{"group": GROUP, "kind": kind} for kind in served
             if any(k["kind"] == kind for k in ours)]  # fmt: skip
    return kinds, [k for k in asked if k not in ours]


def _supported_kinds(listener: Body) -> list[Body]:
    return _route_kinds(listener)[0]


def _certificates(
    world: _World, listener: Body, previous: Previous
) -> tuple[list[TlsPair], tuple[bool, str, str]]:
    """The certificates of a terminating listener's `certificateRefs` (TLS Secrets; another
    namespace's only with a ReferenceGrant), and its ResolvedRefs condition."""
    meta = world.gateway["metadata"]
    owner = Owner(kind=OwnerKind.GATEWAY, name=f"{meta['namespace']}/{meta['name']}")
    tls = listener.get("tls") or {}
    if tls.get("mode", "Terminate") != "Terminate":
        return [], (False, "InvalidCertificateRef", "HTTPS listeners terminate TLS")
    pairs, problems = [], []
    for ref in tls.get("certificateRefs") or []:
        key = named_by(ref, meta["namespace"])
        namespace = key.split("/", 1)[0]
        if ref.get("group", "") != "" or ref.get("kind", "Secret") != "Secret":
            problems.append(("InvalidCertificateRef", f"{ref.get('kind')} {key}: only Secrets"))
            continue
        if namespace != meta["namespace"] and not granted(
            meta["namespace"], namespace, ref["name"], world.grants, kind="Gateway", to="Secret"
        ):
            problems.append(("RefNotPermitted", f"Secret {key}: no ReferenceGrant allows it"))
            continue
        name = short_name(meta["namespace"], meta["name"], "tls", namespace, ref["name"])
        pair, problem = tlssecret.pair_from_secret(
            owner, key, name, world.secrets.get(key), previous.certificates,
            named_by=f"listener {listener['name']} certificateRefs",
        )  # fmt: skip
        if problem is not None:
            problems.append(("InvalidCertificateRef", problem[1]))
        if pair is not None:
            pairs.append(pair)
    if not problems:
        return pairs, (True, "ResolvedRefs", "")
    return pairs, (False, problems[0][0], "; ".join(p[1] for p in problems)[:1000])


def _listener(
    group: _Port,
    instance: str,
    *,
    owner: Owner,
    previous: Previous,
    now: float,
    events: list[Event],
) -> Listener | None:
    """The openslb listener of one port: its rules in precedence order, then the 404 (HTTP
    and HTTPS). A TCP or UDP one is IPVS's: its weighted scheduler splits the connections
    as the rule's weights ask."""
    udp = ("udp",) if group.protocol is Protocol.UDP else ()  # may share the number with TCP
    name = short_name(*owner.name.split("/", 1), "port", str(group.port), *udp)
    before = previous.listeners.get(name)
    rules = [fields for _, fields in sorted(group.rules, key=lambda item: item[0])]
    if len(rules) > MAX_RULES:
        left = len(rules) - MAX_RULES
        message = (f"port {group.port}: {len(rules)} rules; openslb serves {MAX_RULES} per "
                   f"port, the first in precedence; the other {left} are not")  # fmt: skip
        events.append(Event("Warning", "TooManyRules", message))
        rules = rules[:MAX_RULES]
    if group.protocol.is_http:  # a connection no TLS rule takes is closed; L4: refused
        rules.append({"name": NOT_FOUND_RULE, "fixed_response": {"status": 404, "body": ""}})
    try:
        return Listener(
            name=name,
            load_balancer=instance,
            protocol=group.protocol,
            port=group.port,
            certificates=tuple(group.certificates),
            target_port=group.port,
            health_check=None,
            owner=owner,
            routes=tuple(rules),
            scheduler=Scheduler.RR if group.protocol.is_l7 else Scheduler.WRR,
            created_at=before.created_at if before is not None else now,
        )
    except (ValidationError, ModelError) as exc:
        message = f"port {group.port} cannot be served: {exc}"
        events.append(Event("Warning", "Refused", message[:1000]))
        return before


def _attach(
    world: _World,
    listener: Body,
    routes: Sequence[Body],
    group: _Port,
    attached: dict[str, dict[str, Body]],
) -> int:
    """Attach to one Gateway listener the routes that may and do name it; their rules join
    its port's. Returns how many attached."""
    count = 0
    if not group.protocol.is_l7:  # one route holds an L4 port: the oldest
        routes = sorted(routes, key=_age)
    for route in routes:
        rmeta = route["metadata"]
        rkey = key_of_route(route)
        for ref in (route.get("spec") or {}).get("parentRefs") or []:
            if parent_gateway(ref, rmeta["namespace"]) != world.named:
                continue
            if ref.get("sectionName") not in (None, listener["name"]):
                continue
            if ref.get("port") not in (None, listener["port"]):
                continue
            if not _allowed(world, listener, route):
                why = "the listener's allowedRoutes do not admit this kind or namespace"
                status = _entry(ref, route, (False, "NotAllowedByListeners", why))
            elif group.protocol.is_l7:
                status = _route_parent(world, listener, route, ref, group)
            else:
                status = _l4_route_parent(world, listener, route, ref, group)
            accepted = status["conditions"][0]["status"] == "True"
            entries = attached.setdefault(rkey, {})
            if accepted or _ref_id(ref) not in entries:
                entries[_ref_id(ref)] = status
            count += accepted
    return count


def _age(route: Body) -> tuple[str, str, str]:
    """Older first (the specification's tie-break between routes), then by name."""
    meta = route["metadata"]
    return meta.get("creationTimestamp") or "", meta["namespace"], meta["name"]


def _allowed(world: _World, listener: Body, route: Body) -> bool:
    """`allowedRoutes`: the route's kind among its kinds, its namespace one it admits
    (Same, the default; All; or Selector)."""
    kind, namespace = route_kind(route), route["metadata"]["namespace"]
    if not any(k["kind"] == kind for k in _supported_kinds(listener)):
        return False
    allowed = ((listener.get("allowedRoutes") or {}).get("namespaces")) or {}
    where = allowed.get("from", "Same")
    if where == "All":
        return True
    if where == "Selector":
        selector = LabelSelector.model_validate(_selector(allowed.get("selector") or {}))
        labels = world.namespace_labels.get(namespace)
        return labels is not None and not selector.empty and selector.matches(labels)
    return bool(namespace == world.gateway["metadata"]["namespace"])


def _selector(raw: Body) -> Body:
    """A Kubernetes label selector in the model's field names."""
    return {
        "match_labels": raw.get("matchLabels") or {},
        "match_expressions": [
            {"key": e["key"], "operator": e["operator"], "values": e.get("values") or []}
            for e in raw.get("matchExpressions") or []
        ],
    }


def hostnames(listener: Body, route: Body) -> list[str] | None:
    """The hosts a route serves on a listener: their intersection (specification's
    rules for wildcards); [] means any host; None: none in common."""
    mine = listener.get("hostname")
    theirs = (route.get("spec") or {}).get("hostnames") or []
    if not theirs:
        return [mine] if mine else []
    if not mine:
        return list(theirs)
    common = [h for h in theirs if host_covers(mine, h)]
    common += [mine for h in theirs if host_covers(h, mine)]
    return sorted(set(common)) or None


def _route_parent(world: _World, listener: Body, route: Body, ref: Body, group: _Port) -> Body:
    """One route on one listener: its entry in `status.parents`; its rules, if accepted,
    join the port's."""

    def answer(accepted: bool, reason: str, message: str, refs: tuple[bool, str, str]) -> Body:
        return _entry(ref, route, (accepted, reason, message), refs)

    resolved = (True, "ResolvedRefs", "")
    hosts = hostnames(listener, route)
    if hosts is None:
        why = "no hostname in common with the listener"
        return answer(False, "NoMatchingListenerHostname", why, resolved)
    narrower = _narrower(world, listener)
    kept = [h for h in hosts if not any(host_covers(n, h) for n in narrower)]
    if hosts and not kept:  # isolation: each of its hosts is a narrower listener's
        return answer(True, "Accepted", "openslb serves it", resolved)
    hosts = kept
    made, bad = [], None
    try:
        for index, rule in enumerate((route.get("spec") or {}).get("rules") or [{}]):
            rules, problem = _rules(
                world, route, index=index, rule=rule, hosts=hosts, section=listener["name"]
            )
            made += rules
            bad = bad or problem
        for _, fields in made:  # one tenant's bad rule never refuses the port for all
            Route.model_validate(fields)
    except _UnsupportedError as exc:
        return answer(False, "UnsupportedValue", str(exc), resolved)
    except ValidationError as exc:
        refused = ModelError.from_validation(route_kind(route), exc)
        return answer(False, "UnsupportedValue", str(refused), resolved)
    if bad is not None:
        resolved = (False, bad.reason, str(bad))
    group.rules += made
    return answer(True, "Accepted", "openslb serves it", resolved)


def _l4_route_parent(world: _World, listener: Body, route: Body, ref: Body, group: _Port) -> Body:
    """A TCPRoute or UDPRoute on a listener of its protocol: IPVS matches nothing, so the
    port forwards by one rule of one route, the oldest (`_attach` offers them so). A newer
    one is accepted and counted, as the specification's conflict rules say, and bound
    only once the older is gone."""
    kind, rkey = route_kind(route), key_of_route(route)
    rules = (route.get("spec") or {}).get("rules") or [{}]
    if len(rules) > 1:
        why = f"a {kind} takes one rule: a {group.protocol.value} listener matches nothing"
        return _entry(ref, route, (False, "UnsupportedValue", why))
    made, bad = _forward_rules(world, route, index=0, rule=rules[0], hosts=[],
                               section=listener["name"])  # fmt: skip
    resolved = (True, "ResolvedRefs", "") if bad is None else (False, bad.reason, str(bad))
    if group.holder not in (None, rkey):
        why = (f"accepted; listener {listener['name']} forwards one route's connections, and "
               f"an older {kind} holds it")  # fmt: skip
        return _entry(ref, route, (True, "Accepted", why), resolved)
    if group.holder is None:
        group.holder = rkey
        group.rules += made
    return _entry(ref, route, (True, "Accepted", "openslb serves it"), resolved)


class _UnsupportedError(Exception):
    """A route asks for what openslb does not do: it is not accepted."""


class _BadRefError(Exception):
    """A backendRef that does not resolve: its rule answers 500."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _rules(
    world: _World, route: Body, *, index: int, rule: Body, hosts: list[str], section: str
) -> tuple[list[tuple[tuple[Any, ...], dict[str, Any]]], _BadRefError | None]:
    """The openslb rules of one route rule, one per match (matches are alternatives),
    and its first backendRef that does not resolve (its share answers 500, as the
    specification says). gRPC rules come first among rules of equal hosts: they match
    gRPC calls only, which no HTTP rule needs."""
    rmeta, kind = route["metadata"], route_kind(route)
    if kind == TLSROUTE:
        return _forward_rules(world, route, index=index, rule=rule, hosts=hosts, section=section)
    grpc = kind == GRPCROUTE
    actions, bad = _actions(world, route, rule)
    out = []
    by_rank: dict[tuple[int, int], list[str]] = {}
    for host in hosts:  # exact names, then each wildcard, in their own precedence
        by_rank.setdefault(host_rank([host]), []).append(host)
    ranked = sorted(by_rank.items()) or [(host_rank([]), [])]
    for m, match in enumerate(rule.get("matches") or [{}]):
        for g, (rank, group) in enumerate(ranked):
            fields, precedence = _grpc_match(match) if grpc else _match(match)
            fields.update(actions)
            parts = (section, str(index), str(m), *((str(g),) if g else ()))
            name_parts = (rmeta["namespace"], rmeta["name"], *(("grpc",) if grpc else ()),
                          *parts)  # fmt: skip
            fields["name"] = short_name(*name_parts)
            fields["hosts"] = group
            order = (
                rank,
                0 if grpc else 1,
                *precedence,
                *_age(route),
                index,
                m,
            )
            out.append((order, fields))
    return out, bad


def _forward_rules(
    world: _World, route: Body, *, index: int, rule: Body, hosts: list[str], section: str
) -> tuple[list[tuple[tuple[Any, ...], dict[str, Any]]], _BadRefError | None]:
    """A TLSRoute, TCPRoute or UDPRoute rule: its (hosts') connections to its backendRefs,
    by weight. One whose backends all fail to resolve is left out: its hosts' connections
    are closed, or go to a rule of a wider host (TCP, UDP: refused); the share of those
    that do not resolve goes to those that do, as no connection can be answered 500."""
    rmeta = route["metadata"]
    targets, bad, _ = _targets(world, route, rule)
    if not any(t["weight"] for t in targets):
        return [], bad
    word = route_kind(route).removesuffix("Route").lower()
    fields = {
        "name": short_name(rmeta["namespace"], rmeta["name"], word, section, str(index)),
        "hosts": hosts,
        "forward_to": targets,
    }
    order = (host_rank(hosts), *_age(route), index)
    return [(order, fields)], bad


def host_rank(hosts: list[str]) -> tuple[int, int]:
    """Exact hostnames before wildcards before any host; longer wildcards first."""
    if not hosts:
        return (2, 0)
    if all(h.startswith("*.") for h in hosts):
        return (1, -max(len(h) for h in hosts))
    return (0, 0)


def _match(match: Body) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """An HTTPRouteMatch -> the rule's match fields and its precedence: Exact paths, then
    the longest prefix, then a method, then the most headers, then the most query params."""
    fields: dict[str, Any] = {}
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    kind, value = path.get("type", "PathPrefix"), path.get("value", "/")
    if kind == "Exact":
        fields["path_exact"], rank = value, (0, -len(value))
    elif kind == "PathPrefix":
        fields["path_segments"] = value
        rank = (1, -len(value.rstrip("/") or "/"))
    elif kind == "RegularExpression":
        fields["path_regex"], rank = value, (2, -len(value))
    else:
        raise _UnsupportedError(f"path type {kind!r}")
    headers = [_value_match(h, "header") for h in match.get("headers") or []]
    query = [_value_match(q, "query param") for q in match.get("queryParams") or []]
    if headers:
        fields["headers"] = headers
    if query:
        fields["query_params"] = query
    if match.get("method"):
        fields["method"] = match["method"]
    return fields, (*rank, 0 if match.get("method") else 1, -len(headers), -len(query))


def _grpc_match(match: Body) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """A GRPCRouteMatch -> the rule's match fields (gRPC calls only) and its precedence:
    the longest service, then the longest method, then the most headers."""
    fields: dict[str, Any] = {"grpc_only": True}
    method = match.get("method") or {}
    kind = method.get("type", "Exact")
    service, name = method.get("service") or "", method.get("method") or ""
    if kind == "Exact":
        if service:
            fields["grpc_service"] = service
            if name:
                fields["grpc_method"] = name
        elif name:  # any service's method of that name
            fields["path_regex"] = f"/[^/]+/{re.escape(name)}"
    elif kind == "RegularExpression":
        if service or name:
            fields["path_regex"] = f"/(?:{service or '[^/]+'})/(?:{name or '[^/]+'})"
    else:
        raise _UnsupportedError(f"method match type {kind!r}")
    headers = [_value_match(h, "header") for h in match.get("headers") or []]
    if headers:
        fields["headers"] = headers
    return fields, (-len(service), -len(name), -len(headers))


def _value_match(raw: Body, what: str) -> dict[str, str]:
    kind = raw.get("type", "Exact")
    if kind not in ("Exact", "RegularExpression"):
        raise _UnsupportedError(f"{what} match type {kind!r}")
    return {"name": raw["name"], "type": "exact" if kind == "Exact" else "regex",
            "value": raw.get("value", "")}  # fmt: skip


def _actions(world: _World, route: Body, rule: Body) -> tuple[dict[str, Any], _BadRefError | None]:
    """The rule's filters and backendRefs -> the action fields of its openslb rules, and
    the first backendRef that does not resolve."""
    filters = rule.get("filters") or []
    fields = _filters(route_kind(route), [f for f in filters if f.get("type") != "RequestMirror"])
    if "redirect" in fields:
        fields.pop("request_headers", None)
        return fields, None
    mirrors, bad = _mirrors(world, route, filters)
    if mirrors:
        fields["mirrors"] = mirrors
    targets, unresolved, share = _targets(world, route, rule)
    bad = bad or unresolved
    if targets and any(t["weight"] for t in targets):
        fields["forward_to"] = targets
        if share:  # the unresolved backends' share is answered 500, as specified
            fields["unresolved_weight"] = share
        # GEP-1911: the Service ports say their backends speak HTTP/2 in the clear, or
        # WebSocket over TLS
        protocols = {_app_protocol(world, t["service"], t["target_port"]) for t in targets}
        upstream = APP_PROTOCOLS.get(protocols.pop() or "") if len(protocols) == 1 else None
        if route_kind(route) == HTTPROUTE and upstream is not None:
            fields["backend_protocol"] = upstream
        return fields, bad
    # No backend at all, or none that resolves: the specification's 500.
    for forwarded_only in ("request_headers", "rewrite", "mirrors"):
        fields.pop(forwarded_only, None)
    fields["fixed_response"] = {"status": 500, "body": ""}
    return fields, bad


def _targets(
    world: _World, route: Body, rule: Body
) -> tuple[list[dict[str, Any]], _BadRefError | None, int]:
    """A rule's backendRefs that resolve, as forward targets; the first that does not, and
    the weight of those that do not."""
    namespace = route["metadata"]["namespace"]
    targets, bad, unresolved = [], None, 0
    for ref in rule.get("backendRefs") or []:
        problem = _backend_problem(world, route, ref)
        if problem is not None:
            bad, unresolved = bad or problem, unresolved + int(ref.get("weight", 1))
            continue
        targets.append({
            "service": named_by(ref, namespace),
            "target_port": ref["port"],
            "weight": ref.get("weight", 1),
        })  # fmt: skip
    return targets, bad, unresolved


def _mirrors(
    world: _World, route: Body, filters: Iterable[Body]
) -> tuple[list[dict[str, Any]], _BadRefError | None]:
    """The RequestMirror filters -> the rule's mirrors (those whose backendRef resolves),
    and the first that does not (its copies are not sent)."""
    namespace = route["metadata"]["namespace"]
    mirrors, bad = [], None
    for f in filters:
        if f.get("type") != "RequestMirror":
            continue
        raw = f.get("requestMirror") or {}
        ref = raw.get("backendRef") or {}
        problem = _backend_problem(world, route, ref)
        if problem is not None:
            bad = bad or problem
            continue
        if "fraction" in raw:
            fraction = raw["fraction"]
            percent = 100 * fraction.get("numerator", 0) / (fraction.get("denominator") or 100)
        else:
            percent = raw.get("percent", 100)
        if percent <= 0:
            continue
        mirrors.append({
            "to": {"service": named_by(ref, namespace),
                   "target_port": ref["port"]},
            "percent": min(100, percent),
        })  # fmt: skip
    return mirrors, bad


def _app_protocol(world: _World, service: str, port: int) -> str | None:
    """The `appProtocol` of a Service's port (resolved: the Service and port exist)."""
    ports = (world.services[service].get("spec") or {}).get("ports") or []
    return next((p.get("appProtocol") for p in ports if p.get("port") == port), None)


def _filters(route_kind: str, filters: Iterable[Body]) -> dict[str, Any]:
    """A rule's filters -> the fields of its openslb rules (a GRPCRoute has the header
    modifiers alone)."""
    fields: dict[str, Any] = {}
    for f in filters:
        kind = f.get("type")
        if kind == "RequestHeaderModifier":
            fields["request_headers"] = _header_changes(f.get("requestHeaderModifier") or {})
        elif kind == "ResponseHeaderModifier":
            fields["response_headers"] = _header_changes(f.get("responseHeaderModifier") or {})
        elif route_kind == HTTPROUTE and kind == "RequestRedirect":
            fields["redirect"] = _redirect(f.get("requestRedirect") or {})
        elif route_kind == HTTPROUTE and kind == "URLRewrite":
            rewrite = f.get("urlRewrite") or {}
            fields["rewrite"] = {
                **({"host": rewrite["hostname"]} if rewrite.get("hostname") else {}),
                **_path_change(rewrite.get("path"), "urlRewrite"),
            }
            if not fields["rewrite"]:
                del fields["rewrite"]
        else:
            raise _UnsupportedError(f"filter {kind!r} is not supported by openslb yet")
    return fields


def _backend_problem(world: _World, route: Body, ref: Body) -> _BadRefError | None:
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        return _BadRefError("InvalidKind", f"backendRef {ref.get('kind')}: only Services")
    namespace = route["metadata"]["namespace"]
    key = named_by(ref, namespace)
    target_ns = key.split("/", 1)[0]
    if target_ns != namespace and not granted(
        namespace, target_ns, ref["name"], world.grants, kind=route_kind(route)
    ):
        return _BadRefError("RefNotPermitted", f"Service {key}: no ReferenceGrant allows it")
    if "port" not in ref:
        return _BadRefError("UnsupportedValue", f"backendRef {key}: a port is required")
    service = world.services.get(key)
    if service is None:
        return _BadRefError("BackendNotFound", f"Service {key} does not exist")
    ports = [p.get("port") for p in (service.get("spec") or {}).get("ports") or []]
    if ref["port"] not in ports:
        return _BadRefError("BackendNotFound", f"Service {key} has no port {ref['port']}")
    return None


def granted(
    from_namespace: str,
    to_namespace: str,
    name: str,
    grants: Iterable[Body],
    *,
    kind: str,
    to: str = "Service",
) -> bool:
    """Does a ReferenceGrant in `to_namespace` let a `kind` (a route, a Gateway) of
    `from_namespace` name the `to` (a Service, a Secret) `name`?"""
    for grant in grants:
        if grant["metadata"]["namespace"] != to_namespace:
            continue
        spec = grant.get("spec") or {}
        froms = any(
            f.get("group") == GROUP and f.get("kind") == kind
            and f.get("namespace") == from_namespace
            for f in spec.get("from") or []
        )  # fmt: skip
        tos = any(
            t.get("group", "") == "" and t.get("kind") == to
            and t.get("name") in (None, "", name)
            for t in spec.get("to") or []
        )  # fmt: skip
        if froms and tos:
            return True
    return False


def _header_changes(raw: Body) -> dict[str, Any]:
    return {
        "set": [{"name": h["name"], "value": h["value"]} for h in raw.get("set") or []],
        "add": [{"name": h["name"], "value": h["value"]} for h in raw.get("add") or []],
        "remove": list(raw.get("remove") or []),
    }


def _path_change(raw: Body | None, filter_name: str) -> dict[str, str]:
    """An HTTPPathModifier -> the model's `path` (ReplaceFullPath) or `path_prefix`
    (ReplacePrefixMatch) of a rewrite or redirect."""
    if not raw:
        return {}
    kind = raw.get("type")
    if kind == "ReplaceFullPath":
        return {"path": raw.get("replaceFullPath") or "/"}
    if kind == "ReplacePrefixMatch":
        return {"path_prefix": raw.get("replacePrefixMatch") or "/"}
    raise _UnsupportedError(f"{filter_name}.path.type {kind!r}")


def _redirect(raw: Body) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": raw.get("statusCode", 302),
        **_path_change(raw.get("path"), "requestRedirect"),
    }
    for ours, theirs in (("scheme", "scheme"), ("host", "hostname"), ("port", "port")):
        if raw.get(theirs) is not None:
            out[ours] = raw[theirs]
    return out


def gateway_status(
    made: GatewayBuilt,
    vip: str | None,
    generation: int,
    built: Built | None = None,
    ready: tuple[str, str] | None = None,
) -> Body:
    """The Gateway's whole status: its conditions (Programmed once it has its VIP and the
    data planes serve its listeners: `ready`, the state and message of its readiness,
    `cmi.readiness`), its address, its listeners.
    `built`: what the controller stored of it, if not `made.built` (a later step refused
    it: it keeps what it had)."""
    built = built or made.built
    conditions = made.conditions
    if built.refused and not made.built.refused:
        conditions = [condition("Accepted", False, "Invalid", built.refused, generation)]
    unusable = [e.message for e in built.events if e.reason == VIP_UNAVAILABLE]
    if unusable:  # the pool is exhausted, or the address asked for is taken or in no pool
        programmed = condition("Programmed", False, "AddressNotUsable", unusable[0], generation)
    elif not built.exposed:
        programmed = condition("Programmed", False, "Invalid", built.refused or "", generation)
    elif vip is None:
        why = f"instance {built.instance} waits for a VIP"
        programmed = condition("Programmed", False, "AddressNotAssigned", why, generation)
    elif built.listeners and (ready is None or ready[0] != "served"):
        state, why = ready or ("pending", "waiting for the data planes")
        reason = "Invalid" if state == "error" else "Pending"
        programmed = condition("Programmed", False, reason, why, generation)
    else:
        programmed = condition("Programmed", True, "Programmed", f"served at {vip}", generation)
    return {
        "conditions": [*conditions, programmed],
        "addresses": [{"type": "IPAddress", "value": vip}] if vip else [],
        "listeners": made.listeners,
    }


def route_parents(route: Body, gateway: str, ours: Sequence[Body]) -> list[Body]:
    """A route's `status.parents` with the entries for `gateway` (`namespace/name`)
    replaced by `ours`: other controllers' entries, and ours for other Gateways, are kept."""
    namespace = route["metadata"]["namespace"]
    current = (route.get("status") or {}).get("parents") or []
    kept = [
        p for p in current
        if p.get("controllerName") != CONTROLLER_NAME
        or parent_gateway(p.get("parentRef") or {}, namespace) != gateway
    ]  # fmt: skip
    return [*kept, *ours]
