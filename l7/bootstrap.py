"""The bootstrap of an Envoy in an LB node group: everything else comes over ADS.

Delta ADS by default (only changes travel; after a reconnect Envoy tells the server what
it holds); State of the World on request. The admin API listens on loopback only;
Prometheus scrapes a separate stats listener that exposes nothing but
`/stats/prometheus` and `/ready`. The overload manager caps downstream connections for
the whole node, above the per-listener limit the translation sets.

Statistics are flushed when read (`stats_flush_on_admin`: by `slb envoy-stats` or a
Prometheus scrape), not every 5 s: a flush snapshots every counter and gauge on the main
thread, which applies xDS too, whether or not any sink is configured: with 10,000
clusters (a million statistics) each flush held it about 0.1 s (#18). Histograms'
interval quantiles then cover the time since the previous read.

Envoy keeps only the statistics in `KEPT_STATS` (`stats_matcher`, as Istio's proxies do
by default): what the console charts and what an operator alerts on, 34 a Service. Envoy
makes about 250 otherwise (a listener's, its connection manager's, its cluster's): at
10,000 Services 2.5 million, 505 MiB more memory, and reads of `/stats`, Prometheus'
included, that hold the main thread longer (#18, `bench.l7` "sampler").
`slb envoy-bootstrap --all-stats` keeps them all.
"""

from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass
from typing import Any

from l7.translate.common import SECRET
from slb.config import host_port

XDS_CLUSTER = "openslb-xds"
ADMIN_CLUSTER = "openslb-admin"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
XDS_CLIENT_CERT = "openslb-xds-client"
XDS_SERVER_CA = "openslb-xds-server-ca"
SDS_SUFFIXES = {XDS_CLIENT_CERT: "xds-cert.json", XDS_SERVER_CA: "xds-ca.json"}
TYPE = "type.googleapis.com/"


@dataclass(frozen=True)
class XdsTls:
    """Mutual TLS to the xDS server: files Envoy reads (absolute paths; the key never enters
    the bootstrap), and the name the server's certificate must carry (a DNS or IP SAN).

    Envoy reads the certificate, key and CA through file-based SDS (two small files at
    `sds_prefix` + `.xds-cert.json` / `.xds-ca.json`, naming the PEM files): it then watches
    their directory and takes a renewed certificate or CA without a restart. Written inline
    in the bootstrap, they would be read once.
    """

    cert_file: str
    key_file: str
    ca_file: str
    server_name: str
    sds_prefix: str

    def secret_files(self) -> dict[str, dict[str, Any]]:
        """The SDS files this context points at: path -> content (JSON, read as YAML)."""
        certificate: dict[str, Any] = {
            "certificate_chain": {"filename": self.cert_file},
            "private_key": {"filename": self.key_file},
        }
        cert_dir = posixpath.dirname(self.cert_file)
        if cert_dir == posixpath.dirname(self.key_file):
            # A move anywhere in it reloads the pair: Kubernetes swaps a symlink (..data)
            # on a Secret volume, never the files themselves.
            certificate["watched_directory"] = {"path": cert_dir}
        validation = {
            "trusted_ca": {"filename": self.ca_file},
            "match_typed_subject_alt_names": [{
                "san_type": "IP_ADDRESS" if _is_ip(self.server_name) else "DNS",
                "matcher": {"exact": self.server_name},
            }],
            "watched_directory": {"path": posixpath.dirname(self.ca_file)},
        }  # fmt: skip
        return {
            self._sds_file(XDS_CLIENT_CERT): _secret(XDS_CLIENT_CERT, tls_certificate=certificate),
            self._sds_file(XDS_SERVER_CA): _secret(XDS_SERVER_CA, validation_context=validation),
        }

    def transport_socket(self) -> dict[str, Any]:
        context: dict[str, Any] = {
            "@type": TYPE + UPSTREAM_TLS,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificate_sds_secret_configs": [self._sds_config(XDS_CLIENT_CERT)],
                "validation_context_sds_secret_config": self._sds_config(XDS_SERVER_CA),
            },
        }  # fmt: skip
        if not _is_ip(self.server_name):  # SNI carries host names only (RFC 6066)
            context["sni"] = self.server_name
        return {"name": "envoy.transport_sockets.tls", "typed_config": context}

    def _sds_file(self, secret: str) -> str:
        return f"{self.sds_prefix}.{SDS_SUFFIXES[secret]}"

    def _sds_config(self, secret: str) -> dict[str, Any]:
        return {
            "name": secret,
            "sds_config": {
                "path_config_source": {"path": self._sds_file(secret)},
                "resource_api_version": "V3",
            },
        }


def _secret(name: str, **fields: dict[str, Any]) -> dict[str, Any]:
    return {"resources": [{"@type": SECRET, "name": name, **fields}]}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _cluster(name: str, host: str, port: int, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: {
                "@type": TYPE + HTTP_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "15s", "timeout": "5s"}
                    }
                },
            }
        }
        cluster["upstream_connection_options"] = {"tcp_keepalive": {}}
    return cluster


GLOBAL_STATS = ("server.", "listener_manager.", "cluster_manager.", "control_plane.",
                "overload.", "runtime.", f"cluster.{XDS_CLUSTER}.")  # fmt: skip
"""Kept whole: Envoy's own, its xDS connection's, and the managers' (a few hundred)."""
KEPT_STATS = (
    # Each connection manager's (`http.LISTENER.`) traffic, as `l7.stats` charts it.
    "downstream_cx_active", "downstream_cx_total", "downstream_rq_active", "downstream_rq_total",
    "downstream_rq_2xx", "downstream_rq_3xx", "downstream_rq_4xx", "downstream_rq_5xx",
    "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
    # The listeners' limits' refusals (`l7.translate.listener`).
    "limited_connections", "rate_limited",
    # Each cluster's backends: load, failures, health, and the charted latency histogram.
    "upstream_rq_time", "upstream_cx_active", "upstream_cx_total", "upstream_cx_connect_fail",
    "upstream_cx_overflow", "upstream_rq_active", "upstream_rq_total", "upstream_rq_timeout",
    "upstream_rq_pending_active", "upstream_rq_pending_overflow", "upstream_rq_retry",
    "membership_healthy", "membership_total", "health_check.attempt", "health_check.failure",
    "health_check.healthy", "outlier_detection.ejections_active", "ssl.handshake",
    "ssl.connection_error", "ssl.fail_verify_san", "ssl.fail_verify_error",
    # A resource Envoy refused (CDS, RDS per connection manager).
    "update_rejected",
)  # fmt: skip
"""The last parts of the per-listener and per-cluster statistics Envoy keeps by default."""


def stats_matcher() -> dict[str, Any]:
    """Envoy's `stats_config.stats_matcher`: `GLOBAL_STATS` by prefix, `KEPT_STATS` by suffix
    (string matchers: each statistic is matched once, when it is made)."""
    patterns = [{"prefix": p} for p in GLOBAL_STATS] + [{"suffix": "." + s} for s in KEPT_STATS]
    return {"inclusion_list": {"patterns": patterns}}


STATS_LISTENER = "openslb-stats"
"""The bootstrap's own listener (Prometheus' /stats/prometheus and /ready), and its
connection manager's statistics prefix."""


def _stats_listener(address: str, port: int) -> dict[str, Any]:
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    routes = [
        {"match": {"path": path}, "route": {"cluster": ADMIN_CLUSTER}}
        for path in ("/stats/prometheus", "/ready")
    ]
    return {
        "name": STATS_LISTENER,
        "address": _socket(address, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": TYPE + hcm,
                "stat_prefix": STATS_LISTENER,
                "route_config": {"virtual_hosts": [{
                    "name": "stats", "domains": ["*"], "routes": routes,
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"
                    },
                }],
            },
        }]}],
    }  # fmt: skip


def bootstrap(
    node_group: str,
    node_id: str,
    xds: str = "127.0.0.1:18000",
    *,
    delta: bool = True,
    admin_port: int = 9901,
    stats_address: str = "127.0.0.1",
    stats_port: int | None = 9902,
    max_connections: int = 100_000,
    tls: XdsTls | None = None,
    all_stats: bool = False,
) -> dict[str, Any]:
    """An Envoy bootstrap (as a JSON-ready dict) for node `node_id` of group `node_group`;
    with `tls`, it reaches the xDS server over mutual TLS; with `all_stats`, Envoy keeps
    every statistic, not only `KEPT_STATS`."""
    xds_host, xds_port = host_port(xds, "xds")
    ads = {"ads": {}, "resource_api_version": "V3"}
    xds_cluster = _cluster(XDS_CLUSTER, xds_host, xds_port, True)
    if tls is not None:
        xds_cluster["transport_socket"] = tls.transport_socket()
    static: dict[str, Any] = {"clusters": [xds_cluster]}
    if stats_port is not None:
        static["clusters"].append(_cluster(ADMIN_CLUSTER, "127.0.0.1", admin_port, False))
        static["listeners"] = [_stats_listener(stats_address, stats_port)]
    monitor = "envoy.extensions.resource_monitors.downstream_connections.v3"
    config = {
        "node": {"id": node_id, "cluster": node_group},
        "admin": {"address": _socket("127.0.0.1", admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": static,
        "stats_flush_on_admin": True,
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": TYPE + monitor + ".DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            }],
        },
    }  # fmt: skip
    if not all_stats:
        config["stats_config"] = {"stats_matcher": stats_matcher()}
    return config
