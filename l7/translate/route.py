"""Route configurations (RDS): one per listener, matching hosts, path prefixes, gRPC names.

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

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from l7.translate import policy
from l7.translate.common import cluster_name, pack, seconds, wire
from slb.model import Listener, Persistence, PersistenceMode, Protocol, Route
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
    if listener.routes:
        raw: bytes = _build(resolved).SerializeToString(deterministic=True)
        return raw
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


def _build(resolved: ResolvedListener) -> route_pb2.RouteConfiguration:
    listener = resolved.listener
    config = route_pb2.RouteConfiguration(name=listener.name)
    routes = listener.routes
    retry = _retry_policy()
    hosts = list(dict.fromkeys(h for r in routes for h in r.hosts))
    for host in [*hosts, ANY_HOST]:
        vhost = config.virtual_hosts.add(name=host, domains=[host])
        vhost.retry_policy.CopyFrom(retry)
        for r in routes:
            if host in r.hosts or not r.hosts:
                vhost.routes.append(_route(listener, r))
        vhost.routes.append(_route(listener, None))
    return config


def _route(listener: Listener, r: Route | None) -> route_components_pb2.Route:
    route = route_components_pb2.Route(name=r.name if r else DEFAULT_ROUTE)
    match = route.match
    if r is not None and r.grpc_service is not None:
        if r.grpc_method is not None:
            match.path = f"/{r.grpc_service}/{r.grpc_method}"
        else:
            match.prefix = f"/{r.grpc_service}/"
    else:
        match.prefix = (r.path_prefix if r else None) or "/"
    route.route.CopyFrom(_action(*_action_key(listener, r)))
    route.route.cluster = cluster_name(listener.name, r.name if r else None)
    return route


def _action_key(listener: Listener, r: Route | None) -> tuple[int, bool, Persistence, bool]:
    """Everything a route's action depends on, its cluster aside."""
    grpc = listener.protocol is Protocol.GRPC or (r is not None and r.grpc_service is not None)
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
