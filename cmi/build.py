"""Pure: one Kubernetes Service (with its EndpointSlices and the Nodes) -> desired state.

The steps run in order, each small (Contour's processors): the claim (labelled, or of
openslb's load-balancer class; another class's is never touched), exposure (which instance),
settings (annotations, or what the Service was served with if they are bad), backends
(pod or node mode), listeners (one per port). The result says which objects this Service
should own in the store and which Events to tell its owner. Allocating VIPs is I/O and
happens in the controller; here a dedicated instance asks for its pool and any explicit VIP.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, cast

from pydantic import ValidationError

from cmi import annotation, tlssecret
from cmi.annotation import EXPOSE_LABEL, BackendMode, Parsed, ServiceSettings
from cmi.tlssecret import TlsPair
from slb.model import (
    Backend,
    Certificate,
    Conditions,
    FieldError,
    IPAddress,
    IPNetwork,
    Listener,
    LoadBalancer,
    ModelError,
    Owner,
    OwnerKind,
    Protocol,
    Service,
    ServicePort,
    StoredObject,
)

if TYPE_CHECKING:  # the name only: loading the client would load urllib3 and kubernetes
    from cmi.k8s.client import Body

P = ParamSpec("P")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
"""Kubernetes' EndpointSlice controller: it prunes any slice labelled as its own for a
Service with a selector, so such a slice lists that Service's pods."""
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
ZONE_LABEL = "topology.kubernetes.io/zone"
VIP_UNAVAILABLE = "VIPUnavailable"
"""The reason of the Event `cmi.vips` tells when IPAM cannot give an instance its VIP."""


@dataclass(frozen=True)
class Defaults:
    """Cluster-wide defaults from cmi's settings."""

    backend_mode: BackendMode = "pod"
    node_group: str = "default"
    pool: str = "default"
    exclude_unschedulable: bool = True
    endpoint_slices_from: frozenset[str] = frozenset()
    """Namespaces whose hand-made EndpointSlices are used ("*": all); elsewhere only those of
    Kubernetes' EndpointSlice controller (`trusted_slices`)."""
    refused_backends: tuple[IPNetwork, ...] = ()
    """Where no endpoint may point: the VIP pools, the API server, Redis (`cmi` settings)."""
    load_balancer_class: str = "openslb.io/slb"
    """The `spec.loadBalancerClass` that is openslb's; any other is another controller's."""
    claim_classless: bool = False
    """Services of type LoadBalancer without a class are openslb's too."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Previous:
    """What the store holds for this Service now: the fallback when annotations are bad."""

    service: Service | None = None
    listeners: Mapping[str, Listener] = field(default_factory=dict)
    load_balancer: LoadBalancer | None = None
    certificates: Mapping[str, Certificate] = field(default_factory=dict)

    @property
    def objects(self) -> list[StoredObject]:
        """Everything the Service owns in the store, to keep as it is."""
        owned = [self.service, *self.listeners.values(), self.load_balancer,
                 *self.certificates.values()]  # fmt: skip
        return [o for o in owned if o is not None]


@dataclass(frozen=True)
class Built:
    key: str
    exposed: bool
    instance: str | None = None
    dedicated: LoadBalancer | None = None
    """The instance this Service owns, if it asked for one (`expose=true`); VIP may be unset."""
    service: Service | None = None
    listeners: tuple[Listener, ...] = ()
    certificates: tuple[TlsPair, ...] = ()
    """Made of the Secrets it names (`cmi.tlssecret`)."""
    events: tuple[Event, ...] = ()
    refused: str | None = None
    """Why the Service cannot be served as it is now; it keeps what it was served with."""
    refused_reason: str = "Refused"
    """The reason its `openslb.io/Exposed` condition names when `refused` is set."""
    foreign: bool = False
    """The Service is another load-balancer class's: nothing of it is openslb's to write."""
    ip_family: Literal[4, 6] | None = None
    """The family its VIP should have: the Service's primary one (`spec.ipFamilies[0]`)."""
    caveats: tuple[str, ...] = ()
    """What of its spec is served otherwise than asked ("Reason: why"), named in its
    `openslb.io/Exposed` condition (its Warning Events say it too)."""
    referenced: bool = False
    """Not exposed itself, but named by a Gateway's route (`referenced`): stored so that
    its endpoints reach the tiers; nothing of its status is openslb's."""
    remembered_vip: IPAddress | None = None
    """The VIP the Service (Gateway, Ingress) had: its stored instance's, else the one its
    status names. If IPAM has lost its record (the store was lost), IPAM gives it back when
    it is free, so a rebuilt store moves no VIP."""


def service_key(body: Body) -> str:
    meta = body["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def build_inputs(body: Body) -> tuple[Any, ...]:
    """What `build` reads of a Service: a change to nothing else (its conditions, its
    finalizers, the resourceVersion: cmi's own status writes) needs no build. The uid: a
    Service deleted and made again (seen only in a relist) is new, to be reported on."""
    meta = body["metadata"]
    return (
        meta.get("uid"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
        body.get("spec"),
        (body.get("status") or {}).get("loadBalancer"),
    )


def short_name(*parts: str) -> str:
    """A DNS label from parts, ending in 64 bits of their hash: distinct parts never collide
    by chance, nor by a name someone chose to (that would take 2^64 tries)."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]
    base = "-".join(parts)[: 63 - 17].rstrip("-")
    return f"{base}-{digest}"


def dedicated_name(namespace: str, name: str) -> str:
    """The name of the instance a Service labelled `openslb.io/expose=true` gets."""
    return short_name(namespace, name)


def certificate_name(namespace: str, name: str, secret: str) -> str:
    """The Certificate a Service makes of a TLS Secret: one per Service and Secret, so
    each has one owner."""
    return short_name(namespace, name, "tls", secret)


def for_this_service_alone(build: Callable[P, Built]) -> Callable[P, Built]:
    """Whatever a Service holds, the answer is for it alone: content the model cannot take
    refuses this Service (`refused`), never the controller."""

    @functools.wraps(build)
    def guarded(*args: P.args, **inputs: P.kwargs) -> Built:
        body, previous = cast("Body", args[0]), cast(Previous, inputs["previous"])
        key = service_key(body)
        try:
            return build(*args, **inputs)
        except ValidationError as exc:
            return refused(key, previous, str(ModelError.from_validation("Service", exc)))
        except ModelError as exc:
            return refused(key, previous, str(exc))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return refused(
                key, previous, f"cmi cannot read this Service ({exc!r}): please report it"
            )

    return guarded


def refused(key: str, previous: Previous, reason: str, why: str = "Refused") -> Built:
    """A Service (or a Gateway, or an Ingress) cmi cannot serve as it is now keeps what it
    was served with, if anything; `why`: the Event's and the condition's reason."""
    balancer = previous.load_balancer
    if previous.service is not None:
        instance: str | None = previous.service.load_balancer
    elif balancer is not None and balancer.owner.kind.by_routes:
        instance = balancer.name  # a Gateway's or an Ingress's: it owns no Service
    else:
        instance = None
    kept = "keeping what it was served with" if instance else "not exposed"
    event = Event("Warning", why, f"{reason}; {kept}")
    if instance is None:
        return Built(key, exposed=False, events=(event,), refused=event.message,
                     refused_reason=why)  # fmt: skip
    return Built(
        key,
        exposed=True,
        instance=instance,
        dedicated=previous.load_balancer,
        service=previous.service,
        listeners=tuple(previous.listeners.values()),
        certificates=_kept(previous),
        events=(event,),
        refused=event.message,
        refused_reason=why,
    )


def _kept(previous: Previous) -> tuple[TlsPair, ...]:
    return tuple(TlsPair(c) for c in previous.certificates.values())


@for_this_service_alone
def build(
    body: Body,
    *,
    slices: Sequence[Body],
    nodes: Mapping[str, Body],
    defaults: Defaults,
    previous: Previous,
    instances: Mapping[str, LoadBalancer],
    namespace_labels: Mapping[str, str] | None = None,
    secrets: Mapping[str, Body] | None = None,
    now: float = 0.0,
) -> Built:
    """What this Service should own in the store, and what to tell its owner; `now` stamps
    the listeners that claim a port afresh. `namespace_labels`: its namespace's labels, which
    an instance's `allowed_namespace_selector` may admit it by; None: not known (yet).
    `secrets`: the TLS Secrets of its namespace it names, by name (a missing one is not
    there)."""
    key = service_key(body)
    meta, spec = body["metadata"], body.get("spec") or {}
    expose = _claimed(key, meta, spec, defaults)
    if isinstance(expose, Built):
        return expose
    events: list[Event] = []
    try:
        allowed_sources = source_ranges(meta, spec)
    except ValueError as exc:  # never open to every address: kept as served, or not exposed
        return refused(key, previous, str(exc), INVALID_SOURCE_RANGES)
    parsed = annotation.parse(meta.get("annotations") or {})
    settings = _settings(parsed, previous, events)

    dedicated: LoadBalancer | None = None
    remembered: IPAddress | None = None
    requested = _requested_ip(spec, settings, events)
    if expose == "true":
        instance = dedicated_name(meta["namespace"], meta["name"])
        vip = settings.vip or requested
        if vip is None and parsed.settings is None and previous.load_balancer is not None:
            vip = previous.load_balancer.vip
        dedicated = LoadBalancer(
            name=instance,
            vip=vip,
            pool=settings.pool or defaults.pool,
            node_group=settings.node_group or defaults.node_group,
            owner=Owner(kind=OwnerKind.SERVICE, name=key),
            namespace=meta["namespace"],
        )
        if vip is None:
            stored = previous.load_balancer.vip if previous.load_balancer else None
            remembered = stored or status_vip(body)
    else:
        instance = expose
        balancer = instances.get(instance)
        if balancer is not None and balancer.owner.kind.by_routes:
            balancer = None  # a Gateway's or an Ingress's instance serves its listeners alone
        if balancer is None or not balancer.admits(meta["namespace"], namespace_labels):
            selects = balancer is not None and balancer.allowed_namespace_selector is not None
            if selects and namespace_labels is None and previous.service is not None:
                # Fail static: a namespace not (yet) in cmi's cache says nothing about its
                # labels; a Service served keeps what it had until they are known.
                why = f"the labels of namespace {meta['namespace']} are not known yet"
                return refused(key, previous, why)
            # The same words whether it does not exist or is another tenant's: an Event
            # tells a tenant nothing about other namespaces' instances.
            events.append(
                Event("Warning", "InstanceNotFound",
                      f"label {EXPOSE_LABEL}={expose}: no load balancer instance named "
                      f"{expose!r} that Services of namespace {meta['namespace']} may join")
            )  # fmt: skip
            return Built(key, exposed=False, events=tuple(events))
        if settings.vip is not None:
            events.append(
                Event("Warning", "InvalidAnnotation",
                      f"openslb.io/vip: ignored: the Service shares {instance!r} and its VIP")
            )  # fmt: skip
        elif requested is not None and requested != balancer.vip:
            events.append(
                Event("Warning", "LoadBalancerIPIgnored",
                      f"spec.loadBalancerIP {requested}: ignored: the Service shares "
                      f"{instance!r} and its VIP")
            )  # fmt: skip

    ports = _ports(spec)
    mode = settings.backend_mode or defaults.backend_mode
    if mode == "node" and not any(p.node_port for p in ports):
        events.append(
            Event("Warning", "InvalidAnnotation",
                  "openslb.io/backend-mode: node mode needs NodePorts (type NodePort, or "
                  "LoadBalancer without allocateLoadBalancerNodePorts: false); using pod mode")
        )  # fmt: skip
        mode = "pod"
    slices = trusted_slices(meta["namespace"], spec, slices, defaults, events)
    backends = (
        _node_backends(spec, ports, slices, nodes, defaults)
        if mode == "node"
        else _pod_backends(slices, defaults.refused_backends, events)
    )
    service = Service(
        namespace=meta["namespace"],
        name=meta["name"],
        labels=meta.get("labels") or {},
        load_balancer=instance,
        ports=tuple(ports),
        backends=backends,
        backend_mode=mode,
    )
    family, caveats = _ip_families(spec, events)
    keep_served = parsed.settings is None
    pairs = (
        _kept(previous)
        if keep_served
        else _tls_pairs(key, settings.tls_secrets, secrets or {}, previous, events)
    )
    listeners = _listeners(
        key, instance, ports,
        settings=settings, served=previous.listeners, keep_served=keep_served,
        now=now, events=events, allowed_sources=allowed_sources,
        tls_certificates=tuple(p.certificate.name for p in pairs),
    )  # fmt: skip
    return Built(
        key,
        exposed=True,
        instance=instance,
        dedicated=dedicated,
        service=service,
        listeners=tuple(listeners),
        certificates=pairs,
        events=tuple(events),
        remembered_vip=remembered,
        ip_family=family,
        caveats=caveats,
    )


INVALID_SOURCE_RANGES = "InvalidSourceRanges"
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
OPEN_TO_ALL = frozenset({"0.0.0.0/0", "::/0"})


@for_this_service_alone
def referenced(
    body: Body, *, slices: Sequence[Body], defaults: Defaults, previous: Previous, instance: str
) -> Built:
    """A Service no label or class exposes that a Gateway's route names: its ports and
    endpoints (pod mode), stored under the Gateway's `instance`, with no listener."""
    meta, spec = body["metadata"], body.get("spec") or {}
    events: list[Event] = []
    service = Service(
        namespace=meta["namespace"],
        name=meta["name"],
        labels=meta.get("labels") or {},
        load_balancer=instance,
        ports=tuple(_ports(spec)),
        backends=_pod_backends(
            trusted_slices(meta["namespace"], spec, slices, defaults, events),
            defaults.refused_backends,
            events,
        ),
    )
    return Built(service_key(body), exposed=True, instance=instance, service=service,
                 events=tuple(events), referenced=True)  # fmt: skip


def _claimed(key: str, meta: Body, spec: Body, defaults: Defaults) -> str | Built:
    """The instance the Service asks for ("true": its own), or why it gets none: deleted,
    not openslb's, or another class's."""
    labels = meta.get("labels") or {}
    expose, other = claim(labels, spec, defaults)
    if other is not None:
        return foreign(key, labels, other, defaults)
    if expose is None or meta.get("deletionTimestamp"):
        return Built(key, exposed=False)
    return expose


def claim(
    labels: Mapping[str, str], spec: Body, defaults: Defaults
) -> tuple[str | None, str | None]:
    """Whose the Service is: (the instance it asks for, "true" for its own; None: not
    openslb's) and the class of another controller that owns it (then nothing is openslb's).

    The label works on a Service of any type; a Service of type LoadBalancer is claimed
    by its class, or without one if `claim_classless`; another class wins over the label."""
    class_ = spec.get("loadBalancerClass")
    if class_ and class_ != defaults.load_balancer_class:
        return None, str(class_)
    if (expose := labels.get(EXPOSE_LABEL)) is not None:
        return expose, None
    if spec.get("type") == "LoadBalancer" and (class_ or defaults.claim_classless):
        return "true", None
    return None, None


def foreign(key: str, labels: Mapping[str, str], class_: str, defaults: Defaults) -> Built:
    """A Service of another load-balancer class: nothing exposed, no status; if it carries
    the label, a Warning says why the label is ignored."""
    if EXPOSE_LABEL not in labels:
        return Built(key, exposed=False, foreign=True)
    message = (
        f"spec.loadBalancerClass is {class_!r}, another controller's (openslb's is "
        f"{defaults.load_balancer_class!r}): label {EXPOSE_LABEL} ignored, nothing exposed"
    )
    event = Event("Warning", "OtherLoadBalancerClass", message)
    return Built(key, exposed=False, events=(event,), foreign=True)


def source_ranges(meta: Body, spec: Body) -> tuple[str, ...]:
    """The client networks a Service admits (`spec.loadBalancerSourceRanges`, else the
    legacy annotation), written canonically (host bits cleared, as Kubernetes accepts
    them); () when it admits every address. ValueError names a bad entry and its field."""
    ranges = [str(r).strip() for r in spec.get("loadBalancerSourceRanges") or []]
    where = "spec.loadBalancerSourceRanges"
    if not ranges:
        raw = (meta.get("annotations") or {}).get(SOURCE_RANGES_ANNOTATION) or ""
        ranges, where = [r.strip() for r in raw.split(",") if r.strip()], SOURCE_RANGES_ANNOTATION
    networks = []
    for index, text in enumerate(ranges):
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(
                f"{where}[{index}]: {text!r} is not a CIDR such as 198.18.0.0/24"
            ) from None
    if set(networks) <= OPEN_TO_ALL:
        return ()
    return tuple(dict.fromkeys(networks))


DUAL_STACK = "DualStackNotSupported"
_FAMILIES: Mapping[str, Literal[4, 6]] = {"IPv4": 4, "IPv6": 6}


def _ip_families(spec: Body, events: list[Event]) -> tuple[Literal[4, 6] | None, tuple[str, ...]]:
    """The family the VIP should have (the primary of `spec.ipFamilies`), and a caveat if
    the Service asks for both: an instance has one VIP, of one family."""
    families = [str(f) for f in spec.get("ipFamilies") or []]
    primary = _FAMILIES.get(families[0]) if families else None
    policy = spec.get("ipFamilyPolicy")
    if len(families) < 2 and policy != "RequireDualStack":
        return primary, ()
    why = (
        f"ipFamilyPolicy {policy or 'unset'} with ipFamilies {', '.join(families) or 'unset'}: "
        f"an instance has one VIP, so it is served on {families[0] if families else 'one family'} "
        "only"
    )
    events.append(Event("Warning", DUAL_STACK, why))
    return primary, (f"{DUAL_STACK}: {why}",)


def _requested_ip(spec: Body, settings: ServiceSettings, events: list[Event]) -> IPAddress | None:
    """The VIP `spec.loadBalancerIP` asks for (deprecated by Kubernetes; `openslb.io/vip`
    wins); one that no VIP may have refuses the Service."""
    raw = spec.get("loadBalancerIP")
    if not raw:
        return None
    try:
        requested = annotation.parse_vip(str(raw))
    except ValueError as exc:
        error = FieldError(field="spec.loadBalancerIP", message=str(exc))
        raise ModelError("Service", [error]) from None
    if settings.vip is not None and settings.vip != requested:
        events.append(
            Event("Warning", "LoadBalancerIPIgnored",
                  f"spec.loadBalancerIP {requested}: ignored: openslb.io/vip asks for "
                  f"{settings.vip}")
        )  # fmt: skip
    return requested


def status_vip(body: Body) -> IPAddress | None:
    """The first address an object's `status.loadBalancer.ingress` names (a Service's or an
    Ingress's), if any: where its VIP outlives a lost store."""
    for ingress in ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if ip := endpoint_ip(str(ingress.get("ip") or "")):
            return ip
    return None


def _settings(parsed: Parsed, previous: Previous, events: list[Event]) -> ServiceSettings:
    """The annotations' settings; if any is bad, what the Service was served with.

    Listener fields fall back per port, in `_listeners`, to the listener served before.
    """
    for name in parsed.unknown:
        events.append(
            Event("Warning", "UnknownAnnotation", f"{name}: not an openslb annotation; ignored")
        )
    if parsed.settings is not None:
        return parsed.settings
    served = "the settings it was served with" if previous.service else "defaults"
    for problem in parsed.problems:
        events.append(Event("Warning", "InvalidAnnotation", f"{problem}; keeping {served}"))
    return ServiceSettings(
        backend_mode=previous.service.backend_mode if previous.service else None,
        pool=previous.load_balancer.pool if previous.load_balancer else None,
        node_group=previous.load_balancer.node_group if previous.load_balancer else None,
    )


def _tls_pairs(
    key: str,
    names: Sequence[str],
    secrets: Mapping[str, Body],
    previous: Previous,
    events: list[Event],
) -> tuple[TlsPair, ...]:
    """The certificates of the Secrets the Service names, each kept as served while its
    Secret cannot be used."""
    namespace, name = key.split("/", 1)
    pairs = []
    for secret in names:
        pair, problem = tlssecret.pair_from_secret(
            Owner(kind=OwnerKind.SERVICE, name=key), f"{namespace}/{secret}",
            certificate_name(namespace, name, secret), secrets.get(secret), previous.certificates,
        )  # fmt: skip
        if problem is not None:
            events.append(Event("Warning", *problem))
        if pair is not None:
            pairs.append(pair)
    return tuple(pairs)


def _annotated_fields(listener: Listener) -> dict[str, Any]:
    """The fields of a served listener that annotations control, to serve them again."""
    dumped = listener.model_dump(mode="json")
    keep = {path.split(".")[0] for path in annotation.LISTENER_ANNOTATIONS.values()}
    return {k: v for k, v in dumped.items() if k in keep}


def _ports(spec: Body) -> list[ServicePort]:
    """The Service's ports; a problem is named by its field in the API's terms."""
    ports = []
    for index, port in enumerate(spec.get("ports") or []):
        try:
            ports.append(
                ServicePort(
                    name=port.get("name") or "",
                    port=port["port"],
                    protocol=port.get("protocol", "TCP"),
                    app_protocol=port.get("appProtocol"),
                    target_port=port.get("targetPort"),
                    node_port=port.get("nodePort"),
                )
            )
        except ValidationError as exc:
            errors = ModelError.from_validation("Service", exc).errors
            where = f"spec.ports[{index}]"
            raise ModelError(
                "Service",
                [FieldError(field=f"{where}.{e.field}", message=e.message) for e in errors],
            ) from exc
    return ports


def _conditions(raw: Body) -> Conditions:
    # EndpointSlice semantics: an unknown `ready` means ready; unknown `serving` follows it.
    ready = raw.get("ready")
    ready = True if ready is None else bool(ready)
    serving = raw.get("serving")
    return Conditions(
        ready=ready,
        serving=ready if serving is None else bool(serving),
        terminating=bool(raw.get("terminating")),
    )


def _address_order(key: tuple[IPAddress, int]) -> tuple[int, int, int]:
    return (key[0].version, int(key[0]), key[1])


def trusted_slices(
    namespace: str, spec: Body, slices: Sequence[Body], defaults: Defaults, events: list[Event]
) -> list[Body]:
    """The EndpointSlices to take backends from: Kubernetes' controller's for a Service with
    a selector; hand-made ones only in namespaces `cmi.endpoint_slices_from` allows (a
    tenant who may write slices could otherwise point its VIP anywhere)."""
    allowed = "*" in defaults.endpoint_slices_from or namespace in defaults.endpoint_slices_from
    if allowed:
        return list(slices)
    selector = bool(spec.get("selector"))
    kept = [s for s in slices if selector and _managed_by(s) == SLICE_CONTROLLER]
    if ignored := len(slices) - len(kept):
        events.append(
            Event("Warning", "EndpointSlicesIgnored",
                  f"{ignored} EndpointSlice(s) not made by Kubernetes' EndpointSlice controller "
                  f"for this Service's selector are ignored: namespace {namespace} is not in "
                  "cmi.endpoint_slices_from")
        )  # fmt: skip
    return kept


def _managed_by(slice_: Body) -> str | None:
    labels = (slice_.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL)


def refused_backend(ip: IPAddress, refused: Sequence[IPNetwork]) -> bool:
    """An address no endpoint may have: this host, this link, any, a group, or a range
    openslb keeps for itself."""
    return (
        ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast
        or any(ip in network for network in refused)
    )  # fmt: skip


def _pod_backends(
    slices: Iterable[Body], refused: Sequence[IPNetwork], events: list[Event]
) -> dict[str, tuple[Backend, ...]]:
    by_port: dict[str, dict[tuple[IPAddress, int], Backend]] = {}
    turned_away: set[IPAddress] = set()
    for slice_ in slices:
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for port in slice_.get("ports") or []:
            if port.get("port") is None:
                continue
            bucket = by_port.setdefault(port.get("name") or "", {})
            for endpoint in slice_.get("endpoints") or []:
                conditions = _conditions(endpoint.get("conditions") or {})
                for address in endpoint.get("addresses") or []:
                    if (ip := endpoint_ip(address)) is None:
                        continue
                    if refused_backend(ip, refused):
                        turned_away.add(ip)
                        continue
                    bucket[(ip, port["port"])] = Backend(
                        address=ip,
                        port=port["port"],
                        node=endpoint.get("nodeName"),
                        zone=endpoint.get("zone"),
                        conditions=conditions,
                    )
    if turned_away:
        shown = ", ".join(
            str(ip) for ip in sorted(turned_away, key=lambda ip: (ip.version, int(ip)))[:5]
        )
        events.append(
            Event("Warning", "EndpointsRefused",
                  f"{len(turned_away)} endpoint address(es) refused ({shown}): loopback, "
                  "link-local, or in a range openslb keeps for itself (cmi.refused_backend_cidrs)")
        )  # fmt: skip
    return {
        name: tuple(bucket[k] for k in sorted(bucket, key=_address_order))
        for name, bucket in sorted(by_port.items())
    }


def _node_backends(
    spec: Body,
    ports: Sequence[ServicePort],
    slices: Iterable[Body],
    nodes: Mapping[str, Body],
    defaults: Defaults,
) -> dict[str, tuple[Backend, ...]]:
    """Node IPs on the NodePort: every eligible node, or with `externalTrafficPolicy: Local`
    only nodes hosting ready endpoints, weighted by how many they host."""
    local = spec.get("externalTrafficPolicy") == "Local"
    ready_per_node: dict[str, int] = {}
    for slice_ in slices:
        for endpoint in slice_.get("endpoints") or []:
            node_name = endpoint.get("nodeName")
            if node_name and _conditions(endpoint.get("conditions") or {}).ready:
                ready_per_node[node_name] = ready_per_node.get(node_name, 0) + 1
    eligible = []
    for name, node in sorted(nodes.items()):
        labels = node["metadata"].get("labels") or {}
        if not _node_ready(node) or EXCLUDE_LB_LABEL in labels:
            continue
        if defaults.exclude_unschedulable and (node.get("spec") or {}).get("unschedulable"):
            continue
        weight = ready_per_node.get(name, 0) if local else 1
        if weight:
            eligible.append((name, labels.get(ZONE_LABEL), _internal_ips(node), weight))
    return {
        port.name: tuple(
            Backend(
                address=address,
                port=port.node_port,
                weight=weight,
                node=name,
                zone=zone,
            )
            for name, zone, addresses, weight in eligible
            for address in addresses
        )
        for port in ports
        if port.node_port is not None
    }


def _node_ready(node: Body) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _internal_ips(node: Body) -> list[IPAddress]:
    addresses = (node.get("status") or {}).get("addresses") or []
    found = (endpoint_ip(a.get("address", "")) for a in addresses if a.get("type") == "InternalIP")
    return [ip for ip in found if ip is not None]


def endpoint_ip(text: str) -> IPAddress | None:
    """An address as the API server may hold it: canonical, or in a legacy form it
    accepted before strict validation (IPv4 with leading zeros, which it reads as decimal;
    IPv4-mapped IPv6, which it reads as IPv4). None for anything else."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        parts = text.split(".")
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))
        except ValueError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _listeners(
    key: str,
    instance: str,
    ports: Sequence[ServicePort],
    *,
    settings: ServiceSettings,
    served: Mapping[str, Listener],
    keep_served: bool,
    now: float,
    events: list[Event],
    allowed_sources: tuple[str, ...] = (),
    tls_certificates: tuple[str, ...] = (),
) -> list[Listener]:
    """One listener per port. A port whose settings do not fit it keeps the listener it
    was served with, if any; with `keep_served` (bad annotations) every port does.
    `tls_certificates`: made of the Secrets the Service names, for its HTTPS ports.

    `created_at` is when the listener first claimed its instance's port (`now`, or kept from
    the one served on that instance): older claims win conflicts, so relabelling an old
    Service wins nothing (its creationTimestamp did)."""
    namespace, name = key.split("/", 1)
    owner = Owner(kind=OwnerKind.SERVICE, name=key)
    listeners = []
    https_port = _https_port(ports, settings) if settings.https_redirect else None
    for port in ports:
        listener_name = short_name(namespace, name, port.name or str(port.port))
        before = served.get(listener_name)
        fields = (
            _annotated_fields(before) if keep_served and before else dict(settings.listener_fields)
        )
        if tls_certificates and not keep_served:
            fields["certificates"] = [*fields.get("certificates", ()), *tls_certificates]
        if port.protocol == "SCTP":
            events.append(Event("Warning", "UnsupportedPort", f"port {port.port}/SCTP: not served"))
            continue
        protocol, backend_protocol = annotation.protocol_for(
            port.app_protocol, port.name, port.protocol
        )
        if protocol is Protocol.HTTPS and not fields.get("certificates"):
            if settings.tls_secrets and not keep_served:
                listeners.extend(_without_certificate(port, before, events))
                continue
            protocol, backend_protocol = Protocol.TCP, None  # TLS passes through to the pods
        data: dict[str, Any] = {
            "name": listener_name,
            "load_balancer": instance,
            "protocol": protocol,
            "port": port.port,
            "target_port": port.port if not port.name or port.name.isdigit() else port.name,
            "owner": owner,
            "created_at": (
                before.created_at
                if before is not None and before.load_balancer == instance
                else now
            ),
            **_applying(fields, protocol),
            "allowed_sources": allowed_sources,  # both tiers enforce it (IPVS: the VIP guard)
        }
        if protocol.is_l7 and data.get("backend_protocol") is None:
            data["backend_protocol"] = backend_protocol
        if https_port is not None and protocol is Protocol.HTTP and not keep_served:
            redirect: dict[str, Any] = {"scheme": "https", "code": 301}
            if https_port != 443:  # (else left out: the Location then names no port)
                redirect["port"] = https_port
            to_https = {"name": annotation.TO_HTTPS_RULE, "redirect": redirect}
            data["routes"] = [to_https, *data.get("routes", [])]
        if protocol is Protocol.UDP:
            data["health_check"] = None
        try:
            listeners.append(Listener.model_validate(data))
        except ValidationError as exc:
            keeping = "keeping the listener it was served with" if before else "port not served"
            for error in ModelError.from_validation("Listener", exc).errors:
                events.append(
                    Event("Warning", "InvalidAnnotation",
                          f"{annotation.annotation_for_field(error.field)}: port {port.port}: "
                          f"{error.message}; {keeping}")
                )  # fmt: skip
            if before is not None:
                listeners.append(before)
    return listeners


def _without_certificate(
    port: ServicePort, before: Listener | None, events: list[Event]
) -> list[Listener]:
    """An HTTPS port asked to terminate TLS with Secrets none of which is usable: it never
    passes TLS through instead; it keeps what it was served with, else waits."""
    kept = "keeping the listener it was served with" if before else "port not served"
    events.append(
        Event("Warning", "NoCertificate",
              f"port {port.port}: no usable certificate from {tlssecret.ANNOTATION}; {kept}")
    )  # fmt: skip
    return [before] if before is not None else []


_L7_ONLY = {
    "backend_protocol", "request_timeout_s", "idle_timeout_s", "access_log", "routes",
}  # fmt: skip


def _applying(fields: Mapping[str, Any], protocol: Protocol) -> dict[str, Any]:
    """The annotated fields that apply to a port of this protocol: a TCP or UDP port takes
    the connection limits but not the per-request ones, which only Envoy sees."""
    applying = {k: v for k, v in fields.items() if _applies(k, protocol)}
    limits = applying.get("limits")
    if not protocol.is_l7 and isinstance(limits, Mapping):
        applying["limits"] = {k: v for k, v in limits.items() if k not in _PER_REQUEST}
    return applying


_PER_REQUEST = {"requests_per_second", "request_bandwidth_kib_s"}


def _https_port(ports: Sequence[ServicePort], settings: ServiceSettings) -> int:
    """Where `openslb.io/https-redirect` sends clients: the Service's port that terminates
    TLS (HTTPS with certificates), else 443."""
    for port in ports:
        protocol, _ = annotation.protocol_for(port.app_protocol, port.name, port.protocol)
        if protocol is Protocol.HTTPS and (
            settings.listener_fields.get("certificates") or settings.tls_secrets
        ):
            return port.port
    return 443


def _applies(field_name: str, protocol: Protocol) -> bool:
    """Layer-7 settings do not apply to a Service's TCP or UDP ports, nor certificates and
    the TLS policy to ports that do not terminate TLS."""
    if field_name in _L7_ONLY and not protocol.is_l7:
        return False
    return not (field_name in _TLS_ONLY and protocol is not Protocol.HTTPS)


_TLS_ONLY = {"certificates", "tls_policy"}
