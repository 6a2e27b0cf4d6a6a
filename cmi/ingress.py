"""Pure: one Kubernetes Ingress (networking.k8s.io/v1) of openslb's class -> its instance,
listeners and certificates, for the users ingress-nginx left behind.

Each Ingress gets an instance of its own (its VIP from the pool), as a cloud's load balancer
gives one per Ingress: one tenant's Ingress never takes another's host or path. Its rules
become the rules of an HTTP listener on port 80 and, if it names TLS Secrets, of an HTTPS
listener on 443, in ingress-nginx's order: exact hosts, then wildcards, then any host; Exact
paths, then the longest prefix; a request none matches goes to `spec.defaultBackend`, else
gets a 404. The ingress-nginx annotations that map onto openslb's features are honoured
(`ANNOTATIONS`); every other one of that prefix is named in a Warning Event, never silently
dropped, and snippets are never run. A canary Ingress (`canary: "true"`) joins the Ingress of
its namespace that serves the same host and path, by weight or by header, as ingress-nginx's
canaries do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cmi import tlssecret
from cmi.build import Built, Defaults, Event, Previous, refused, short_name, status_vip
from cmi.gateway import host_rank
from cmi.tlssecret import TlsPair
from slb.model import FieldError, Listener, LoadBalancer, ModelError, Owner, OwnerKind, Protocol

if TYPE_CHECKING:  # the name only: loading the client would load urllib3 and kubernetes
    from cmi.k8s.client import Body

GROUP = "networking.k8s.io"
CONTROLLER = "openslb.io/ingress-controller"
"""The `spec.controller` of the IngressClasses that are openslb's."""
KEY_PREFIX = "ingress:"
"""An Ingress's key among the controller's dirty keys."""
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS = "kubernetes.io/ingress.class"
"""The annotation that named a class before `spec.ingressClassName`."""
NGINX = "nginx.ingress.kubernetes.io/"
"""The prefix of ingress-nginx's annotations."""
NOT_FOUND_RULE = "no-rule-matched"
HTTP_PORT, HTTPS_PORT = 80, 443
SERVICE_UNAVAILABLE = 503
"""What a path whose Service or port does not exist answers, as ingress-nginx does."""


class AnnotationError(ValueError):
    """An annotation's value openslb cannot read: the Ingress keeps what it was served with."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"annotation {NGINX}{name}: {message}")


def ingress_key(namespaced: str) -> str:
    return f"{KEY_PREFIX}{namespaced}"


def is_ingress_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def instance_name(namespace: str, name: str) -> str:
    """The instance an Ingress gets (never a Service's or a Gateway's)."""
    return short_name(namespace, name, "ingress")


def class_name(ingress: Body) -> str | None:
    """The class an Ingress names (`spec.ingressClassName`, else the old annotation)."""
    named = (ingress.get("spec") or {}).get("ingressClassName")
    return named or (ingress["metadata"].get("annotations") or {}).get(LEGACY_CLASS)


def is_ours(ingress: Body, classes: Mapping[str, Body]) -> bool:
    """Is the Ingress of one of openslb's IngressClasses (none named: the cluster's default
    class, if that is openslb's)?"""
    named = class_name(ingress)
    if named is not None:
        return _controller(classes.get(named)) == CONTROLLER
    defaults = [
        c for c in classes.values()
        if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true"
    ]  # fmt: skip
    return len(defaults) == 1 and _controller(defaults[0]) == CONTROLLER


def _controller(ingress_class: Body | None) -> str | None:
    return (ingress_class.get("spec") or {}).get("controller") if ingress_class else None


def nginx_annotations(ingress: Body) -> dict[str, str]:
    """Its ingress-nginx annotations, without the prefix."""
    raw = ingress["metadata"].get("annotations") or {}
    return {k.removeprefix(NGINX): str(v) for k, v in raw.items() if k.startswith(NGINX)}


def is_canary(ingress: Body) -> bool:
    return nginx_annotations(ingress).get("canary") == "true"


def backend_services(ingress: Body) -> set[str]:
    """The Services (`namespace/name`) an Ingress names."""
    namespace = ingress["metadata"]["namespace"]
    return {f"{namespace}/{b['service']['name']}" for b in _backends(ingress) if b.get("service")}


def tls_secrets(ingress: Body) -> set[str]:
    """The Secrets (`namespace/name`) an Ingress names for TLS."""
    namespace = ingress["metadata"]["namespace"]
    return {
        f"{namespace}/{t['secretName']}"
        for t in (ingress.get("spec") or {}).get("tls") or []
        if t.get("secretName")
    }


def _backends(ingress: Body) -> Iterable[Body]:
    spec = ingress.get("spec") or {}
    if spec.get("defaultBackend"):
        yield spec["defaultBackend"]
    for rule in spec.get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            yield path.get("backend") or {}


# -- annotations ---------------------------------------------------------------------------


def _flag(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise AnnotationError(name, f"{value!r} is not true or false")
    return value == "true"


def _seconds(name: str, value: str) -> int:
    """ingress-nginx's timeouts: whole seconds, the unit optional."""
    number = value.removesuffix("s")
    if not number.isdigit() or not 1 <= int(number) <= 86400:
        raise AnnotationError(name, f"{value!r} is not a number of seconds from 1 to 86400")
    return int(number)


def _count(name: str, value: str, top: int) -> int:
    if not value.isdigit() or not 0 <= int(value) <= top:
        raise AnnotationError(name, f"{value!r} is not a whole number from 0 to {top}")
    return int(value)


def _networks(name: str, value: str) -> list[str]:
    out = []
    for part in (p.strip() for p in value.split(",")):
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise AnnotationError(name, f"{part!r} is not an address or a network") from None
    return out


@dataclass(frozen=True)
class Settings:
    """What an Ingress's annotations ask of its listeners and rules."""

    ssl_redirect: bool | None = None
    ssl_passthrough: bool = False
    """None: as ingress-nginx, on for the hosts the Ingress has TLS for."""
    force_ssl_redirect: bool = False
    rewrite_target: str | None = None
    use_regex: bool = False
    backend_protocol: str | None = None
    allowed_sources: tuple[str, ...] = ()
    idle_timeout_s: int | None = None
    affinity_cookie: str | None = None
    affinity_max_age_s: int | None = None
    requests_per_second: int | None = None
    canary: bool = False
    canary_weight: int | None = None
    canary_weight_total: int = 100
    canary_header: str | None = None
    canary_header_value: str | None = None
    canary_header_pattern: str | None = None
    canary_cookie: str | None = None
    caveats: tuple[str, ...] = ()
    """What is served otherwise than ingress-nginx would, for a Normal Event."""


BACKEND_PROTOCOLS = {"HTTP": None, "HTTPS": "tls", "GRPC": "h2c"}
"""ingress-nginx's backend-protocol -> the model's (None: HTTP/1.1, the default)."""

ANNOTATIONS: dict[str, str] = {
    "ssl-redirect": "HTTP requests for the hosts of spec.tls are redirected to HTTPS (308)",
    "force-ssl-redirect": "every HTTP request is redirected to HTTPS (308)",
    "ssl-passthrough": "port 443 passes TLS through, by server name (SNI), to the backend of "
    "each host's / path (else its first), which terminates it",
    "rewrite-target": "the path is replaced; $1..$9 are the groups of the path's regex",
    "use-regex": "paths (but Exact) are RE2 regexes matched at the path's start, case-blind; "
    "rewrite-target implies it",
    "backend-protocol": "HTTP, HTTPS (TLS to the backends) or GRPC (HTTP/2 in the clear)",
    "whitelist-source-range": "only these client networks may connect",
    "allowlist-source-range": "only these client networks may connect",
    "proxy-read-timeout": "the listener's idle timeout (the longest of read and send)",
    "proxy-send-timeout": "the listener's idle timeout (the longest of read and send)",
    "affinity": "cookie: a client keeps its backend by a cookie",
    "session-cookie-name": "the affinity cookie's name (INGRESSCOOKIE)",
    "session-cookie-max-age": "the affinity cookie's lifetime in seconds",
    "limit-rps": "requests a second the Ingress takes, per Envoy (not per client address)",
    "canary": "this Ingress is a canary of the one serving its host and path",
    "canary-weight": "the canary's share of requests",
    "canary-weight-total": "what canary-weight is a share of (100)",
    "canary-by-header": "requests with this header set to always go to the canary",
    "canary-by-header-value": "the value of canary-by-header that picks the canary",
    "canary-by-header-pattern": "an RE2 regex the value of canary-by-header must match",
    "canary-by-cookie": "requests with this cookie set to always go to the canary",
}
"""The ingress-nginx annotations openslb honours, and how (the README's table)."""


def settings(ingress: Body) -> tuple[Settings, list[str]]:
    """Its annotations read, and the ingress-nginx annotations it has that openslb does not
    honour. Raises AnnotationError for a value it cannot read."""
    raw = nginx_annotations(ingress)
    fields: dict[str, Any] = {}
    caveats = []
    readers: dict[str, Callable[[str, str], None]] = {
        "ssl-redirect": lambda n, v: fields.update(ssl_redirect=_flag(n, v)),
        "force-ssl-redirect": lambda n, v: fields.update(force_ssl_redirect=_flag(n, v)),
        "ssl-passthrough": lambda n, v: fields.update(ssl_passthrough=_flag(n, v)),
        "use-regex": lambda n, v: fields.update(use_regex=_flag(n, v)),
        "canary": lambda n, v: fields.update(canary=_flag(n, v)),
        "canary-weight": lambda n, v: fields.update(canary_weight=_count(n, v, 1_000_000)),
        "canary-weight-total": lambda n, v: fields.update(
            canary_weight_total=max(1, _count(n, v, 1_000_000))
        ),
        "canary-by-header": lambda n, v: fields.update(canary_header=_header_name(n, v)),
        "canary-by-header-value": lambda n, v: fields.update(canary_header_value=v),
        "canary-by-header-pattern": lambda n, v: fields.update(canary_header_pattern=v),
        "canary-by-cookie": lambda n, v: fields.update(canary_cookie=_cookie_name(n, v)),
        "limit-rps": lambda n, v: fields.update(requests_per_second=max(1, _count(n, v, 10**7))),
        "session-cookie-max-age": lambda n, v: fields.update(affinity_max_age_s=_seconds(n, v)),
    }
    for name, value in raw.items():
        if name in readers:
            readers[name](name, value.strip())
    if "rewrite-target" in raw:
        target = raw["rewrite-target"].strip()
        if not target.startswith("/"):
            raise AnnotationError("rewrite-target", f"{target!r} must start with /")
        fields["rewrite_target"] = target
    if "backend-protocol" in raw:
        asked = raw["backend-protocol"].strip().upper()
        if asked not in BACKEND_PROTOCOLS:
            raise AnnotationError(
                "backend-protocol", f"{asked!r}: openslb speaks {', '.join(BACKEND_PROTOCOLS)}"
            )
        fields["backend_protocol"] = BACKEND_PROTOCOLS[asked]
    ranges = raw.get("allowlist-source-range") or raw.get("whitelist-source-range")
    if ranges:
        name = "allowlist-source-range" if "allowlist-source-range" in raw else (
            "whitelist-source-range")  # fmt: skip
        fields["allowed_sources"] = tuple(_networks(name, ranges))
    timeouts = [_seconds(n, raw[n]) for n in ("proxy-read-timeout", "proxy-send-timeout")
                if n in raw]  # fmt: skip
    if timeouts:
        fields["idle_timeout_s"] = max(timeouts)
    if "affinity" in raw:
        if raw["affinity"] != "cookie":
            raise AnnotationError("affinity", f"{raw['affinity']!r}: only cookie")
        cookie = raw.get("session-cookie-name", "INGRESSCOOKIE")
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", cookie):
            raise AnnotationError("session-cookie-name", f"{cookie!r} is not a cookie name")
        fields["affinity_cookie"] = cookie
    if "limit-rps" in raw:
        caveats.append("limit-rps: the rate is the Ingress's per Envoy, not per client address")
    unsupported = sorted(name for name in raw if name not in ANNOTATIONS)
    return Settings(**fields, caveats=tuple(caveats)), unsupported


def _cookie_name(name: str, value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", value):
        raise AnnotationError(name, f"{value!r} is not a cookie name")
    return value


def _header_name(name: str, value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}", value):
        raise AnnotationError(name, f"{value!r} is not a header name")
    return value.lower()


# -- the build -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IngressBuilt:
    """What an Ingress owns in the store (`built`), and the canaries that joined it."""

    built: Built
    canaries: tuple[str, ...] = ()
    """The canary Ingresses (`namespace/name`) whose backends its rules take."""


@dataclass
class _Context:
    """What the build of one Ingress reads and gathers."""

    owner: Owner
    asked: Settings
    services: Mapping[str, Body]
    previous: Previous
    now: float
    events: list[Event] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    """The canaries (`namespace/name`) that joined its rules."""

    @property
    def namespace(self) -> str:
        return self.owner.name.split("/", 1)[0]


@dataclass(frozen=True)
class _Path:
    """One path of the Ingress (or of a canary): where it matches, where it forwards."""

    host: str | None
    kind: str
    value: str
    backend: Body


def build_ingress(
    ingress: Body,
    *,
    classes: Mapping[str, Body],
    canaries: Sequence[Body] = (),
    services: Mapping[str, Body],
    secrets: Mapping[str, Body],
    defaults: Defaults,
    previous: Previous,
    now: float = 0.0,
) -> IngressBuilt:
    """An Ingress -> its instance, listeners and certificates. `canaries`: the canary
    Ingresses of its namespace (of openslb's classes); `services` and `secrets`: those
    it and they name, by key. An annotation it cannot read refuses it: it keeps what it was
    served with."""
    meta = ingress["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = ingress_key(f"{namespace}/{name}")
    if not is_ours(ingress, classes):
        return IngressBuilt(Built(key, exposed=False, foreign=True))
    if is_canary(ingress) or meta.get("deletionTimestamp"):
        return IngressBuilt(Built(key, exposed=False))
    try:
        return _build(ingress, canaries, services, secrets, defaults, previous, now)
    except AnnotationError as exc:
        return IngressBuilt(refused(key, previous, str(exc)))
    except ValidationError as exc:
        return IngressBuilt(refused(key, previous, str(ModelError.from_validation("Ingress", exc))))
    except ModelError as exc:
        return IngressBuilt(refused(key, previous, str(exc)))


def _build(  # noqa: PLR0917 - build_ingress's inputs, passed on
    ingress: Body,
    canaries: Sequence[Body],
    services: Mapping[str, Body],
    secrets: Mapping[str, Body],
    defaults: Defaults,
    previous: Previous,
    now: float,
) -> IngressBuilt:
    meta = ingress["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    asked, unsupported = settings(ingress)
    owner = Owner(kind=OwnerKind.INGRESS, name=f"{namespace}/{name}")
    instance = instance_name(namespace, name)
    ctx = _Context(owner, asked, services, previous, now)
    if unsupported:
        named = ", ".join(NGINX + n for n in unsupported)
        ctx.events.append(Event("Warning", "UnsupportedAnnotation",
                                f"openslb does not honour {named}"[:1000]))  # fmt: skip
    ctx.events += [Event("Normal", "AnnotationApproximated", c) for c in asked.caveats]
    pairs, tls_hosts = _certificates(ingress, ctx, secrets)
    rules = _rules(ingress, ctx, canaries)
    balancer = LoadBalancer(
        name=instance,
        vip=previous.load_balancer.vip if previous.load_balancer else None,
        pool=defaults.pool,
        node_group=defaults.node_group,
        owner=owner,
        namespace=namespace,
    )
    redirect_all = asked.force_ssl_redirect
    redirect_tls = asked.ssl_redirect is not False and bool(pairs)
    http_rules = [
        _to_https(rule) if redirect_all or (redirect_tls and _covered(rule, tls_hosts)) else rule
        for rule in rules
    ]
    listeners = [_listener(ctx, instance, HTTP_PORT, http_rules)]
    if asked.ssl_passthrough:  # as ingress-nginx: 443 is the backends' TLS, not ours
        pairs = []
        listeners.append(_listener(ctx, instance, HTTPS_PORT, _passthrough_rules(ingress, ctx)))
    elif pairs:
        names = tuple(p.certificate.name for p in pairs)
        listeners.append(_listener(ctx, instance, HTTPS_PORT, rules, names))
    built = Built(
        ingress_key(f"{namespace}/{name}"),
        exposed=True,
        instance=instance,
        dedicated=balancer,
        listeners=tuple(listeners),
        certificates=tuple(pairs),
        events=tuple(ctx.events),
        caveats=asked.caveats,
        remembered_vip=None if balancer.vip else status_vip(ingress),
    )
    return IngressBuilt(built, tuple(ctx.joined))


def _certificates(
    ingress: Body, ctx: _Context, secrets: Mapping[str, Body]
) -> tuple[list[TlsPair], list[str]]:
    """Its TLS Secrets' certificates (of its own namespace) and the hosts they are for
    (none listed: every host)."""
    meta = ingress["metadata"]
    pairs: list[TlsPair] = []
    hosts: list[str] = []
    for index, tls in enumerate((ingress.get("spec") or {}).get("tls") or []):
        if not tls.get("secretName"):
            continue
        key = f"{meta['namespace']}/{tls['secretName']}"
        name = short_name(meta["namespace"], meta["name"], "tls", tls["secretName"])
        pair, problem = tlssecret.pair_from_secret(
            ctx.owner, key, name, secrets.get(key), ctx.previous.certificates,
            named_by=f"spec.tls[{index}].secretName",
        )  # fmt: skip
        if problem is not None:
            ctx.events.append(Event("Warning", problem[0], problem[1]))
        if pair is not None and pair.certificate.name not in {p.certificate.name for p in pairs}:
            pairs.append(pair)
            hosts += tls.get("hosts") or ["*"]
    return pairs, hosts


def _covered(rule: dict[str, Any], tls_hosts: Sequence[str]) -> bool:
    """Is a rule's host one the Ingress has TLS for (its 404 and default backend: any)?"""
    if "*" in tls_hosts:
        return True
    hosts = rule.get("hosts") or []
    return bool(hosts) and all(h in tls_hosts for h in hosts)


def _to_https(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule on port 80: its requests redirected to HTTPS, as ingress-nginx does."""
    kept = {k: v for k, v in rule.items() if k in _MATCH_FIELDS}
    return {**kept, "redirect": {"scheme": "https", "code": 308}}


_MATCH_FIELDS = (
    "name", "hosts", "path_exact", "path_prefix", "path_segments", "path_regex", "headers",
)  # fmt: skip


def _rules(ingress: Body, ctx: _Context, canaries: Sequence[Body]) -> list[dict[str, Any]]:
    """The rules of both listeners in ingress-nginx's order, then the default backend's (or
    the 404)."""
    meta, spec = ingress["metadata"], ingress.get("spec") or {}
    namespace = meta["namespace"]
    ordered: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    seen: set[tuple[str | None, str, str]] = set()
    for index, path in enumerate(_paths(ingress)):
        if (path.host, path.kind, path.value) in seen:
            continue  # ingress-nginx serves the first of a host's equal paths
        seen.add((path.host, path.kind, path.value))
        fields, rank = _match(path, ctx.asked, index)
        fields["name"] = short_name(namespace, meta["name"], str(index))
        fields.update(_forward(ctx, path.backend, ctx.asked))
        for canary_rule in _canary_rules(ctx, path, fields, canaries):
            ordered.append(((*rank, 0), canary_rule))
        ordered.append(((*rank, 1), fields))
    rules = [fields for _, fields in sorted(ordered, key=lambda item: item[0])]
    default = spec.get("defaultBackend")
    last: dict[str, Any] = {"name": NOT_FOUND_RULE}
    if default:
        last.update(_forward(ctx, default, ctx.asked))
    else:
        last["fixed_response"] = {"status": 404, "body": ""}
    return [*rules, last]


def _paths(ingress: Body) -> list[_Path]:
    return [
        _Path(rule.get("host") or None, path.get("pathType", "ImplementationSpecific"),
              path.get("path") or "/", path.get("backend") or {})
        for rule in (ingress.get("spec") or {}).get("rules") or []
        for path in (rule.get("http") or {}).get("paths") or []
    ]  # fmt: skip


def _match(path: _Path, asked: Settings, index: int) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """A path -> its rule's match fields and its precedence: exact hosts, wildcards, any
    host; Exact paths, then the longest prefix (or regex), then the order written."""
    hosts = [path.host] if path.host else []
    fields: dict[str, Any] = {"hosts": hosts}
    regex = asked.use_regex or asked.rewrite_target is not None  # as ingress-nginx's
    if path.kind == "Exact":
        fields["path_exact"], kind = path.value, 0
    elif regex:  # `location ~*`: from the path's start, case-blind
        fields["path_regex"], kind = f"(?i)(?:{path.value}).*", 2
    elif path.kind == "Prefix":
        fields["path_segments"], kind = path.value, 1
    elif path.kind == "ImplementationSpecific":  # nginx's `location /a`: /ab too
        fields["path_prefix"], kind = path.value, 1
    else:
        why = f"{path.kind!r} is not Exact, Prefix or ImplementationSpecific"
        raise ModelError("Ingress", [FieldError(field="pathType", message=why)])
    return fields, (host_rank(hosts), kind, -len(path.value), index)


def _forward(ctx: _Context, backend: Body, asked: Settings) -> dict[str, Any]:
    """A backend -> the rule's action: its Service's port, with the annotations' changes;
    a Service or port that does not exist answers 503, and an Event says which."""
    ref = backend.get("service")
    if not ref:
        why = "resource backends are not supported: the path answers 503"
        ctx.events.append(Event("Warning", "UnsupportedBackend", why))
        return {"fixed_response": {"status": SERVICE_UNAVAILABLE, "body": ""}}
    key = f"{ctx.namespace}/{ref['name']}"
    port = _service_port(ctx.services.get(key), ref.get("port") or {})
    if port is None:
        wanted = (ref.get("port") or {}).get("number") or (ref.get("port") or {}).get("name")
        ctx.events.append(
            Event(
                "Warning",
                "BackendNotFound",
                f"Service {key} port {wanted} does not exist: its paths answer 503",
            )
        )
        return {"fixed_response": {"status": SERVICE_UNAVAILABLE, "body": ""}}
    fields: dict[str, Any] = {"forward_to": [{"service": key, "target_port": port, "weight": 1}]}
    if asked.rewrite_target is not None:
        fields["rewrite"] = {"path": asked.rewrite_target}
    if asked.backend_protocol is not None:
        fields["backend_protocol"] = asked.backend_protocol
    return fields


def _service_port(service: Body | None, port: Body) -> int | None:
    """The Service port a backend names (by number or by name), if it exists."""
    for candidate in ((service or {}).get("spec") or {}).get("ports") or []:
        if port.get("number") == candidate.get("port") or (
            port.get("name") and port.get("name") == candidate.get("name")
        ):
            return int(candidate["port"])
    return None


def _canary_rules(
    ctx: _Context, path: _Path, main: dict[str, Any], canaries: Sequence[Body]
) -> list[dict[str, Any]]:
    """The canaries of this path (same host and path): a header rule before it, and their
    weight added to its forward_to."""
    out: list[dict[str, Any]] = []
    if "forward_to" not in main:
        return out
    for canary in canaries:
        try:
            asked, _ = settings(canary)
        except AnnotationError as exc:
            ctx.events.append(Event("Warning", "CanaryRefused", f"{_named(canary)}: {exc}"))
            continue
        for other in _paths(canary):
            if (other.host, other.kind, other.value) != (path.host, path.kind, path.value):
                continue
            forward = _forward(ctx, other.backend, asked)
            if "forward_to" not in forward:
                continue
            if _named(canary) not in ctx.joined:
                ctx.joined.append(_named(canary))
            for why, header, to_canary in _canary_matches(asked):
                if not to_canary and not asked.canary_weight:
                    continue  # `never` keeps requests off a weighted canary only
                out.append({
                    **main, **(forward if to_canary else {}),
                    "name": short_name(main["name"], why, *_named(canary).split("/")),
                    "headers": [*main.get("headers", ()), header],
                })  # fmt: skip
            if asked.canary_weight:
                share = min(asked.canary_weight, asked.canary_weight_total)
                rest = asked.canary_weight_total - share
                main["forward_to"] = [
                    *({**t, "weight": t["weight"] * rest} for t in main["forward_to"]),
                    *({**t, "weight": share} for t in forward["forward_to"]),
                ]
            break
    return out


def _canary_matches(asked: Settings) -> list[tuple[str, dict[str, str], bool]]:
    """The header matches that decide for or against a canary, in ingress-nginx's order:
    by header (its value, its pattern, else `always`; `never` keeps a request off it), then
    by cookie (`always`, `never`). Each: a name, the match, whether it picks the canary."""
    out = []
    if asked.canary_header:
        header = asked.canary_header
        if asked.canary_header_value:
            out.append(("canary", _exact(header, asked.canary_header_value), True))
        elif asked.canary_header_pattern:
            pattern = {"name": header, "type": "regex", "value": asked.canary_header_pattern}
            out.append(("canary", pattern, True))
        else:
            out.append(("canary", _exact(header, "always"), True))
            out.append(("not-canary", _exact(header, "never"), False))
    if asked.canary_cookie:
        for value, to_canary in (("always", True), ("never", False)):
            cookie = rf"(.*;\s*)?{re.escape(asked.canary_cookie)}={value}(;.*)?"
            match = {"name": "cookie", "type": "regex", "value": cookie}
            out.append((f"cookie-{value}", match, to_canary))
    return out


def _exact(header: str, value: str) -> dict[str, str]:
    return {"name": header, "type": "exact", "value": value}


def _named(ingress: Body) -> str:
    return f"{ingress['metadata']['namespace']}/{ingress['metadata']['name']}"


def _passthrough_rules(ingress: Body, ctx: _Context) -> list[dict[str, Any]]:
    """ssl-passthrough: each host's connections to the backend of its `/` path (else its
    first); the first rule naming a host has it."""
    out, seen = [], set()
    for index, rule in enumerate((ingress.get("spec") or {}).get("rules") or []):
        paths = (rule.get("http") or {}).get("paths") or []
        host = rule.get("host")
        if not host or not paths or host in seen:
            continue
        seen.add(host)
        chosen = next((p for p in paths if p.get("path", "/") == "/"), paths[0])
        forward = _forward(ctx, chosen.get("backend") or {}, Settings())
        if "forward_to" in forward:
            name = short_name(*ctx.owner.name.split("/", 1), "passthrough", str(index))
            out.append({"name": name, "hosts": [host], "forward_to": forward["forward_to"]})
    return out


def _listener(
    ctx: _Context,
    instance: str,
    port: int,
    rules: list[dict[str, Any]],
    certificates: tuple[str, ...] = (),
) -> Listener:
    """The Ingress's listener on port 80 (HTTP) or 443 (HTTPS, with its certificates; TLS
    passthrough with ssl-passthrough: what reads requests does not apply)."""
    name = short_name(*ctx.owner.name.split("/", 1), "port", str(port))
    before = ctx.previous.listeners.get(name)
    asked = ctx.asked
    passthrough = port == HTTPS_PORT and asked.ssl_passthrough
    fields: dict[str, Any] = {}
    if asked.idle_timeout_s is not None:
        fields["idle_timeout_s"] = asked.idle_timeout_s
    if asked.affinity_cookie is not None and not passthrough:
        fields["persistence"] = {"mode": "cookie", "cookie_name": asked.affinity_cookie,
                                 **({"timeout_s": asked.affinity_max_age_s}
                                    if asked.affinity_max_age_s else {})}  # fmt: skip
    if asked.requests_per_second is not None and not passthrough:
        fields["limits"] = {"requests_per_second": asked.requests_per_second}
    protocol = Protocol.HTTPS if certificates else Protocol.HTTP
    return Listener.model_validate({
        "name": name,
        "load_balancer": instance,
        "protocol": Protocol.TLS if passthrough else protocol,
        "port": port,
        "certificates": () if passthrough else certificates,  # passthrough: never opened
        "target_port": port,
        "health_check": None,
        "owner": ctx.owner,
        "allowed_sources": asked.allowed_sources,
        "routes": rules,
        "created_at": before.created_at if before is not None else ctx.now,
        **fields,
    })  # fmt: skip


def ingress_status(vip: str | None) -> Body:
    """The Ingress's `status.loadBalancer`: its VIP, once it has one."""
    return {"ingress": [{"ip": vip}] if vip else []}
