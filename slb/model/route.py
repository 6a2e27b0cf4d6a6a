"""L7 forwarding rules: which requests a listener sends where, and what it does to them.

A rule (a `Route`) matches on hosts, a path (exact, prefix or RE2 regex) or a gRPC service
and method, headers, query parameters and the method. Its action is one of: forward to one
or more Services by weight (the listener's own by default), redirect, or answer with a
fixed response. Forwarded requests may have their path prefix or host rewritten, headers
set, added or removed both ways, and their own timeout and retry policy.

Regexes are RE2, the engine Envoy runs, checked here with the same program-size limit, so
a pattern Envoy would refuse is refused with its field named instead of rejecting the
listener's whole configuration at the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Self

import re2
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from slb.model.base import Model
from slb.model.errors import CrossFieldError
from slb.model.fields import Host, HttpPath, Name, Port, PortRef, ServiceKey
from slb.model.traffic import BackendProtocol
from slb.selector import LabelSelector

_GRPC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
REGEX_MAX_PROGRAM_SIZE = 100
"""Envoy's default `re2.max_program_size.error_level`: larger patterns are refused."""


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


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is raised with the field named; not logged twice


def _regex(value: str) -> str:
    if len(value) > 1024:
        raise ValueError("at most 1024 characters")
    try:
        compiled = re2.compile(value, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{value!r} is not an RE2 regular expression: {detail}") from None
    if compiled.programsize > REGEX_MAX_PROGRAM_SIZE:
        raise ValueError(
            f"{value!r} is too complex for Envoy (RE2 program size {compiled.programsize}, "
            f"at most {REGEX_MAX_PROGRAM_SIZE})"
        )
    return value


def segments_pattern(segments: str) -> str:
    """The RE2 pattern of a whole-segment prefix and the slashes after it: what a
    replacement ending in `/` replaces, so `/a` -> `/` makes `/a/b` `/b`, not `//b`."""
    return "^" + re.escape(segments.rstrip("/")) + "/*"


Regex = Annotated[str, AfterValidator(_regex)]
GROUP_REFERENCE = re.compile(r"\$([1-9])")
"""`$1`..`$9` in a rewritten path: a group of the rule's path_regex."""
"""An RE2 regular expression that Envoy accepts; it must match the whole value."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}\Z")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _header_name(value: str) -> str:
    """An HTTP field name, kept lowercase (names are case-blind; HTTP/2 sends them so). No
    pseudo-header, and not one whose meaning Envoy owns: the host is changed by a rewrite."""
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not an HTTP header name (an RFC 9110 token)")
    value = value.lower()
    if value in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} cannot be matched or changed by a rule")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return value


HeaderValue = Annotated[str, Field(max_length=4096), AfterValidator(_header_value)]


class MatchType(StrEnum):
    EXACT = "exact"
    REGEX = "regex"
    PRESENT = "present"


class ValueMatch(Model):
    """A header or query parameter: present, equal to a value, or matching a regex."""

    name: str = Field(min_length=1, max_length=256)
    type: MatchType = MatchType.EXACT
    value: str = Field(default="", max_length=4096)

    @model_validator(mode="after")
    def _value_fits_type(self) -> Self:
        if self.type is MatchType.PRESENT and self.value:
            raise CrossFieldError([("value", "a 'present' match takes no value")])
        if self.type is MatchType.REGEX:
            try:
                _regex(self.value)
            except ValueError as exc:
                raise CrossFieldError([("value", str(exc))]) from None
        if any(c in self.value for c in "\r\n\0"):
            raise CrossFieldError([("value", "must not contain CR, LF or NUL")])
        return self


def parse_value_matches(texts: Iterable[str]) -> list[dict[str, str]]:
    """Header or query matches as people type them, for the CLI and the console: `NAME`
    (present), `NAME=VALUE` (exact) or `NAME~REGEX` (regex); the model validates them."""
    out = []
    for text in texts:
        cut = min((i for i in (text.find("="), text.find("~")) if i > 0), default=-1)
        if cut < 0:
            out.append({"name": text, "type": MatchType.PRESENT.value})
        else:
            kind = MatchType.EXACT if text[cut] == "=" else MatchType.REGEX
            out.append({"name": text[:cut], "type": kind.value, "value": text[cut + 1 :]})
    return out


class HeaderMatch(ValueMatch):
    name: HeaderName


class QueryMatch(ValueMatch):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._~!$'()*+,;:@/?-]+$")


class Method(StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    DELETE = "DELETE"
    CONNECT = "CONNECT"
    OPTIONS = "OPTIONS"
    TRACE = "TRACE"
    PATCH = "PATCH"


class ForwardTarget(Model):
    """Services a rule forwards to, and their share of its requests: those a selector
    picks, one Service by name, or (neither given) the listener's."""

    selector: LabelSelector | None = None
    service: ServiceKey | None = None
    """One Service, `namespace/name` (a Gateway route's backendRef names its Services so)."""
    target_port: PortRef | None = None
    """None: the listener's target port."""
    weight: int = Field(default=1, ge=0, le=10000)

    @field_validator("selector")
    @classmethod
    def _selector_not_empty(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.empty:
            raise ValueError("must select at least one label; leave it out to use the listener's")
        return selector

    @model_validator(mode="after")
    def _one_way_to_pick(self) -> Self:
        if self.selector is not None and self.service is not None:
            raise CrossFieldError([("service", "give a selector or a Service, not both")])
        return self

    def __str__(self) -> str:
        """What it picks as `target_fields` reads it: `listener`, `service NS/NAME` or a
        selector."""
        if self.service is not None:
            return f"{SERVICE_WORD} {self.service}"
        return str(self.selector) if self.selector is not None else LISTENER_WORD


class Mirror(Model):
    """A copy of a share of a rule's forwarded requests, sent to other backends whose
    answers are dropped (the Gateway API's RequestMirror): to try a new version on real
    traffic without its answers reaching a client."""

    to: ForwardTarget
    """Its weight is not read."""
    percent: float = Field(default=100, gt=0, le=100, description="of the rule's requests")


LISTENER_WORD = "listener"
SERVICE_WORD = "service"
_NAMED_SERVICE = re.compile(rf"^{SERVICE_WORD}\s+([^\s/]+/[^\s/]+)\Z")


def named_service(text: str) -> str | None:
    """The key `service NAMESPACE/NAME` gives (not yet checked), or None for any other
    text: no selector reads so (`service in (a, b)` is a selector on label `service`)."""
    named = _NAMED_SERVICE.match(text.strip())
    return named[1] if named else None


def target_fields(text: str) -> dict[str, Any]:
    """What a forward target picks, as people type it, for the CLI and the console:
    `listener` (the listener's Services), `service NAMESPACE/NAME` (one Service) or a label
    selector. The model validates the result; ValueError if a selector cannot be read."""
    text = text.strip()
    if text in ("", LISTENER_WORD):
        return {}
    if (named := named_service(text)) is not None:
        return {"service": named}
    return {"selector": LabelSelector.parse(text).model_dump(mode="json")}


class Scheme(StrEnum):
    HTTP = "http"
    HTTPS = "https"


class RedirectCode(IntEnum):
    MOVED_PERMANENTLY = 301
    FOUND = 302
    SEE_OTHER = 303
    TEMPORARY_REDIRECT = 307
    PERMANENT_REDIRECT = 308


class Redirect(Model):
    """An answer sending the client elsewhere: every part not given is the request's own."""

    scheme: Scheme | None = None
    host: Host | None = None
    port: Port | None = None
    """None: the scheme's own port when the scheme changes, else the request's."""
    path: HttpPath | None = None
    """The whole path replaced."""
    path_prefix: HttpPath | None = None
    """The prefix the rule matched replaced (needs a path_prefix or path_segments match)."""
    code: RedirectCode = RedirectCode.FOUND

    @model_validator(mode="after")
    def _one_path(self) -> Self:
        if self.path is not None and self.path_prefix is not None:
            raise CrossFieldError([("path_prefix", "give path or path_prefix, not both")])
        return self


class FixedResponse(Model):
    """An answer made by the load balancer itself: maintenance pages, health, 404s."""

    status: int = Field(default=200, ge=200, le=599)
    body: str = Field(default="", max_length=4096)
    content_type: HeaderValue = "text/plain; charset=utf-8"


class Rewrite(Model):
    """Changes to a forwarded request: the backend sees these, the client never does."""

    path_prefix: HttpPath | None = None
    """Replaces the prefix the rule matched (needs a path_prefix or path_segments match)."""
    path: HttpPath | None = None
    """Replaces the whole path (the query is kept); on a rule matching by path_regex,
    `$1`..`$9` in it are that regex's groups (ingress-nginx's rewrite-target)."""
    host: Host | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.path_prefix is None and self.path is None and self.host is None:
            raise CrossFieldError([("", "give path_prefix or path, host, or both")])
        if self.path_prefix is not None and self.path is not None:
            raise CrossFieldError([("path", "give path or path_prefix, not both")])
        return self


class Header(Model):
    name: HeaderName
    value: HeaderValue


class HeaderChanges(Model):
    """Headers set (replacing any), added (kept alongside any) and removed, in that order."""

    set: tuple[Header, ...] = Field(default=(), max_length=32)
    add: tuple[Header, ...] = Field(default=(), max_length=32)
    remove: tuple[HeaderName, ...] = Field(default=(), max_length=32)

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


class RetryOn(StrEnum):
    """Envoy's retry conditions that are safe to offer: the request never reached a backend
    (connect-failure, refused-stream, reset) or the backend said so (5xx, gateway-error,
    retriable-4xx, and gRPC's cancelled, deadline-exceeded, resource-exhausted, unavailable)."""

    FIVE_XX = "5xx"
    GATEWAY_ERROR = "gateway-error"
    RESET = "reset"
    CONNECT_FAILURE = "connect-failure"
    REFUSED_STREAM = "refused-stream"
    RETRIABLE_4XX = "retriable-4xx"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    RESOURCE_EXHAUSTED = "resource-exhausted"
    UNAVAILABLE = "unavailable"


class Retry(Model):
    """A rule's own retry policy, replacing the listener's default (connect failures and
    refused streams, twice, to another backend)."""

    attempts: int = Field(default=2, ge=0, le=10, description="retries after the first try")
    per_try_timeout_s: float = Field(default=0, ge=0, le=3600, description="0: no limit")
    retry_on: tuple[RetryOn, ...] = Field(
        default=(RetryOn.CONNECT_FAILURE, RetryOn.REFUSED_STREAM), min_length=1
    )


PATH_MATCHES = ("path_prefix", "path_segments", "path_exact", "path_regex", "grpc_service")
"""A rule matches its path one of these ways (or not at all)."""


class Route(Model):
    """A forwarding rule: requests it matches are forwarded, redirected or answered.

    Rules are tried in order and the first whose every match holds wins; a request no rule
    matches goes to the listener's own backends. A rule with no action forwards to the
    listener's Services on the listener's target port.
    """

    name: Name
    hosts: tuple[Host, ...] = Field(default=(), max_length=64)
    """Any of them; none: every host."""
    path_prefix: HttpPath | None = Field(default=None, max_length=1024)
    """Any path that starts so: `/api` matches `/apix` too."""
    path_segments: HttpPath | None = Field(default=None, max_length=1024)
    """Whole segments (the Gateway API's PathPrefix): `/api` matches `/api` and `/api/x`,
    not `/apix`; a trailing `/` is ignored."""
    path_exact: HttpPath | None = Field(default=None, max_length=1024)
    path_regex: Regex | None = None
    grpc_service: Annotated[str, AfterValidator(_grpc_service)] | None = None
    grpc_method: Annotated[str, AfterValidator(_grpc_method)] | None = None
    headers: tuple[HeaderMatch, ...] = Field(default=(), max_length=16)
    query_params: tuple[QueryMatch, ...] = Field(default=(), max_length=16)
    method: Method | None = None
    grpc_only: bool = False
    """Only gRPC calls match (content-type `application/grpc`, `application/grpc+...`), so
    gRPC and other requests to one host can go to different backends."""

    forward_to: tuple[ForwardTarget, ...] = Field(default=(), max_length=16)
    unresolved_weight: int = Field(
        default=0,
        ge=0,
        le=160_000,
        description="a share of the forwarded requests, by weight beside forward_to's, "
        "answered 500: backends the rule names that do not exist (the Gateway API's rule)",
    )
    mirrors: tuple[Mirror, ...] = Field(default=(), max_length=4)
    """Copies of forwarded requests to other backends, their answers dropped."""
    """None given: the listener's Services, on its target port."""
    redirect: Redirect | None = None
    fixed_response: FixedResponse | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderChanges = HeaderChanges()
    response_headers: HeaderChanges = HeaderChanges()
    timeout_s: int | None = Field(
        default=None, ge=0, le=86400, description="0: no limit; none: the listener's"
    )
    retry: Retry | None = None
    """None: the listener's default policy."""
    backend_protocol: BackendProtocol | None = None
    """How forwarded requests reach the targets; None: as the listener's do."""

    @model_validator(mode="before")
    @classmethod
    def _stored_single_target(cls, data: Any, info: ValidationInfo) -> Any:
        # Routes stored before weighted targets named one Service group by `selector` and
        # `target_port` on the route itself: read them as a single target.
        stored = bool(info.context and info.context.get("stored"))
        if stored and isinstance(data, dict) and ("selector" in data or "target_port" in data):
            data = dict(data)
            target = {k: data.pop(k) for k in ("selector", "target_port") if k in data}
            target = {k: v for k, v in target.items() if v is not None}
            if target and "forward_to" not in data:
                data["forward_to"] = [target]
        return data

    @field_validator("path_segments")
    @classmethod
    def _segments(cls, value: str | None) -> str | None:
        if value is not None and ("?" in value or "#" in value):
            raise ValueError("matches the path alone: no '?' or '#'")
        return None if value is None else value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = self._match_problems() + self._action_problems()
        if problems:
            raise CrossFieldError(problems)
        return self

    def _match_problems(self) -> list[tuple[str, str]]:
        problems = []
        given = [f for f in PATH_MATCHES if getattr(self, f) is not None]
        for extra in given[1:]:
            problems.append((extra, f"a rule matches one path: {given[0]} is already given"))
        if self.grpc_method is not None and self.grpc_service is None:
            problems.append(("grpc_method", "needs grpc_service"))
        for field in ("headers", "query_params"):
            names = [m.name for m in getattr(self, field)]
            for i, name in enumerate(names):
                if name in names[:i]:
                    problems.append((f"{field}.{i}.name", f"{name!r} is matched twice"))
        return problems

    def _action_problems(self) -> list[tuple[str, str]]:
        problems = []
        answers = [f for f in ("redirect", "fixed_response") if getattr(self, f) is not None]
        if len(answers) > 1:
            problems.append(("fixed_response", "a rule redirects or answers, not both"))
        if answers:
            for field in ("forward_to", "unresolved_weight", "mirrors", "rewrite", "timeout_s",
                          "retry"):  # fmt: skip
                if getattr(self, field):
                    problems.append((field, f"only for forwarded requests, not with {answers[0]}"))
            if not self.request_headers.empty:
                problems.append(("request_headers", f"nothing is forwarded with {answers[0]}"))
        if answers and self.backend_protocol is not None:
            problems.append(("backend_protocol", f"nothing is forwarded with {answers[0]}"))
        if self.grpc_only and self.redirect is not None:
            problems.append(("redirect", "gRPC clients follow no redirects"))
        if self.grpc_only and self.backend_protocol is BackendProtocol.HTTP1:
            problems.append(("backend_protocol", "gRPC needs HTTP/2 to its backends: h2c or tls"))
        if self.forward_to and not any(t.weight for t in self.forward_to):
            problems.append(("forward_to", "at least one target needs a weight above 0"))
        return problems + self._prefix_problems()

    def _prefix_problems(self) -> list[tuple[str, str]]:
        """A rewrite or redirect replacing the matched prefix needs a prefix match."""
        problems = []
        replacements = {
            "rewrite.path_prefix": self.rewrite.path_prefix if self.rewrite else None,
            "redirect.path_prefix": self.redirect.path_prefix if self.redirect else None,
        }
        groups = GROUP_REFERENCE.findall(self.rewrite.path or "") if self.rewrite else []
        if groups and self.path_regex is None:
            problems.append(("rewrite.path", "$1..$9 name groups of path_regex: give one"))
        elif groups and self.path_regex is not None:
            try:
                have = re.compile(self.path_regex).groups
            except re.error:  # RE2 syntax Python lacks: Envoy's own check judges it
                have = 9
            if missing := sorted({int(g) for g in groups if int(g) > have}):
                problems.append(("rewrite.path", f"path_regex has no group {missing[0]}"))
        for field, value in replacements.items():
            if value is None:
                continue
            if self.path_prefix is None and self.path_segments is None:
                problems.append(
                    (field, "replaces the matched prefix: the rule needs path_prefix or "
                     "path_segments")
                )  # fmt: skip
            elif self.path_segments is not None and value.endswith("/"):
                try:  # replaced by a regex Envoy must accept
                    _regex(segments_pattern(self.path_segments))
                except ValueError as exc:
                    problems.append(("path_segments", f"too long to replace: {exc}"))
        return problems

    @property
    def forwards(self) -> bool:
        """Whether matching requests go to backends (not redirected or answered)."""
        return self.redirect is None and self.fixed_response is None

    @property
    def targets(self) -> tuple[ForwardTarget, ...]:
        """Where forwarded requests go: the rule's targets, or the listener's Services."""
        if not self.forwards:
            return ()
        return self.forward_to or (ForwardTarget(),)
