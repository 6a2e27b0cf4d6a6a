"""`openslb.io/*` annotations on a Service: parsed and validated as one unit.

An operator tunes a Service's listeners with annotations. They are validated together
through the model, so a bad value is reported with the annotation's own name, and a
Service whose annotations do not all validate keeps the settings it was served with
(nothing is half-applied).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from cmi import tlssecret
from slb.model import (
    IPAddress,
    Listener,
    ModelError,
    Protocol,
    is_dns_label,
)
from slb.model.fields import VIPAddress

PREFIX = "openslb.io/"
EXPOSE_LABEL = "openslb.io/expose"

BackendMode = Literal["pod", "node"]
_VIP: TypeAdapter[IPAddress] = TypeAdapter(VIPAddress)

# annotation -> the Listener field it sets (dotted for nested fields)
LISTENER_ANNOTATIONS: Mapping[str, str] = {
    "openslb.io/scheduler": "scheduler",
    "openslb.io/forwarding": "forwarding",
    "openslb.io/health-check-type": "health_check.type",
    "openslb.io/health-check-path": "health_check.path",
    "openslb.io/health-check-codes": "health_check.expected_codes",
    "openslb.io/health-check-grpc-service": "health_check.grpc_service",
    "openslb.io/health-check-interval": "health_check.interval_s",
    "openslb.io/health-check-timeout": "health_check.timeout_s",
    "openslb.io/healthy-threshold": "health_check.healthy_threshold",
    "openslb.io/unhealthy-threshold": "health_check.unhealthy_threshold",
    "openslb.io/persistence": "persistence.mode",
    "openslb.io/persistence-timeout": "persistence.timeout_s",
    "openslb.io/persistence-cookie": "persistence.cookie_name",
    "openslb.io/idle-timeout": "idle_timeout_s",
    "openslb.io/request-timeout": "request_timeout_s",
    "openslb.io/access-log": "access_log",
    "openslb.io/backend-protocol": "backend_protocol",
    "openslb.io/certificates": "certificates",
    "openslb.io/tls-policy": "tls_policy",
    "openslb.io/rules": "routes",
    "openslb.io/max-connections": "limits.max_connections",
    "openslb.io/connections-per-second": "limits.connections_per_second",
    "openslb.io/requests-per-second": "limits.requests_per_second",
    "openslb.io/request-bandwidth": "limits.request_bandwidth_kib_s",
}
SERVICE_ANNOTATIONS = (
    "openslb.io/https-redirect",
    "openslb.io/backend-mode",
    "openslb.io/vip",
    "openslb.io/pool",
    "openslb.io/node-group",
    tlssecret.ANNOTATION,
)
_INTEGER_FIELDS = {"interval_s", "timeout_s", "healthy_threshold", "unhealthy_threshold",
                   "idle_timeout_s", "request_timeout_s", "max_connections",
                   "connections_per_second", "requests_per_second",
                   "request_bandwidth_kib_s"}  # fmt: skip
_FIELD_TO_ANNOTATION = {v: k for k, v in LISTENER_ANNOTATIONS.items()}


@dataclass(frozen=True)
class Problem:
    annotation: str
    reason: str

    def __str__(self) -> str:
        return f"{self.annotation}: {self.reason}"


@dataclass(frozen=True)
class ServiceSettings:
    """What a Service's annotations ask for, once all of them validated."""

    listener_fields: dict[str, Any] = field(default_factory=dict)
    """Listener fields (nested as the model nests them) applied to every generated listener."""
    backend_mode: BackendMode | None = None
    vip: IPAddress | None = None
    pool: str | None = None
    node_group: str | None = None
    https_redirect: bool = False
    """HTTP ports answer every request with a redirect to the Service's HTTPS port."""
    tls_secrets: tuple[str, ...] = ()
    """`kubernetes.io/tls` Secrets of the Service's namespace its HTTPS ports terminate
    TLS with (`cmi.tlssecret`), beside the certificates `openslb.io/certificates` names."""


TO_HTTPS_RULE = "to-https"
"""The name of the rule `openslb.io/https-redirect` puts first on HTTP listeners."""


@dataclass(frozen=True)
class Parsed:
    settings: ServiceSettings | None
    """None when any annotation is bad: the Service keeps what it was served with."""
    problems: tuple[Problem, ...] = ()
    unknown: tuple[str, ...] = ()


def parse(annotations: Mapping[str, str]) -> Parsed:
    ours = {k: v for k, v in annotations.items() if k.startswith(PREFIX)}
    unknown = tuple(
        sorted(k for k in ours if k not in LISTENER_ANNOTATIONS and k not in SERVICE_ANNOTATIONS)
    )
    problems: list[Problem] = []
    fields: dict[str, Any] = {}
    for annotation, path in LISTENER_ANNOTATIONS.items():
        if annotation not in ours:
            continue
        raw = ours[annotation].strip()
        try:
            value = _value(path, raw)
        except ValueError as exc:
            problems.append(Problem(annotation, str(exc)))
            continue
        _set(fields, path, value)
    problems += _check_listener_fields(fields)

    https_redirect = ours.get("openslb.io/https-redirect", "false").strip()
    if https_redirect not in ("true", "false"):
        problems.append(Problem("openslb.io/https-redirect",
                                f"must be true or false (got {https_redirect!r})"))  # fmt: skip
    mode = ours.get("openslb.io/backend-mode")
    if mode is not None and mode not in ("pod", "node"):
        problems.append(Problem("openslb.io/backend-mode", f"must be pod or node (got {mode!r})"))
    vip: IPAddress | None = None
    if (raw_vip := ours.get("openslb.io/vip")) is not None:
        try:
            vip = parse_vip(raw_vip)
        except ValueError as exc:
            problems.append(Problem("openslb.io/vip", str(exc)))
    for annotation in ("openslb.io/pool", "openslb.io/node-group"):
        if (value := ours.get(annotation)) is not None and not is_dns_label(value):
            problems.append(Problem(annotation, f"{value!r} is not a DNS label"))
    tls_secrets: tuple[str, ...] = ()
    if (raw_secrets := ours.get(tlssecret.ANNOTATION)) is not None:
        try:
            tls_secrets = tlssecret.secret_names(raw_secrets)
        except ValueError as exc:
            problems.append(Problem(tlssecret.ANNOTATION, str(exc)))
    if problems:
        return Parsed(None, tuple(problems), unknown)
    return Parsed(
        ServiceSettings(
            listener_fields=fields,
            backend_mode=mode,  # type: ignore[arg-type]  # checked above
            vip=vip,
            pool=ours.get("openslb.io/pool"),
            node_group=ours.get("openslb.io/node-group"),
            https_redirect=https_redirect == "true",
            tls_secrets=tls_secrets,
        ),
        (),
        unknown,
    )


def parse_vip(raw: str) -> IPAddress:
    """An address a VIP may have (`openslb.io/vip`, `spec.loadBalancerIP`); else ValueError
    saying why."""
    try:
        return _VIP.validate_python(raw.strip())
    except ValidationError as exc:
        why = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{raw!r}: {why}") from None


def _value(path: str, raw: str) -> Any:
    leaf = path.rsplit(".", 1)[-1]
    if leaf in _INTEGER_FIELDS:
        number = raw.removesuffix("s")
        if not number.isdigit():
            raise ValueError(f"must be a whole number of seconds (got {raw!r})")
        return int(number)
    if leaf == "certificates":
        return [name.strip() for name in raw.split(",") if name.strip()]
    if leaf == "routes":
        try:
            rules = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError("must be a JSON list of rules (objects), as the REST API takes")
        return rules
    if leaf == "access_log":
        if raw not in ("true", "false"):
            raise ValueError(f"must be true or false (got {raw!r})")
        return raw == "true"
    if path == "health_check.type" and raw == "none":
        return None
    return raw


def _set(fields: dict[str, Any], path: str, value: Any) -> None:
    if path == "health_check.type" and value is None:
        fields["health_check"] = None
        return
    *parents, leaf = path.split(".")
    target = fields
    for part in parents:
        if target.get(part) is None and part in target:
            return  # health checks switched off: their details do not apply
        target = target.setdefault(part, {})
    target[leaf] = value


def _check_listener_fields(fields: dict[str, Any]) -> list[Problem]:
    """Validate the fields through the model, on a probe listener, naming annotations.

    Only single-field rules are checked here; rules that tie a field to the protocol
    (certificates only on HTTPS, ...) are checked per port when listeners are built.
    """
    probe = {
        "name": "probe", "load_balancer": "probe", "protocol": "HTTPS", "port": 1,
        "target_port": 1, "owner": {"kind": "Service", "name": "probe/probe"},
        "certificates": ["probe"], **fields,
    }  # fmt: skip
    try:
        Listener.model_validate(probe)
    except ValidationError as exc:
        problems = []
        for error in ModelError.from_validation("Listener", exc).errors:
            if error.field in ("certificates", ""):
                continue  # protocol-dependent; checked when ports become listeners
            annotation = _annotation_for(error.field)
            problems.append(Problem(annotation, error.message))
        return problems
    return []


def _annotation_for(field_path: str) -> str:
    while field_path:
        if field_path in _FIELD_TO_ANNOTATION:
            return _FIELD_TO_ANNOTATION[field_path]
        field_path = field_path.rpartition(".")[0]
    return PREFIX + "*"


def annotation_for_field(field_path: str) -> str:
    """The annotation that sets a listener field, for error messages."""
    return _annotation_for(field_path)


def protocol_for(
    app_protocol: str | None, port_name: str, transport: str
) -> tuple[Protocol, str | None]:
    """The listener protocol for a Service port, and the backend protocol it implies.

    From `appProtocol` first (Kubernetes' standard names and IANA names), else from the
    port name as Istio's naming convention has it (`grpc`, `http-web`, ...), else the port's
    own protocol: TCP and UDP stay at layer 4. A port whose backends speak TLS themselves
    (`https`, `kubernetes.io/wss`) is passed through at layer 4 unless the Service names
    certificates to terminate with (decided by the caller).
    """
    if transport == "UDP":
        return Protocol.UDP, None
    hint = (app_protocol or "").lower()
    if not hint:
        name = port_name.lower()
        hint = next(
            (
                p
                for p in ("grpc", "https", "http2", "http")
                if name == p or name.startswith(p + "-")
            ),
            "",
        )
    match hint:
        case "grpc" | "kubernetes.io/grpc":
            return Protocol.GRPC, "h2c"
        case "kubernetes.io/h2c" | "http2" | "h2c":
            return Protocol.HTTP, "h2c"
        case "http" | "kubernetes.io/ws":
            return Protocol.HTTP, "http1"
        case "https" | "kubernetes.io/wss":
            return Protocol.HTTPS, "tls"
    return Protocol.TCP, None
