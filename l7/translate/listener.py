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
from collections.abc import Mapping

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import struct_pb2

from cmi.model import Certificate, Listener, Protocol
from cmi.resolve import ResolvedListener
from l7.translate import policy
from l7.translate.common import ads, ip_text, pack, seconds
from l7.translate.secret import server_names

HCM = hcm_pb2.HttpConnectionManager
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
    model = resolved.listener
    out = listener_pb2.Listener(name=model.name)
    socket = out.address.socket_address
    socket.address = ip_text(resolved.vip)
    socket.port_value = model.port
    out.freebind.value = True
    out.per_connection_buffer_limit_bytes.value = policy.BUFFER_LIMIT_BYTES
    if model.protocol is Protocol.GRPC:
        # gRPC clients hold few, long-lived connections: spread them evenly over the
        # workers (the kernel's hashing can leave one worker with far more), at a small
        # cost per accept that such listeners rarely pay.
        out.connection_balance_config.exact_balance.SetInParent()
    filters = _network_filters(model)
    if model.protocol is not Protocol.HTTPS:
        out.filter_chains.add(filters=filters)
        return out
    inspector = out.listener_filters.add(name="envoy.filters.listener.tls_inspector")
    inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    claimed: set[str] = set()
    usable = [certificates[name] for name in model.certificates if name in certificates]
    for i, cert in enumerate(usable):
        names = [n for n in server_names(cert.chain_pem) if n not in claimed]
        claimed.update(names)
        if names:
            chain = out.filter_chains.add(name=cert.name, filters=filters)
            chain.filter_chain_match.server_names.extend(names)
            chain.transport_socket.CopyFrom(_tls(cert))
        if i == 0:
            default = out.default_filter_chain
            default.name = cert.name
            default.filters.extend(filters)
            default.transport_socket.CopyFrom(_tls(cert))
    return out


def _tls(cert: Certificate) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.alpn_protocols.extend(["h2", "http/1.1"])
    sds = common.tls_certificate_sds_secret_configs.add(name=cert.name)
    sds.sds_config.CopyFrom(ads())
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _network_filters(model: Listener) -> list[listener_components_pb2.Filter]:
    limit = connection_limit_pb2.ConnectionLimit(stat_prefix=model.name)
    limit.max_connections.value = policy.LISTENER_MAX_CONNECTIONS
    return [
        listener_components_pb2.Filter(
            name="envoy.filters.network.connection_limit", typed_config=pack(limit)
        ),
        listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager",
            typed_config=pack(_http_connection_manager(model)),
        ),
    ]


def _http_connection_manager(model: Listener) -> hcm_pb2.HttpConnectionManager:
    hcm = HCM()
    hcm.CopyFrom(_hcm_prototype(model.protocol, model.idle_timeout_s))
    hcm.stat_prefix = model.name
    hcm.rds.route_config_name = model.name
    return hcm


@functools.lru_cache(maxsize=256)
def _hcm_prototype(protocol: Protocol, idle_timeout_s: int) -> hcm_pb2.HttpConnectionManager:
    """Everything but the names; shared, so only ever copied from."""
    hcm = HCM(
        codec_type=HCM.AUTO,
        use_remote_address={"value": True},
        normalize_path={"value": True},
        merge_slashes=True,
        strip_any_host_port=True,
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
    hcm.access_log.append(_access_log())
    return hcm


@functools.lru_cache(maxsize=1)
def _access_log() -> accesslog_pb2.AccessLog:
    stdout = stream_pb2.StdoutAccessLog()
    fmt = struct_pb2.Struct()
    fmt.update(ACCESS_LOG_FIELDS)
    stdout.log_format.json_format.CopyFrom(fmt)
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=pack(stdout))
