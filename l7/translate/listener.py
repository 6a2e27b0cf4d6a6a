"""Listeners (LDS): one per L7 listener, bound to VIP:port.

`freebind`: on an LB node the VIP sits on a dummy interface and IPVS forwards to Envoy
by direct routing, so packets still carry the VIP; freebind lets Envoy bind it even
before the address is up. Plain-text listeners take HTTP/1.1 and h2c (prior knowledge,
as gRPC clients send it) on one port; HTTPS terminates TLS, offers h2 and HTTP/1.1 by
ALPN, and picks the certificate by SNI: one filter chain per certificate, matching the
names the certificate is valid for, the first certificate also serving clients that
send no known name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.bandwidth_limit.v3 import bandwidth_limit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import (
    local_rate_limit_pb2 as http_ratelimit_pb2,
)
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.local_ratelimit.v3 import (
    local_rate_limit_pb2 as network_ratelimit_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.v3 import token_bucket_pb2
from google.protobuf import struct_pb2

from l7.translate import policy
from l7.translate.common import (
    PREFIX,
    ads,
    cluster_name,
    ip_text,
    pack,
    seconds,
    trust,
    varint,
    wire,
)
from l7.translate.secret import server_names
from slb.model import (
    Certificate,
    ClientAuthMode,
    Limits,
    Listener,
    Protocol,
    Route,
    TlsPolicy,
    host_covers,
)
from slb.resolve import ResolvedListener

HCM = hcm_pb2.HttpConnectionManager
HCM_TYPE = HCM.DESCRIPTOR.full_name
LIMIT_TYPE = connection_limit_pb2.ConnectionLimit.DESCRIPTOR.full_name
ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "protocol": "%PROTOCOL%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "route": "%ROUTE_NAME%",
    "upstream": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}


def listener(
    resolved: ResolvedListener, certificates: Mapping[str, Certificate]
) -> listener_pb2.Listener:
    """The Envoy listener; `certificates` holds the usable ones (they exist, with a key)."""
    return listener_pb2.Listener.FromString(serialized_listener(resolved, certificates))


def serialized_listener(
    resolved: ResolvedListener, certificates: Mapping[str, Certificate]
) -> bytes:
    """The serialized listener. Plain-text ones (most) are assembled from bytes in canonical
    field order: Listener {name: 1, address: 2 {socket_address: 1 {address: 2, port_value:
    3}}, filter_chains: 3 {filters: 3}, then the shape's other fields (5 and up)}."""
    model = resolved.listener
    if model.protocol is Protocol.TLS:
        streams: bytes = _tls_streams(resolved, certificates).SerializeToString(deterministic=True)
        return streams
    filters = _network_filters(model)
    if model.protocol is Protocol.HTTPS:
        raw: bytes = _https(resolved, certificates, filters).SerializeToString(deterministic=True)
        return raw
    socket = wire(2, ip_text(resolved.vip).encode()) + b"\x18" + varint(model.port)
    address = wire(1, socket)
    return (
        wire(1, model.name.encode())
        + wire(2, address)
        + wire(3, filters)
        + _shape_fields(model.protocol)
    )


@functools.lru_cache(maxsize=8)
def _shape_fields(protocol: Protocol) -> bytes:
    raw: bytes = _shape(protocol).SerializeToString(deterministic=True)
    return raw


def _shape(protocol: Protocol) -> listener_pb2.Listener:
    """The fields every listener of a protocol shares."""
    out = listener_pb2.Listener()
    out.freebind.value = True
    out.per_connection_buffer_limit_bytes.value = policy.BUFFER_LIMIT_BYTES
    if protocol is Protocol.GRPC:
        # gRPC clients hold few, long-lived connections: spread them evenly over the
        # workers (the kernel's hashing can leave one worker with far more), at a small
        # cost per accept that such listeners rarely pay.
        out.connection_balance_config.exact_balance.SetInParent()
    return out


def _inspecting(resolved: ResolvedListener) -> listener_pb2.Listener:
    """A listener on the VIP and port that reads each client's TLS hello (its server name),
    for filter chains chosen by it."""
    model = resolved.listener
    out = _shape(model.protocol)
    out.name = model.name
    socket = out.address.socket_address
    socket.address = ip_text(resolved.vip)
    socket.port_value = model.port
    inspector = out.listener_filters.add(name="envoy.filters.listener.tls_inspector")
    inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    return out


def _https(
    resolved: ResolvedListener, certificates: Mapping[str, Certificate], filters: bytes
) -> listener_pb2.Listener:
    """One filter chain per certificate, matching the names it holds; the first also
    serves every other name (the default chain). With one certificate the default chain
    alone: each chain counts its own connections against `max_connections`, so a second,
    identical chain would let a client hold twice the limit (with and without SNI)."""
    model = resolved.listener
    out = _inspecting(resolved)
    claimed: set[str] = set()
    usable = [certificates[name] for name in model.certificates if name in certificates]
    for i, cert in enumerate(usable):
        names = [n for n in server_names(cert.chain_pem) if n not in claimed]
        claimed.update(names)
        if names and len(usable) > 1:
            chain = out.filter_chains.add(name=cert.name)
            chain.MergeFromString(filters)
            chain.filter_chain_match.server_names.extend(names)
            chain.transport_socket.CopyFrom(_tls(cert, model))
        if i == 0:
            default = out.default_filter_chain
            default.name = cert.name
            default.MergeFromString(filters)
            default.transport_socket.CopyFrom(_tls(cert, model))
    return out


def _tls_streams(
    resolved: ResolvedListener, certificates: Mapping[str, Certificate]
) -> listener_pb2.Listener:
    """A TLS listener: the TLS inspector reads the name the client sends (SNI) and one
    filter chain per rule, matching its hosts, proxies the connection to the rule's
    clusters (a host two rules name is the first's). A connection no rule matches goes to
    the listener's own cluster (a Gateway's has no backends: it is closed). Envoy itself
    prefers an exact name to a wildcard, as the Gateway API asks. Passthrough (no
    certificates) forwards the TLS unopened; terminate ends it first, with the certificate
    that names the chain's hosts (else the first), and forwards the plain stream."""
    model = resolved.listener
    out = _inspecting(resolved)
    front = _front_filters(model)
    usable = [certificates[name] for name in model.certificates if name in certificates]
    claimed: set[str] = set()
    default: Route | None = None

    def chain_of(chain: listener_components_pb2.FilterChain, rule: Route | None) -> None:
        chain.MergeFromString(front)
        chain.filters.append(_tcp_proxy(model, rule))
        if usable:
            cert = _naming(usable, rule.hosts if rule is not None else ())
            chain.transport_socket.CopyFrom(_tls(cert, model, alpn=()))

    for r in model.routes:
        hosts = [h for h in r.hosts if h not in claimed]
        claimed.update(hosts)
        if not r.hosts:
            default = default or r
        elif hosts:
            chain = out.filter_chains.add(name=r.name)
            chain.filter_chain_match.server_names.extend(hosts)
            chain_of(chain, r)
    out.default_filter_chain.name = "default"
    chain_of(out.default_filter_chain, default)
    return out


def _naming(usable: Sequence[Certificate], hosts: Sequence[str]) -> Certificate:
    """The first certificate whose names cover every host (none given: the first)."""
    for cert in usable:
        names = server_names(cert.chain_pem)
        if hosts and all(any(host_covers(n, h) for n in names) for h in hosts):
            return cert
    return usable[0]


def _tcp_proxy(model: Listener, rule: Route | None) -> listener_components_pb2.Filter:
    """Proxy the connection to a rule's clusters (None: the listener's own), by weight."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=model.name)
    proxy.idle_timeout.CopyFrom(seconds(model.idle_timeout_s))
    if rule is None:
        proxy.cluster = cluster_name(model.name)
    elif len(rule.targets) == 1:
        proxy.cluster = cluster_name(model.name, rule.name)
    else:
        for i, target in enumerate(rule.targets):
            name = cluster_name(model.name, rule.name, i)
            proxy.weighted_clusters.clusters.add(name=name, weight=target.weight)
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy",
                                          typed_config=pack(proxy))  # fmt: skip


def _tls(
    cert: Certificate, model: Listener, alpn: Sequence[str] = ("h2", "http/1.1")
) -> base_pb2.TransportSocket:
    """Envoy's end of the clients' TLS; `alpn`: the protocols it offers (none for a plain
    stream: the backend's protocol is not Envoy's to name)."""
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.alpn_protocols.extend(alpn)
    sds = common.tls_certificate_sds_secret_configs.add(name=cert.name)
    sds.sds_config.CopyFrom(ads())
    _tls_policy(common.tls_params, model.tls_policy)
    clients = model.client_certificates
    if clients is not None:
        context.require_client_certificate.value = clients.mode is ClientAuthMode.REQUIRED
        trust(common.validation_context, clients.ca_pem, clients.subject_alt_names)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


STRICT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
)  # fmt: skip
"""TLS 1.2 ciphers of `tls12_strict`: forward secret and AEAD only (TLS 1.3's are all so)."""


def _tls_policy(params: common_pb2.TlsParameters, policy: TlsPolicy) -> None:
    """Envoy's defaults are `tls12` (TLS 1.2 to 1.3, its cipher list): only the others set
    anything."""
    if policy is TlsPolicy.TLS13:
        params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    elif policy is TlsPolicy.TLS12_STRICT:
        params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
        params.cipher_suites.extend(STRICT_CIPHERS)


def _network_filters(model: Listener) -> bytes:
    """A filter chain's filters (its field 3, repeated), serialized: access control if any,
    the connection limit, then the HTTP connection manager.

    Their packed configurations differ between listeners only by the listener's name, so
    they are assembled from bytes made once per shape, in canonical field order: the very
    bytes serializing the whole messages would give (tests/l7/test_translate.py checks),
    at a fraction of the cost for 10,000 listeners.
    """
    name = model.name.encode()
    limits = model.limits
    per_request = limits.requests_per_second is not None or limits.request_bandwidth_kib_s
    rate_prefix = model.name if per_request else None
    rds_source, hcm_rest = _packed_parts(
        model.protocol, model.idle_timeout_s, model.access_log, limits, rate_prefix
    )
    hcm = wire(2, name) + wire(3, rds_source + wire(2, name)) + hcm_rest  # stat_prefix, rds
    return _front_filters(model) + wire(3, _HCM_FILTER + wire(4, _HCM_ANY + wire(2, hcm)))


def _front_filters(model: Listener) -> bytes:
    """The filters before the one that proxies: the connection limit, then access control
    and the connection rate, if any (serialized as a filter chain's field 3)."""
    limits = model.limits
    # The connection limit comes first: it must see every connection a later filter closes,
    # or its count of open ones goes wrong.
    checks = b"".join(wire(3, f) for f in _source_filters(model))
    if limits.connections_per_second is not None:
        checks += wire(3, _connection_rate_filter(model.name, limits.connections_per_second))
    limit = wire(1, model.name.encode()) + _limit_rest(limits.max_connections)
    return wire(3, _LIMIT_FILTER + wire(4, _LIMIT_ANY + wire(2, limit))) + checks


@functools.lru_cache(maxsize=64)
def _limit_rest(max_connections: int | None) -> bytes:
    """The connection limit after its stat_prefix (field 1): max_connections."""
    limit = connection_limit_pb2.ConnectionLimit()
    limit.max_connections.value = max_connections or policy.LISTENER_MAX_CONNECTIONS
    raw: bytes = limit.SerializeToString(deterministic=True)
    return raw


def _connection_rate_filter(name: str, per_second: int) -> bytes:
    """New connections beyond `per_second` (a token bucket, per Envoy) are closed at once."""
    config = network_ratelimit_pb2.LocalRateLimit(stat_prefix=f"{name}.connections_per_second")
    _fill(config.token_bucket, per_second)
    rate = listener_components_pb2.Filter(
        name="envoy.filters.network.local_ratelimit", typed_config=pack(config)
    )
    raw: bytes = rate.SerializeToString(deterministic=True)
    return raw


def _fill(bucket: token_bucket_pb2.TokenBucket, per_second: int) -> None:
    """A bucket of one second's tokens, refilled every second."""
    bucket.max_tokens = per_second
    bucket.tokens_per_fill.value = per_second
    bucket.fill_interval.CopyFrom(seconds(1))


def _source_filters(model: Listener) -> list[bytes]:
    """The listener's access control, first in the chain so a refused client costs one
    accept and a close: a network RBAC filter denying `denied_sources`, then one allowing
    only `allowed_sources`, both on the connection's own peer address (the client's: IPVS
    forwards to Envoy without rewriting it)."""
    out = []
    for action, networks in (
        (rbac_pb2.RBAC.DENY, model.denied_sources),
        (rbac_pb2.RBAC.ALLOW, model.allowed_sources),
    ):
        if not networks:
            continue
        kind = "denied" if action == rbac_pb2.RBAC.DENY else "allowed"
        config = network_rbac_pb2.RBAC(stat_prefix=f"{model.name}.{kind}_sources.")
        policy_ = config.rules.policies[f"{kind}-sources"]
        config.rules.action = action
        policy_.permissions.add().any = True
        for network in networks:
            cidr = policy_.principals.add().direct_remote_ip
            cidr.address_prefix = str(network.network_address)
            cidr.prefix_len.value = network.prefixlen
        rbac = listener_components_pb2.Filter(
            name="envoy.filters.network.rbac", typed_config=pack(config)
        )
        out.append(rbac.SerializeToString(deterministic=True))
    return out


# Filter: name (1), typed_config (4); Any: type_url (1), value (2).
_LIMIT_FILTER = wire(1, b"envoy.filters.network.connection_limit")
_LIMIT_ANY = wire(1, (PREFIX + LIMIT_TYPE).encode())
_HCM_FILTER = wire(1, b"envoy.filters.network.http_connection_manager")
_HCM_ANY = wire(1, (PREFIX + HCM_TYPE).encode())


@functools.lru_cache(maxsize=256)
def _packed_parts(
    protocol: Protocol, idle_timeout_s: int, access_log: bool, limits: Limits,
    rate_prefix: str | None,
) -> tuple[bytes, bytes]:  # fmt: skip
    """For listeners of one shape: the HCM's route discovery source (Rds field 1); the HCM
    after its rds (fields 4+)."""
    hcm = HCM()
    hcm.CopyFrom(_hcm_prototype(protocol, idle_timeout_s, access_log))
    before_router = []
    if limits.requests_per_second is not None and rate_prefix is not None:
        rate = hcm_pb2.HttpFilter(name="envoy.filters.http.local_ratelimit")
        rate.typed_config.CopyFrom(pack(_request_rate(rate_prefix, limits.requests_per_second)))
        before_router.append(rate)
    if limits.request_bandwidth_kib_s and rate_prefix is not None:
        bandwidth = hcm_pb2.HttpFilter(name="envoy.filters.http.bandwidth_limit")
        bandwidth.typed_config.CopyFrom(
            pack(_request_bandwidth(rate_prefix, limits.request_bandwidth_kib_s))
        )
        before_router.append(bandwidth)
    if before_router:
        others = list(hcm.http_filters)  # the router, which must stay last
        del hcm.http_filters[:]
        hcm.http_filters.extend([*before_router, *others])
    rds_source = wire(1, hcm.rds.config_source.SerializeToString(deterministic=True))
    hcm.ClearField("rds")
    return rds_source, hcm.SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=256)
def _hcm_prototype(
    protocol: Protocol, idle_timeout_s: int, access_log: bool
) -> hcm_pb2.HttpConnectionManager:
    """Everything but the names (stat_prefix, rds.route_config_name); only copied from."""
    hcm = HCM(
        codec_type=HCM.AUTO,  # the default: HTTP/1.1 or HTTP/2 (h2c, or h2 by ALPN)
        use_remote_address={"value": True},
        normalize_path={"value": True},
        merge_slashes=True,
        strip_matching_host_port=True,
        stream_idle_timeout=seconds(idle_timeout_s),
        request_headers_timeout=seconds(10),
    )
    hcm.rds.config_source.CopyFrom(ads())
    hcm.common_http_protocol_options.idle_timeout.CopyFrom(seconds(idle_timeout_s))
    hcm.http2_protocol_options.max_concurrent_streams.value = policy.DOWNSTREAM_MAX_STREAMS
    if protocol is not Protocol.GRPC:
        hcm.upgrade_configs.add(upgrade_type="websocket")
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.CopyFrom(pack(router_pb2.Router()))
    if access_log:  # opt-in per listener: a JSON line per request costs Envoy CPU
        hcm.access_log.append(_access_log())
    return hcm


RATE_LIMITED_HEADER = "x-openslb-rate-limited"


def _request_rate(listener: str, per_second: int) -> http_ratelimit_pb2.LocalRateLimit:
    """Requests beyond `per_second` (per Envoy) are answered 429, gRPC calls
    RESOURCE_EXHAUSTED, each with a header saying the load balancer refused it. (Envoy
    counts under the stat prefix alone, so it names the listener.)"""
    config = http_ratelimit_pb2.LocalRateLimit(
        stat_prefix=f"{listener}.requests_per_second", rate_limited_as_resource_exhausted=True
    )
    _fill(config.token_bucket, per_second)
    for field in (config.filter_enabled, config.filter_enforced):
        field.default_value.numerator = 100
    header = config.response_headers_to_add.add()
    header.header.key, header.header.value = RATE_LIMITED_HEADER, "true"
    header.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return config


def _request_bandwidth(listener: str, kib_s: int) -> bandwidth_limit_pb2.BandwidthLimit:
    """Each request's body, and its response's, at most `kib_s` KiB a second (Envoy's token
    bucket per stream, refilled every 50 ms)."""
    return bandwidth_limit_pb2.BandwidthLimit(
        stat_prefix=f"{listener}.request_bandwidth",
        enable_mode=bandwidth_limit_pb2.BandwidthLimit.REQUEST_AND_RESPONSE,
        limit_kbps={"value": kib_s},
    )


@functools.lru_cache(maxsize=1)
def _access_log() -> accesslog_pb2.AccessLog:
    stdout = stream_pb2.StdoutAccessLog()
    fmt = struct_pb2.Struct()
    fmt.update(ACCESS_LOG_FIELDS)
    stdout.log_format.json_format.CopyFrom(fmt)
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=pack(stdout))
