"""Route configurations (RDS): one per listener, its forwarding rules in order.

Envoy picks a virtual host by the request's host, then the first route that matches. So
every host a route names gets a virtual host holding, in the listener's order, the routes
for that host and the routes for any host; the `*` virtual host holds the host-less
routes. Each ends with a catch-all to the listener's own cluster.

There is no default timeout: Envoy's 15 s would cut long gRPC streams. A route's
`timeout_s`, else its listener's `request_timeout_s` (0: none), is the only limit, and gRPC
deadlines sent by clients (`grpc-timeout`) are honoured as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf.internal.containers import (
    RepeatedCompositeFieldContainer,
    RepeatedScalarFieldContainer,
)

from l7.translate import policy
from l7.translate.common import cluster_name, mirror_cluster_name, pack, seconds, wire
from slb.model import (
    GROUP_REFERENCE,
    HeaderChanges,
    Listener,
    MatchType,
    Persistence,
    PersistenceMode,
    Protocol,
    RedirectCode,
    Retry,
    Route,
    Scheme,
    ValueMatch,
    host_covers,
    segments_pattern,
)
from slb.resolve import ResolvedListener

ANY_HOST = "*"
DEFAULT_ROUTE = "default"
COOKIE_NAME = "openslb-affinity"


def route_configuration(resolved: ResolvedListener) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration.FromString(serialized_route_configuration(resolved))


def serialized_route_configuration(resolved: ResolvedListener) -> bytes:
    """The serialized route configuration. For a listener without routes (the common case)
    it is assembled from bytes made once per shape, in canonical field order:
    RouteConfiguration {name: 1, virtual_hosts: 2 {name: 1, domains: 2, routes: 3 {match: 1,
    route: 2 {cluster: 1, ...}, name: 14}, retry_policy: 16}}."""
    listener = resolved.listener
    if listener.protocol is Protocol.TLS:  # no requests to route: its chains name clusters
        return wire(1, listener.name.encode())
    if listener.routes:
        return _serialized_rules(resolved)
    head, action_rest, tail = _catch_all_parts(*_action_key(listener, None))
    action = wire(1, cluster_name(listener.name).encode()) + action_rest
    route = _MATCH_ANY + wire(2, action) + _DEFAULT_NAME
    return wire(1, listener.name.encode()) + wire(2, head + wire(3, route) + tail)


_MATCH_ANY = wire(1, wire(1, b"/"))  # Route.match {prefix: "/"}
_DEFAULT_NAME = wire(14, DEFAULT_ROUTE.encode())  # Route.name


@functools.lru_cache(maxsize=1024)
def _catch_all_parts(
    timeout_s: int, grpc: bool, persistence: Persistence, source_ip: bool
) -> tuple[bytes, bytes, bytes]:
    """The virtual host before its routes; the route action after its cluster; the virtual
    host after its routes."""
    head = route_components_pb2.VirtualHost(name=ANY_HOST, domains=[ANY_HOST])
    tail = route_components_pb2.VirtualHost()
    tail.retry_policy.CopyFrom(_retry_policy())
    action = _action(timeout_s, grpc, persistence, source_ip)
    return (
        head.SerializeToString(deterministic=True),
        action.SerializeToString(deterministic=True),
        tail.SerializeToString(deterministic=True),
    )


def _serialized_rules(resolved: ResolvedListener) -> bytes:
    """Each rule is built and serialized once, then its bytes go into every virtual host
    that holds it: with 1,000 rules and ten hosts, the host-less rules repeat ten times.
    RouteConfiguration {name: 1, virtual_hosts: 2 {name: 1, domains: 2, routes: 3,
    retry_policy: 16}, ignore_port_in_host_matching: 14}."""
    listener = resolved.listener
    rules = listener.routes
    encoded = [wire(3, _route(listener, r).SerializeToString(deterministic=True)) for r in rules]
    tail = wire(3, _route(listener, None).SerializeToString(deterministic=True))
    tail += wire(16, _retry_policy().SerializeToString(deterministic=True))
    out = [wire(1, listener.name.encode())]
    for host in [*dict.fromkeys(h for r in rules for h in r.hosts), ANY_HOST]:
        name = host.encode()
        held = b"".join(  # a rule for *.example.com is one for a.example.com's too
            e
            for r, e in zip(rules, encoded, strict=True)
            if not r.hosts or any(host_covers(h, host) for h in r.hosts)
        )
        out.append(wire(2, wire(1, name) + wire(2, name) + held + tail))
    # A virtual host is picked by the Host header's name, whatever its port; a port other
    # than the listener's reaches the backend as the client wrote it.
    out.append(_IGNORE_PORT_IN_HOST_MATCHING)
    return b"".join(out)


_IGNORE_PORT_IN_HOST_MATCHING = b"\x70\x01"  # RouteConfiguration field 14 (a bool), true


def _route(listener: Listener, r: Route | None) -> route_components_pb2.Route:
    route = route_components_pb2.Route(name=r.name if r else DEFAULT_ROUTE)
    if r is None:
        route.match.prefix = "/"
        route.route.CopyFrom(_action(*_action_key(listener, None)))
        route.route.cluster = cluster_name(listener.name)
        return route
    _match(route.match, r)
    if r.redirect is not None:
        _redirect(route.redirect, r, listener)
    elif r.fixed_response is not None:
        answer = r.fixed_response
        route.direct_response.status = answer.status
        if answer.body:
            route.direct_response.body.inline_string = answer.body
        _set_headers(route.response_headers_to_add, [("content-type", answer.content_type)])
    else:
        _forward(route.route, listener, r)
        _change_headers(route.request_headers_to_add, route.request_headers_to_remove,
                        r.request_headers)  # fmt: skip
    _change_headers(route.response_headers_to_add, route.response_headers_to_remove,
                    r.response_headers)  # fmt: skip
    return route


def _match(match: route_components_pb2.RouteMatch, r: Route) -> None:
    if r.grpc_service is not None:
        if r.grpc_method is not None:
            match.path = f"/{r.grpc_service}/{r.grpc_method}"
        else:
            match.prefix = f"/{r.grpc_service}/"
    elif r.path_exact is not None:
        match.path = r.path_exact
    elif r.path_segments not in (None, "/"):  # `/` alone is every path: a prefix
        match.path_separated_prefix = r.path_segments
    elif r.path_regex is not None:
        match.safe_regex.regex = r.path_regex
    else:
        match.prefix = r.path_prefix or "/"
    for header in r.headers:
        _string_match(match.headers.add(name=header.name), header)
    if r.method is not None:
        match.headers.add(name=":method").string_match.exact = r.method.value
    if r.grpc_only:
        match.grpc.SetInParent()  # content-type application/grpc or application/grpc+...
    for param in r.query_params:
        _string_match(match.query_parameters.add(name=param.name), param)


def _string_match(
    matcher: route_components_pb2.HeaderMatcher | route_components_pb2.QueryParameterMatcher,
    match: ValueMatch,
) -> None:
    if match.type is MatchType.PRESENT:
        matcher.present_match = True
    elif match.type is MatchType.REGEX:
        matcher.string_match.safe_regex.regex = match.value
    else:
        matcher.string_match.exact = match.value


_REDIRECT_CODES = {
    RedirectCode.MOVED_PERMANENTLY: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    RedirectCode.FOUND: route_components_pb2.RedirectAction.FOUND,
    RedirectCode.SEE_OTHER: route_components_pb2.RedirectAction.SEE_OTHER,
    RedirectCode.TEMPORARY_REDIRECT: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    RedirectCode.PERMANENT_REDIRECT: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
_SCHEME_PORTS = {Scheme.HTTP: 80, Scheme.HTTPS: 443}


def _redirect(action: route_components_pb2.RedirectAction, r: Route, listener: Listener) -> None:
    """Without a port, the Location has the scheme's own port when the scheme changes, else
    the listener's, written only when not the scheme's own, as the Gateway API asks (the
    connection manager strips the listener's own port from the Host, so Envoy writes none;
    another port the client wrote, it keeps)."""
    redirect = r.redirect
    assert redirect is not None
    if redirect.scheme is not None:
        action.scheme_redirect = redirect.scheme.value
    if redirect.host is not None:
        action.host_redirect = redirect.host
    port = redirect.port
    if port is None and redirect.scheme is None:
        own = _SCHEME_PORTS[Scheme.HTTPS if listener.protocol is Protocol.HTTPS else Scheme.HTTP]
        port = None if listener.port == own else listener.port
    if port is not None:
        action.port_redirect = port
    if redirect.path is not None:
        action.path_redirect = redirect.path
    elif redirect.path_prefix is not None:
        _replace_prefix(action, r, redirect.path_prefix)
    action.response_code = _REDIRECT_CODES[redirect.code]


UNRESOLVED_CLUSTER = "openslb.unresolved"
"""The cluster a rule's unresolved share names: no cluster has that name (a listener's are
DNS labels), so Envoy answers those requests with the route's cluster_not_found code."""


def _forward(action: route_components_pb2.RouteAction, listener: Listener, r: Route) -> None:
    action.CopyFrom(_action(*_action_key(listener, r)))
    targets = r.targets
    if len(targets) == 1 and not r.unresolved_weight:
        action.cluster = cluster_name(listener.name, r.name)
    else:
        for i, target in enumerate(targets):
            weighted = action.weighted_clusters.clusters.add(
                name=cluster_name(listener.name, r.name, i)
            )
            weighted.weight.value = target.weight
    if r.unresolved_weight:  # a cluster never defined: Envoy answers its share so
        unresolved = action.weighted_clusters.clusters.add(name=UNRESOLVED_CLUSTER)
        unresolved.weight.value = r.unresolved_weight
        action.cluster_not_found_response_code = action.INTERNAL_SERVER_ERROR
    for i, mirror in enumerate(r.mirrors):
        copy = action.request_mirror_policies.add(
            cluster=mirror_cluster_name(listener.name, r.name, i)
        )
        if mirror.percent < 100:  # in millionths: Envoy's finest fraction
            share = copy.runtime_fraction.default_value
            share.numerator = round(mirror.percent * 10_000)
            share.denominator = share.MILLION
    if r.rewrite is not None:
        if r.rewrite.path_prefix is not None:
            _replace_prefix(action, r, r.rewrite.path_prefix)
        elif r.rewrite.path is not None:
            whole = action.regex_rewrite  # the path alone: the query is kept
            whole.pattern.regex, whole.substitution = "^/.*$", r.rewrite.path
            if r.path_regex is not None:  # its groups, $1..$9, are Envoy's \1..\9
                whole.pattern.regex = f"^(?:{r.path_regex})$"
                whole.substitution = GROUP_REFERENCE.sub(r"\\\1", r.rewrite.path)
        if r.rewrite.host is not None:
            action.host_rewrite_literal = r.rewrite.host
    if r.retry is not None:
        action.retry_policy.CopyFrom(_rule_retry_policy(r.retry))


def _replace_prefix(
    action: route_components_pb2.RouteAction | route_components_pb2.RedirectAction,
    r: Route,
    replacement: str,
) -> None:
    """The prefix the rule matched becomes `replacement`. Envoy appends what follows the
    matched prefix; whole segments (the Gateway API's PathPrefix) keep their slash after
    it, so a replacement ending in `/` replaces them by a regex (`/a` -> `/` makes `/a/b`
    `/b`, not `//b`), and the root `/` gets one (`/` -> `/x` makes `/b` `/x/b`)."""
    if r.path_segments is not None and replacement.endswith("/"):
        action.regex_rewrite.pattern.regex = segments_pattern(r.path_segments)
        action.regex_rewrite.substitution = replacement
    elif r.path_segments == "/":
        action.prefix_rewrite = replacement + "/"
    else:
        action.prefix_rewrite = replacement


def _set_headers(
    options: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption],
    headers: Iterable[tuple[str, str]],
    append: bool = False,
) -> None:
    how = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    for name, value in headers:
        options.add(header={"key": name, "value": value}, append_action=how)


def _change_headers(
    to_add: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption],
    to_remove: RepeatedScalarFieldContainer[str],
    changes: HeaderChanges,
) -> None:
    """Envoy removes first, then adds: a header both removed and set ends up set."""
    _set_headers(to_add, ((h.name, h.value) for h in changes.set))
    _set_headers(to_add, ((h.name, h.value) for h in changes.add), append=True)
    to_remove.extend(changes.remove)


def _action_key(listener: Listener, r: Route | None) -> tuple[int, bool, Persistence, bool]:
    """Everything a route's action depends on, its cluster aside."""
    grpc = listener.protocol is Protocol.GRPC or (
        r is not None and (r.grpc_service is not None or r.grpc_only)
    )
    timeout = listener.request_timeout_s
    if r is not None and r.timeout_s is not None:
        timeout = r.timeout_s
    return (
        timeout,
        grpc,
        listener.persistence,
        policy.hashes_source_ip(listener),
    )


@functools.lru_cache(maxsize=1024)
def _action(
    timeout_s: int, grpc: bool, persistence: Persistence, source_ip: bool
) -> route_components_pb2.RouteAction:
    """A route action without its cluster; shared, so only ever copied from."""
    action = route_components_pb2.RouteAction(timeout=seconds(timeout_s))  # 0s: no limit
    if grpc:
        # Envoy then bounds gRPC calls by the client's deadline (grpc-timeout), capped at
        # the timeout if there is one, rather than by the route timeout.
        duration = action.max_stream_duration
        duration.grpc_timeout_header_max.CopyFrom(seconds(timeout_s))  # 0s: uncapped
        if timeout_s:
            duration.max_stream_duration.CopyFrom(seconds(timeout_s))
    if persistence.mode is PersistenceMode.COOKIE:
        cookie = action.hash_policy.add().cookie
        cookie.name = persistence.cookie_name or COOKIE_NAME
        cookie.ttl.CopyFrom(seconds(persistence.timeout_s))
        cookie.path = "/"
    elif source_ip:
        action.hash_policy.add().connection_properties.source_ip = True
    return action


def _rule_retry_policy(retry: Retry) -> route_components_pb2.RetryPolicy:
    """A rule's own policy, replacing its virtual host's; still another backend per try."""
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(r.value for r in retry.retry_on),
        num_retries={"value": retry.attempts},
        host_selection_retry_max_attempts=3,
    )
    if retry.per_try_timeout_s:
        policy.per_try_timeout.CopyFrom(seconds(retry.per_try_timeout_s))
    predicate = policy.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts")
    predicate.typed_config.CopyFrom(pack(previous_hosts_pb2.PreviousHostsPredicate()))
    return policy


@functools.lru_cache(maxsize=1)
def _retry_policy() -> route_components_pb2.RetryPolicy:
    """One policy per virtual host; the gRPC conditions read grpc-status, absent elsewhere."""
    retry = route_components_pb2.RetryPolicy(
        retry_on=policy.RETRY_ON,
        num_retries={"value": policy.NUM_RETRIES},
        host_selection_retry_max_attempts=3,
    )
    predicate = retry.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts")
    predicate.typed_config.CopyFrom(pack(previous_hosts_pb2.PreviousHostsPredicate()))
    return retry
