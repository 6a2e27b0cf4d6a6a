"""Listeners: a protocol and port on a load balancer, forwarding to Services."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slb.model.base import Owner, OwnerKind, Shared, StoredObject
from slb.model.errors import CrossFieldError
from slb.model.fields import IPNetwork, Name, Port, PortRef
from slb.model.route import Route
from slb.model.traffic import (
    BackendProtocol,
    BackendTls,
    ClientCertificates,
    Forwarding,
    HealthCheck,
    HealthCheckType,
    Limits,
    Persistence,
    PersistenceMode,
    Protocol,
    Scheduler,
    TlsPolicy,
)
from slb.selector import LabelSelector

MAX_ROUTES = 10_000
"""Rules per listener: a Gateway's port takes all its routes' rules (5,000 routes at least)."""
IDLE_TIMEOUT_S = 900
"""Envoy's idle timeout on an L7 listener's connections and streams unless one is set."""


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
    idle_timeout_s: int = Field(
        default=IDLE_TIMEOUT_S,
        ge=1,
        le=86400,
        description="HTTP, HTTPS and GRPC: Envoy closes a client or backend connection, "
        "or a stream, idle this long; IPVS has no per-service idle timeout",
    )
    request_timeout_s: int = Field(default=0, ge=0, le=86400, description="0: no limit")
    access_log: bool = Field(
        default=False,
        description="HTTP, HTTPS and GRPC: log every request as a JSON line on the Envoy's "
        "stdout (off by default: it costs Envoy CPU on every request)",
    )
    allowed_sources: tuple[IPNetwork, ...] = Field(
        default=(),
        max_length=1000,
        description="Client networks that may connect (v4 and v6); none: every address",
    )
    denied_sources: tuple[IPNetwork, ...] = Field(
        default=(),
        max_length=1000,
        description="Client networks refused, even when allowed",
    )
    limits: Annotated[Limits, Shared] = Limits()
    certificates: tuple[Name, ...] = ()
    tls_policy: TlsPolicy = TlsPolicy.TLS12
    """HTTPS: the TLS versions and ciphers clients may use."""
    client_certificates: ClientCertificates | None = None
    """HTTPS: ask clients for certificates (mutual TLS)."""
    backend_protocol: BackendProtocol | None = None
    backend_tls: BackendTls | None = None
    """Backend protocol `tls`: verify the backends' certificates, send a server name."""
    selector: LabelSelector | None = None
    target_port: PortRef
    routes: tuple[Route, ...] = Field(default=(), max_length=MAX_ROUTES)
    """L7 routing rules, tried in order; none: every request goes to the listener's backends."""
    owner: Owner
    created_at: float = Field(default=0.0, ge=0, description="unix time; older wins conflicts")

    @field_validator("selector")
    @classmethod
    def _selector_not_empty(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.empty:
            raise ValueError("must select at least one label; an empty selector matches nothing")
        return selector

    @model_validator(mode="before")
    @classmethod
    def _stored_l4_idle_timeout(cls, data: Any, info: ValidationInfo) -> Any:
        # A TCP or UDP listener stored before its idle timeout was refused is read with the
        # default: IPVS never applied it, and the listener stays editable.
        stored = bool(info.context and info.context.get("stored"))
        if stored and isinstance(data, dict) and data.get("protocol") in ("TCP", "UDP"):
            return {**data, "idle_timeout_s": IDLE_TIMEOUT_S}
        return data

    @model_validator(mode="after")
    def _no_check_port(self) -> Self:
        # Envoy takes a check port per endpoint, not per check: not translated for listeners
        if self.health_check is not None and self.health_check.port is not None:
            raise CrossFieldError([("health_check.port", "only a node group's envoy_check")])
        return self

    @model_validator(mode="after")
    def _fields_fit_protocol(self) -> Self:
        l7, problems = self.protocol.is_l7, []
        kind = self.owner.kind
        if kind is OwnerKind.SERVICE and self.selector is not None:
            problems.append(("selector", "a Service's own listener forwards to that Service only"))
        if kind.by_routes and self.selector is not None:
            problems.append(("selector", f"a {kind.value}'s listener forwards by its routes only"))
        if kind is OwnerKind.OPERATOR and self.selector is None:
            problems.append(("selector", "required: which exposed Services to forward to"))
        problems += self._tls_problems()
        if not l7:
            problems += self._l4_problems()
        if self.protocol is Protocol.TLS:
            problems += self._passthrough_problems()
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

    def _tls_problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.protocol is Protocol.HTTPS and not self.certificates:
            problems.append(("certificates", "HTTPS listeners need at least one certificate"))
        if self.protocol not in (Protocol.HTTPS, Protocol.TLS):
            given = {"certificates": bool(self.certificates),
                     "client_certificates": self.client_certificates is not None,
                     "tls_policy": self.tls_policy is not TlsPolicy.TLS12}  # fmt: skip
            problems += [(f, "only HTTPS and TLS listeners terminate TLS")
                         for f, on in given.items() if on]  # fmt: skip
        elif not self.certificates:  # a TLS listener without: passthrough
            given = {"client_certificates": self.client_certificates is not None,
                     "tls_policy": self.tls_policy is not TlsPolicy.TLS12}  # fmt: skip
            problems += [(f, "a TLS listener terminates TLS only with certificates")
                         for f, on in given.items() if on]  # fmt: skip
        if self.backend_tls is not None and self.upstream_protocol is not BackendProtocol.TLS:
            problems.append(("backend_tls", "needs backend_protocol tls"))
        return problems

    def _l4_problems(self) -> list[tuple[str, str]]:
        """L7 settings on a TCP or UDP listener: IPVS has nothing to apply them with."""
        only_l7, problems = "applies only to HTTP, HTTPS and GRPC listeners", []
        if self.backend_protocol is not None:
            problems.append(("backend_protocol", only_l7))
        if self.request_timeout_s:
            problems.append(("request_timeout_s", only_l7))
        if self.access_log:
            problems.append(("access_log", only_l7))
        for per_request in ("requests_per_second", "request_bandwidth_kib_s"):
            if getattr(self.limits, per_request) is not None:
                problems.append((f"limits.{per_request}", f"{only_l7}: IPVS sees no requests"))
        if self.idle_timeout_s != IDLE_TIMEOUT_S:
            problems.append(("idle_timeout_s", f"{only_l7} (IPVS has no idle timeout of its own)"))
        if self.scheduler is Scheduler.RANDOM:
            problems.append(("scheduler", "'random' exists only for L7 listeners; IPVS has none"))
        if self.persistence.mode is PersistenceMode.COOKIE:
            problems.append(("persistence.mode", "'cookie' needs an HTTP, HTTPS or GRPC listener"))
        return problems

    def _passthrough_problems(self) -> list[tuple[str, str]]:
        """What needs Envoy to read requests, on a listener that forwards TLS streams."""
        no_http, problems = "TLS listeners see no requests", []
        for field in ("backend_protocol", "backend_tls"):
            if getattr(self, field) is not None:
                problems.append((field, f"{no_http}: they forward the stream as it comes"))
        if self.request_timeout_s:
            problems.append(("request_timeout_s", no_http))
        if self.access_log:
            problems.append(("access_log", no_http))
        for per_request in ("requests_per_second", "request_bandwidth_kib_s"):
            if getattr(self.limits, per_request) is not None:
                problems.append((f"limits.{per_request}", no_http))
        if self.persistence.mode is PersistenceMode.COOKIE:
            problems.append(("persistence.mode", f"'cookie': {no_http}"))
        if self.health_check is not None and self.health_check.type is not HealthCheckType.TCP:
            problems.append(("health_check.type", f"tcp only: {no_http}"))
        allowed = {"name", "hosts", "forward_to"}
        for i, route in enumerate(self.routes):
            problems += [
                (f"routes.{i}.{field}", f"{no_http}: a rule matches hosts (SNI) and forwards")
                for field in sorted(route.model_fields_set - allowed)
                if getattr(route, field) != Route.model_fields[field].default
            ]
        return problems

    def _route_problems(self) -> list[tuple[str, str]]:
        if not self.routes:
            return []
        if not self.protocol.is_l7:
            return self._l4_route_problems()
        problems, seen = [], set()
        for i, route in enumerate(self.routes):
            if route.name in seen:
                problems.append((f"routes.{i}.name", f"{route.name!r} is used twice"))
            seen.add(route.name)
            if self.owner.kind is OwnerKind.SERVICE:
                problems += [
                    (f"routes.{i}.forward_to.{j}.{field}", "a Service's listener forwards to it")
                    for j, target in enumerate(route.forward_to)
                    for field in ("selector", "service")
                    if getattr(target, field) is not None
                ]
                if route.mirrors:
                    problems.append((f"routes.{i}.mirrors", "a Service's listener forwards to it"))
            if self.owner.kind.by_routes:
                problems += [
                    (f"routes.{i}.forward_to.{j}.service", "each route names its Services")
                    for j, target in enumerate(route.targets)
                    if target.service is None
                ] + [
                    (f"routes.{i}.mirrors.{j}.to.service", "each route names its Services")
                    for j, mirror in enumerate(route.mirrors)
                    if mirror.to.service is None
                ]
            grpc = self.protocol is Protocol.GRPC or route.grpc_only
            if grpc and route.forwards and not self.route_upstream_is_http2(route):
                problems.append(
                    (f"routes.{i}.backend_protocol", "gRPC needs HTTP/2 to its backends")
                )
            if self.protocol is Protocol.GRPC:
                grpc_only = "GRPC listeners match grpc_service or path_regex, and answer gRPC"
                problems += [
                    (f"routes.{i}.{field}", grpc_only)
                    for field in ("path_prefix", "path_segments", "path_exact", "redirect")
                    if getattr(route, field) is not None
                ]
        return problems

    def _l4_route_problems(self) -> list[tuple[str, str]]:
        """IPVS matches nothing: a Gateway's TCP or UDP listener takes one rule, which
        only forwards (its targets' endpoints become the real servers, by weight)."""
        if not self.owner.kind.by_routes:
            return [("routes", "only HTTP, HTTPS, GRPC and TLS listeners route")]
        if len(self.routes) > 1:
            return [("routes", "a TCP or UDP listener forwards by one rule: IPVS matches nothing")]
        route, allowed = self.routes[0], {"name", "forward_to"}
        problems = [
            (f"routes.0.{field}", "IPVS sees no requests: a TCP or UDP rule only forwards")
            for field in sorted(route.model_fields_set - allowed)
            if getattr(route, field) != Route.model_fields[field].default
        ]
        if not route.forward_to:
            problems.append(("routes.0.forward_to", "a TCP or UDP rule forwards to its Services"))
        problems += [
            (f"routes.0.forward_to.{j}.service", "each route names its Services")
            for j, target in enumerate(route.forward_to)
            if target.service is None
        ]
        return problems

    @property
    def terminates_tls(self) -> bool:
        """Envoy ends the clients' TLS: HTTPS, and TLS given certificates (else passthrough)."""
        return self.protocol is Protocol.HTTPS or (
            self.protocol is Protocol.TLS and bool(self.certificates)
        )

    @property
    def tenant(self) -> str | None:
        """The namespace of the Service or Gateway that made it; None: an operator's."""
        if self.owner.kind.from_kubernetes:
            return self.owner.name.split("/", 1)[0]
        return None

    @property
    def upstream_is_http2(self) -> bool:
        """Whether L7 speaks HTTP/2 to the listener's own backends (h2c, or TLS for gRPC)."""
        return self.route_upstream_is_http2(None)

    @property
    def upstream_protocol(self) -> BackendProtocol:
        """The backend protocol in force: gRPC defaults to h2c, everything else to HTTP/1.1."""
        if self.backend_protocol is not None:
            return self.backend_protocol
        return BackendProtocol.H2C if self.protocol is Protocol.GRPC else BackendProtocol.HTTP1

    def route_upstream(self, route: Route | None) -> BackendProtocol:
        """The backend protocol of a rule's targets: its own, else the listener's; a gRPC
        rule's default is h2c."""
        if route is not None and route.backend_protocol is not None:
            return route.backend_protocol
        if route is not None and route.grpc_only and self.backend_protocol is None:
            return BackendProtocol.H2C
        return self.upstream_protocol

    def route_upstream_is_http2(self, route: Route | None) -> bool:
        """Whether a rule's targets (None: the listener's own) get HTTP/2: h2c, or TLS
        carrying gRPC."""
        upstream = self.route_upstream(route)
        grpc = self.protocol is Protocol.GRPC or (route is not None and route.grpc_only)
        return upstream is BackendProtocol.H2C or (upstream is BackendProtocol.TLS and grpc)
