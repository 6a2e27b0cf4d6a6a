"""The desired-state model: what the load balancer must look like.

Every tier reads these objects and nothing else, so validation lives here once: the
console, the CLI, cmi and the store all reject the same bad input with the same
field-named errors. Objects are immutable; a change is a new object written to the
store, which gives it a revision.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from slb.selector import LabelSelector, check_label_key, check_label_value

SCHEMA_VERSION = 1
"""Written into every stored document; readers refuse documents from a newer schema."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


def is_dns_label(value: str) -> bool:
    return bool(_DNS_LABEL.match(value))


def _dns_label(value: str) -> str:
    if not is_dns_label(value):
        raise ValueError(
            f"{value!r} is not a DNS label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _port_ref(value: object) -> int | str:
    """A port by number (1-65535) or by name (an IANA service name, as Kubernetes has it)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a port number or a port name (got {value!r})")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is out of range 1-65535")
        return value
    if not _PORT_NAME.match(value) or value.isdigit():
        raise ValueError(
            f"{value!r} is neither a port number nor a port name (1-15 lowercase letters, "
            "digits or '-', at least one letter)"
        )
    return value


Name = Annotated[str, AfterValidator(_dns_label)]
PortRef = Annotated[int | str, PlainValidator(_port_ref, json_schema_input_type=int | str)]
Port = Annotated[int, Field(ge=1, le=65535)]
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class FieldError(BaseModel):
    """One problem with one field, named by its dotted path."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ModelError(ValueError):
    """Bad input, with every problem found, each naming its field."""

    def __init__(self, kind: str, errors: list[FieldError]) -> None:
        self.kind = kind
        self.errors = errors
        super().__init__(f"invalid {kind}: " + "; ".join(str(e) for e in errors))

    @classmethod
    def from_validation(cls, kind: str, exc: ValidationError) -> ModelError:
        errors = []
        for err in exc.errors():
            # Union members add tags such as "lax-or-strict[...]" to the path: not fields.
            field = ".".join(str(part) for part in err["loc"] if "[" not in str(part))
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, CrossFieldError):
                prefix = f"{field}." if field else ""
                errors += [FieldError(field=prefix + f, message=m) for f, m in cause.problems]
                continue
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] not in ("missing", "value_error", "extra_forbidden") and "input" in err:
                message += f" (got {err['input']!r})"
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            errors.append(FieldError(field=field, message=message))
        return cls(kind, errors)


class CrossFieldError(ValueError):
    """Raised by model validators that check fields against each other: one entry per field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


_shared: dict[object, object] = {}


def _share(value: Any) -> Any:
    """Equal frozen values share one instance (bounded): 100,000 backends mostly carry the
    same conditions and listeners the same health check, which saves a tier's memory."""
    if len(_shared) < 4096:
        return _shared.setdefault(value, value)
    return _shared.get(value, value)


Shared = AfterValidator(_share)


class StoredObject(_Model):
    """A top-level object of the desired state, stored under (kind, key)."""

    kind: ClassVar[str]

    @property
    def key(self) -> str:
        name: str = getattr(self, "name")  # noqa: B009 - every subclass has one
        return name


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    GRPC = "GRPC"

    @property
    def is_l7(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTPS, Protocol.GRPC)

    @property
    def transport(self) -> Literal["TCP", "UDP"]:
        """What IPVS sees: every L7 protocol rides TCP."""
        return "UDP" if self is Protocol.UDP else "TCP"


class Scheduler(StrEnum):
    """IPVS schedulers by their kernel names; L7 maps them onto Envoy's policies.

    `random` exists only at L7 (Envoy's RANDOM policy); IPVS has no such scheduler.
    """

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    SH = "sh"
    MH = "mh"
    DH = "dh"
    SED = "sed"
    NQ = "nq"
    LBLC = "lblc"
    LBLCR = "lblcr"
    FO = "fo"
    OVF = "ovf"
    RANDOM = "random"


class BackendProtocol(StrEnum):
    """How an L7 listener talks to its backends."""

    HTTP1 = "http1"
    H2C = "h2c"
    TLS = "tls"


class Forwarding(StrEnum):
    """IPVS packet forwarding method towards the real servers."""

    NAT = "nat"
    DR = "dr"
    TUN = "tun"


class HealthCheckType(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    GRPC = "grpc"


class HealthCheck(_Model):
    """Active health check from the LB node; bounds follow Alibaba Cloud SLB's."""

    type: HealthCheckType = HealthCheckType.TCP
    path: str | None = Field(default=None, max_length=1024)
    expected_codes: str | None = Field(default=None, pattern=r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")
    grpc_service: str | None = Field(default=None, max_length=256)
    interval_s: int = Field(default=2, ge=1, le=50)
    timeout_s: int = Field(default=5, ge=1, le=300)
    healthy_threshold: int = Field(default=3, ge=2, le=10)
    unhealthy_threshold: int = Field(default=3, ge=2, le=10)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Probe this port instead of the real server's (like Alibaba SLB's connect port)."""

    @model_validator(mode="after")
    def _fields_fit_type(self) -> Self:
        problems = []
        if self.type is HealthCheckType.HTTP:
            if self.path is not None and not self.path.startswith("/"):
                problems.append(("path", "must start with '/'"))
        else:
            if self.path is not None:
                problems.append(("path", "applies only to http health checks"))
            if self.expected_codes is not None:
                problems.append(("expected_codes", "applies only to http health checks"))
        if self.type is not HealthCheckType.GRPC and self.grpc_service is not None:
            problems.append(("grpc_service", "applies only to grpc health checks"))
        if problems:
            raise CrossFieldError(problems)
        return self


class PersistenceMode(StrEnum):
    NONE = "none"
    SOURCE_IP = "source_ip"
    COOKIE = "cookie"


class Persistence(_Model):
    """Session persistence: the same client keeps reaching the same backend."""

    mode: PersistenceMode = PersistenceMode.NONE
    timeout_s: int = Field(default=300, ge=1, le=86400)
    cookie_name: str | None = Field(default=None, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

    @model_validator(mode="after")
    def _cookie_name_only_for_cookie(self) -> Self:
        if self.cookie_name is not None and self.mode is not PersistenceMode.COOKIE:
            raise CrossFieldError([("cookie_name", "applies only to mode 'cookie'")])
        return self


class OwnerKind(StrEnum):
    SERVICE = "Service"
    OPERATOR = "Operator"


class Owner(_Model):
    """Who made an object: a Service (then cmi manages it) or an operator."""

    kind: OwnerKind
    name: str = Field(min_length=1, max_length=253)


_HOST = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
_GRPC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _host(value: str) -> str:
    if len(value) > 253 or not _HOST.match(value):
        raise ValueError(
            f"{value!r} is not a host name: lowercase DNS labels joined by '.', "
            "optionally starting with '*.' to match every subdomain"
        )
    return value


def _grpc_service(value: str) -> str:
    if len(value) > 256 or not all(_GRPC_NAME.match(part) for part in value.split(".")):
        raise ValueError(
            f"{value!r} is not a fully qualified gRPC service name such as 'shop.v1.Cart'"
        )
    return value


def _grpc_method(value: str) -> str:
    if len(value) > 128 or not _GRPC_NAME.match(value):
        raise ValueError(f"{value!r} is not a gRPC method name such as 'GetCart'")
    return value


Host = Annotated[str, AfterValidator(_host)]


class Route(_Model):
    """An L7 routing rule: requests it matches go to its own backends.

    A route matches on hosts (any of them; none: every host) and on either a path prefix
    or a gRPC service and optional method. Its backends are the Services its selector
    picks on its target port, and its timeout bounds each request; all three default to
    the listener's. Routes are tried in order, and a request no route matches goes to the
    listener's own backends.
    """

    name: Name
    hosts: tuple[Host, ...] = Field(default=(), max_length=64)
    path_prefix: str | None = Field(default=None, min_length=1, max_length=1024)
    grpc_service: Annotated[str, AfterValidator(_grpc_service)] | None = None
    grpc_method: Annotated[str, AfterValidator(_grpc_method)] | None = None
    selector: LabelSelector | None = None
    target_port: PortRef | None = None
    timeout_s: int | None = Field(
        default=None, ge=0, le=86400, description="0: no limit; none: the listener's"
    )

    @field_validator("selector")
    @classmethod
    def _selector_not_empty(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.empty:
            raise ValueError("must select at least one label; leave it out to use the listener's")
        return selector

    @model_validator(mode="after")
    def _one_kind_of_match(self) -> Self:
        problems = []
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            problems.append(("path_prefix", "must start with '/'"))
        if self.path_prefix is not None and self.grpc_service is not None:
            problems.append(("grpc_service", "a route matches a path prefix or a gRPC service"))
        if self.grpc_method is not None and self.grpc_service is None:
            problems.append(("grpc_method", "needs grpc_service"))
        if problems:
            raise CrossFieldError(problems)
        return self


class Listener(StoredObject):
    """A protocol and port on a load balancer, forwarding to Services.

    An operator's listener selects among exposed Services with a label selector; a
    listener generated from a Service's port (owner kind Service) has no selector and
    forwards to that Service alone.
    """

    kind: ClassVar[str] = "Listener"

    name: Name
    load_balancer: Name
    protocol: Protocol
    port: Port
    scheduler: Scheduler = Scheduler.RR
    forwarding: Forwarding = Forwarding.NAT
    health_check: Annotated[HealthCheck | None, Shared] = HealthCheck()
    persistence: Annotated[Persistence, Shared] = Persistence()
    idle_timeout_s: int = Field(default=900, ge=1, le=86400)
    request_timeout_s: int = Field(default=0, ge=0, le=86400, description="0: no limit")
    certificates: tuple[Name, ...] = ()
    backend_protocol: BackendProtocol | None = None
    selector: LabelSelector | None = None
    target_port: PortRef
    routes: tuple[Route, ...] = Field(default=(), max_length=256)
    """L7 routing rules, tried in order; none: every request goes to the listener's backends."""
    owner: Owner
    created_at: float = Field(default=0.0, ge=0, description="unix time; older wins conflicts")

    @field_validator("selector")
    @classmethod
    def _selector_not_empty(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.empty:
            raise ValueError("must select at least one label; an empty selector matches nothing")
        return selector

    @model_validator(mode="after")
    def _no_check_port(self) -> Self:
        # Envoy takes a check port per endpoint, not per check: not translated for listeners
        if self.health_check is not None and self.health_check.port is not None:
            raise CrossFieldError([("health_check.port", "only a node group's envoy_check")])
        return self

    @model_validator(mode="after")
    def _fields_fit_protocol(self) -> Self:
        l7, problems = self.protocol.is_l7, []
        by_service = self.owner.kind is OwnerKind.SERVICE
        if by_service and self.selector is not None:
            problems.append(("selector", "a Service's own listener forwards to that Service only"))
        if not by_service and self.selector is None:
            problems.append(("selector", "required: which exposed Services to forward to"))
        if self.protocol is Protocol.HTTPS and not self.certificates:
            problems.append(("certificates", "HTTPS listeners need at least one certificate"))
        if self.protocol is not Protocol.HTTPS and self.certificates:
            problems.append(("certificates", "only HTTPS listeners terminate TLS"))
        if not l7 and self.backend_protocol is not None:
            problems.append(("backend_protocol", "applies only to HTTP, HTTPS and GRPC listeners"))
        if not l7 and self.request_timeout_s:
            problems.append(("request_timeout_s", "applies only to HTTP, HTTPS and GRPC listeners"))
        if not l7 and self.scheduler is Scheduler.RANDOM:
            problems.append(("scheduler", "'random' exists only for L7 listeners; IPVS has none"))
        if not l7 and self.persistence.mode is PersistenceMode.COOKIE:
            problems.append(("persistence.mode", "'cookie' needs an HTTP, HTTPS or GRPC listener"))
        if self.protocol is Protocol.UDP and self.health_check is not None:
            problems.append(("health_check", "UDP listeners cannot be health-checked; use null"))
        if self.protocol is Protocol.GRPC and self.backend_protocol is BackendProtocol.HTTP1:
            problems.append(("backend_protocol", "gRPC needs HTTP/2 to its backends: h2c or tls"))
        if (
            l7
            and self.health_check is not None
            and self.health_check.type is HealthCheckType.GRPC
            and not self.upstream_is_http2
        ):
            problems.append(
                ("health_check.type", "grpc health checks need HTTP/2 backends (h2c or GRPC)")
            )
        problems += self._route_problems()
        if problems:
            raise CrossFieldError(problems)
        return self

    def _route_problems(self) -> list[tuple[str, str]]:
        if not self.routes:
            return []
        if not self.protocol.is_l7:
            return [("routes", "only HTTP, HTTPS and GRPC listeners route requests")]
        problems, seen = [], set()
        for i, route in enumerate(self.routes):
            if route.name in seen:
                problems.append((f"routes.{i}.name", f"{route.name!r} is used twice"))
            seen.add(route.name)
            if self.owner.kind is OwnerKind.SERVICE and route.selector is not None:
                problems.append(
                    (f"routes.{i}.selector", "a Service's own listener forwards to it only")
                )
            if self.protocol is Protocol.GRPC and route.path_prefix is not None:
                problems.append((f"routes.{i}.path_prefix", "GRPC listeners route by grpc_service"))
        return problems

    @property
    def upstream_is_http2(self) -> bool:
        """Whether L7 speaks HTTP/2 to the backends (h2c, or TLS for gRPC)."""
        upstream = self.upstream_protocol
        return upstream is BackendProtocol.H2C or (
            upstream is BackendProtocol.TLS and self.protocol is Protocol.GRPC
        )

    @property
    def upstream_protocol(self) -> BackendProtocol:
        """The backend protocol in force: gRPC defaults to h2c, everything else to HTTP/1.1."""
        if self.backend_protocol is not None:
            return self.backend_protocol
        return BackendProtocol.H2C if self.protocol is Protocol.GRPC else BackendProtocol.HTTP1


class LBNode(_Model):
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


class LoadBalancer(StoredObject):
    """An LB instance: a VIP served by one LB node group."""

    kind: ClassVar[str] = "LoadBalancer"

    name: Name
    vip: IPAddress | None = None
    pool: Name | None = None
    node_group: Name = "default"
    owner: Owner

    @model_validator(mode="after")
    def _has_address_source(self) -> Self:
        if self.vip is None and self.pool is None:
            raise CrossFieldError([("vip", "give a fixed vip or a pool to allocate one from")])
        return self


class Conditions(_Model):
    """EndpointSlice conditions of one backend."""

    ready: bool = True
    serving: bool = True
    terminating: bool = False


class Backend(_Model):
    """One real server: an address and port that receives traffic."""

    address: IPAddress
    port: Port
    weight: int = Field(default=1, ge=0, le=65535, description="0: drain, no new connections")
    node: str | None = Field(default=None, max_length=253)
    zone: str | None = Field(default=None, max_length=253)
    conditions: Annotated[Conditions, Shared] = Conditions()


class ServicePort(_Model):
    name: str = Field(default="", max_length=15)
    port: Port
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None
    target_port: PortRef | None = None
    node_port: Port | None = None


class Service(StoredObject):
    """A labelled Kubernetes Service as cmi saw it, with its backends per port name."""

    kind: ClassVar[str] = "Service"

    namespace: Name
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    load_balancer: Name
    ports: tuple[ServicePort, ...] = ()
    backends: dict[str, tuple[Backend, ...]] = Field(default_factory=dict)
    backend_mode: Literal["pod", "node"] = "pod"
    """pod: the endpoints' pod IPs on the target port; node: node IPs on the NodePort."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            check_label_key(key)
            check_label_value(value)
        return labels

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_named(self, target: int | str) -> ServicePort | None:
        """The Service port a listener's target_port means: by name, else by number."""
        for port in self.ports:
            if target in (port.name, port.port):
                return port
        return None


class Certificate(StoredObject):
    """A PEM certificate chain; the private key lives apart, named by `key_ref`."""

    kind: ClassVar[str] = "Certificate"

    name: Name
    chain_pem: str = Field(min_length=1, max_length=256 * 1024)
    key_ref: str = Field(min_length=1, max_length=253)

    @field_validator("chain_pem")
    @classmethod
    def _chain_parses(cls, chain_pem: str) -> str:
        from cryptography import x509  # noqa: PLC0415 - only certificates need it

        try:
            certs = x509.load_pem_x509_certificates(chain_pem.encode())
        except ValueError as exc:
            raise ValueError(f"not a PEM certificate chain: {exc}") from None
        if not certs:
            raise ValueError("no certificate found in the PEM text")
        if "PRIVATE KEY" in chain_pem:
            raise ValueError("contains a private key: upload keys separately")
        return chain_pem


class AddressPool(StoredObject):
    """CIDRs that VIPs are allocated from."""

    kind: ClassVar[str] = "AddressPool"

    name: Name
    cidrs: tuple[IPNetwork, ...] = Field(min_length=1)
    auto_assign: bool = True

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


KINDS: Mapping[str, type[StoredObject]] = {
    cls.kind: cls for cls in (LoadBalancer, Listener, Service, Certificate, AddressPool, NodeGroup)
}
"""Every kind the store holds, by name."""


def parse(kind: str, data: Mapping[str, Any]) -> StoredObject:
    """Validate `data` as an object of `kind`, raising ModelError naming every bad field."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ModelError(kind, [FieldError(field="kind", message=f"unknown kind {kind!r}")])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ModelError.from_validation(kind, exc) from None


def dump_document(obj: StoredObject) -> str:
    """The stored form: canonical JSON with the schema version and kind around the object.

    Canonical (sorted keys, no spaces) so equal objects give equal bytes, which lets the
    store drop writes that change nothing.
    """
    return json.dumps(
        {"schema": SCHEMA_VERSION, "kind": obj.kind, "spec": obj.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )


def load_document(raw: str | bytes) -> StoredObject:
    """Read a stored document back, refusing schemas newer than this code understands."""
    doc = json.loads(raw)
    schema = doc.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ModelError(
            str(doc.get("kind")),
            [FieldError(field="schema", message=f"unsupported schema version {schema!r}")],
        )
    return parse(doc["kind"], doc["spec"])
