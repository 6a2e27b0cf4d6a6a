"""How a listener carries traffic: protocols, schedulers, backend protocols, forwarding,
health checks and session persistence.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, model_validator

from slb.model.base import Model
from slb.model.errors import CrossFieldError
from slb.model.fields import Host, HttpPath, PemCertificates


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    GRPC = "GRPC"
    TLS = "TLS"
    """TLS streams: Envoy routes each connection by the name its client sends (SNI) to
    backends that terminate TLS themselves (passthrough), or, given certificates, ends the
    TLS itself and forwards the plain stream (terminate)."""

    @property
    def is_l7(self) -> bool:
        """Served by the L7 tier (Envoy), not by IPVS alone."""
        return self in (Protocol.HTTP, Protocol.HTTPS, Protocol.GRPC, Protocol.TLS)

    @property
    def is_http(self) -> bool:
        """Envoy reads the requests: HTTP routing, limits, health checks and logs apply."""
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


DEFAULT_EXPECTED_CODES = "200-399"
"""What an http health check without `expected_codes` accepts from a real server at L4."""


class HealthCheck(Model):
    """Active health check from the LB node; bounds follow Alibaba Cloud SLB's."""

    type: HealthCheckType = HealthCheckType.TCP
    path: HttpPath | None = Field(default=None, max_length=1024)
    expected_codes: str | None = Field(
        default=None,
        pattern=r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$",
        description="e.g. '200,301-302'; none: 200-399 at L4, 200 only at L7 (Envoy's default)",
    )
    grpc_service: str | None = Field(default=None, max_length=256, pattern=r"^[A-Za-z0-9_.]*$")
    interval_s: int = Field(default=2, ge=1, le=50)
    timeout_s: int = Field(default=5, ge=1, le=300)
    healthy_threshold: int = Field(default=3, ge=2, le=10)
    unhealthy_threshold: int = Field(default=3, ge=2, le=10)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Probe this port instead of the real server's (like Alibaba SLB's connect port)."""

    @model_validator(mode="after")
    def _fields_fit_type(self) -> Self:
        problems = []
        if self.type is not HealthCheckType.HTTP:
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


class Persistence(Model):
    """Session persistence: the same client keeps reaching the same backend."""

    mode: PersistenceMode = PersistenceMode.NONE
    timeout_s: int = Field(default=300, ge=1, le=86400)
    cookie_name: str | None = Field(default=None, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

    @model_validator(mode="after")
    def _cookie_name_only_for_cookie(self) -> Self:
        if self.cookie_name is not None and self.mode is not PersistenceMode.COOKIE:
            raise CrossFieldError([("cookie_name", "applies only to mode 'cookie'")])
        return self


class Limits(Model):
    """A listener's limits (none: no limit of that kind). HTTP, HTTPS and GRPC listeners:
    each per Envoy of its node group. TCP and UDP listeners: per LB node, in IPVS (the
    connections, split over the real servers) and the VIP guard (the rate)."""

    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="open client connections; none: 10,000 at L7, no limit at L4",
    )
    connections_per_second: int | None = Field(
        default=None, ge=1, le=1_000_000, description="new client connections a second"
    )
    requests_per_second: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="requests a second; beyond: 429 (gRPC: RESOURCE_EXHAUSTED), with the "
        "header x-openslb-rate-limited",
    )
    request_bandwidth_kib_s: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="each request's body and its response's, KiB a second (Envoy limits "
        "per request; an HTTP/1.1 connection carries one at a time)",
    )

    @property
    def empty(self) -> bool:
        return self == Limits()


class TlsPolicy(StrEnum):
    """What an HTTPS listener accepts from clients, as the clouds' TLS security policies
    offer: TLS 1.2 and 1.3 with Envoy's ciphers; the same with only ECDHE and AEAD ciphers
    (forward secrecy, no CBC); TLS 1.3 alone."""

    TLS12 = "tls12"
    TLS12_STRICT = "tls12_strict"
    TLS13 = "tls13"


class ClientAuthMode(StrEnum):
    OPTIONAL = "optional"
    """A client may present a certificate; one it presents must verify."""
    REQUIRED = "required"


class ClientCertificates(Model):
    """Client certificates an HTTPS listener asks for (mutual TLS)."""

    mode: ClientAuthMode = ClientAuthMode.REQUIRED
    ca_pem: PemCertificates
    """The CAs a client certificate must chain to."""
    subject_alt_names: tuple[Host, ...] = Field(default=(), max_length=64)
    """DNS names one of which a client certificate must carry; none: any."""


class BackendTls(Model):
    """How L7 checks the backends' TLS (backend protocol `tls`)."""

    ca_pem: PemCertificates | None = None
    """Verify each backend's certificate against these CAs; none: not verified."""
    sni: Host | None = None
    """The server name sent (and, with a CA, the name the certificate must carry)."""
