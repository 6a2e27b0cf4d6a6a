"""Configuration: defaults, then a TOML file, then `OPENSLB_SECTION_KEY` environment variables.

Every setting is a dataclass field with its default and a one-line doc; the README's
configuration reference is generated from these (`slb config reference`) and a test
keeps the two equal. Every daemon binds to loopback unless configured otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from slb.selector import check_label_key

DEFAULT_FILE = Path("/etc/openslb/openslb.toml")
ENV_PREFIX = "OPENSLB_"


class ConfigError(ValueError):
    """A setting that cannot be used, named by its TOML key or environment variable."""


def host_port(value: str, name: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); a ConfigError names `name`."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host, int(port)


def comma_list(value: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def networks(value: str, name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated list of CIDRs, or a ConfigError naming the setting."""
    try:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in comma_list(value)]
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def check_class(value: str, name: str) -> str:
    """A `spec.loadBalancerClass` as Kubernetes takes it: a label key with a DNS prefix
    (`example.com/name`); else a ConfigError naming the setting."""
    try:
        check_label_key(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if "/" not in value:
        raise ConfigError(f"{name}: {value!r} needs a DNS prefix, as in 'example.com/{value}'")
    return value


def setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis holding the desired state and the task queues"
    )
    prefix: str = setting("openslb", "Prefix of every key openslb writes")
    username: str = setting("", "Redis ACL user (`slb redis-acl`); empty: the URL's, else default")
    password_file: str = setting(
        "", "File holding the Redis password (0600), so it is in no config, env or log"
    )
    timeout_s: float = setting(
        10.0,
        "Connect and reply timeout of every Redis client: a half-open link fails within it "
        "instead of hanging (keep it above 2 s, the longest blocking read)",
    )


@dataclass(frozen=True)
class SecretsSettings:
    key_file: str = setting(
        "",
        "Keys (0600; `slb secrets new-key`) that encrypt certificates' private keys in Redis "
        "(AES-256-GCM): the first encrypts, every one decrypts; empty: stored unencrypted",
    )


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: str = setting("", "kubeconfig file; empty: in-cluster config, else ~/.kube/config")


@dataclass(frozen=True)
class CmiSettings:
    namespace: str = setting("", "Watch Services in this namespace only; empty: every namespace")
    backend_mode: str = setting(
        "pod", "Default backends: pod (pod IPs) or node (node IPs on the NodePort)"
    )
    exclude_unschedulable: bool = setting(
        True, "Node mode leaves out cordoned (unschedulable) nodes"
    )
    load_balancer_class: str = setting(
        "openslb.io/slb",
        "Services of type LoadBalancer with this `spec.loadBalancerClass` are openslb's, "
        "labelled or not; a Service of any other class is never touched, label or not",
    )
    claim_classless: bool = setting(
        False,
        "Also claim Services of type LoadBalancer that have no `spec.loadBalancerClass` "
        "(as a cluster's default load balancer would); off: only if labelled",
    )
    gateway_api: bool = setting(
        True,
        "Serve the Gateway API's Gateways of GatewayClasses whose controllerName is "
        "`openslb.io/gateway-controller`, and their HTTPRoutes, GRPCRoutes, TLSRoutes, "
        "TCPRoutes and UDPRoutes, where the API server has the Gateway API's CRDs",
    )
    ingress: bool = setting(
        True,
        "Serve the Ingresses (networking.k8s.io/v1) of IngressClasses whose controller is "
        "`openslb.io/ingress-controller`, each on an instance of its own",
    )
    node_group: str = setting("default", "LB node group of the instances that Services get")
    pool: str = setting("default", "Address pool that Services' VIPs come from")
    pool_cidrs: str = setting(
        "", "If set, cmi creates or updates that pool with these CIDRs (comma-separated)"
    )
    instances_per_namespace: int = setting(
        100,
        "Most instances (each a VIP) one namespace may have: its Services' own, and those "
        "operators make for it (the console and `slb lb add` read this too); 0: no limit",
    )
    listeners_per_namespace: int = setting(
        1000, "Most listeners the Services of one namespace may own (one per port); 0: no limit"
    )
    endpoint_slices_from: str = setting(
        "",
        "Namespaces (comma-separated; * for all) whose hand-made EndpointSlices cmi uses; "
        "elsewhere only those of Kubernetes' EndpointSlice controller",
    )
    refused_backend_cidrs: str = setting(
        "",
        "CIDRs no endpoint may point into, besides `pool_cidrs`, loopback and link-local "
        "(comma-separated: the Service CIDR, the API server, Redis, other pools)",
    )
    holdoff_ms: int = setting(
        75,
        "Wait this long for more changes before writing (Contour-style hold-off); the first "
        "change after a quiet spell this long is written at once",
    )
    max_holdoff_ms: int = setting(
        250,
        "Never hold a change back longer than this (while slices change without pause, as in "
        "a scale-up, new pods still reach the load balancers this often)",
    )
    resync_s: int = setting(300, "Full level-triggered resync period: repairs any drift in Redis")
    release_grace_s: int = setting(
        60, "A withdrawn instance keeps its VIP this long before it is freed"
    )
    lease_namespace: str = setting("openslb-system", "Namespace of the leader-election Lease")
    vip_record: str = setting(
        "openslb-vips",
        "ConfigMap (in `cmi.lease_namespace`) where cmi records operators' instances' VIPs, "
        "so a lost store gives them back; empty: none",
    )
    lease_name: str = setting("openslb-cmi", "Name of the leader-election Lease")
    lease_duration_s: int = setting(15, "A leader that stops renewing is replaced after this long")
    renew_deadline_s: int = setting(10, "A leader that cannot renew for this long steps down")
    retry_period_s: int = setting(2, "How often candidates try the Lease and leaders renew it")
    identity: str = setting("", "This process's identity in the Lease; empty: hostname and pid")
    health_bind: str = setting(
        "", "Where `slb cmi` serves /healthz (liveness) and /metrics; empty: not served"
    )

    def __post_init__(self) -> None:
        check_class(self.load_balancer_class, "cmi.load_balancer_class")


@dataclass(frozen=True)
class XdsSettings:
    bind: str = setting(
        "127.0.0.1:18000", "Where `slb xds` serves ADS (gRPC) to Envoys; the bootstrap's default"
    )
    metrics_bind: str = setting(
        "127.0.0.1:18001", "Where `slb xds` serves Prometheus metrics; empty: not served"
    )
    tls_cert: str = setting("", "PEM certificate chain `slb xds` serves with; empty: plaintext")
    tls_key: str = setting("", "PEM private key of `xds.tls_cert`")
    tls_client_ca: str = setting(
        "", "PEM CA(s) Envoys' client certificates must chain to (mutual TLS, required)"
    )
    client_cert: str = setting(
        "", "The bootstrap's default Envoy client certificate for mTLS to xDS (`--tls-cert`)"
    )
    client_key: str = setting("", "Its PEM private key (`--tls-key`)")
    server_ca: str = setting(
        "", "PEM CA that the xDS server's certificate must chain to (`--tls-ca`)"
    )
    state_dir: str = setting(
        "/var/lib/openslb/xds", "Where `slb xds` remembers what it served, beyond Redis' reach"
    )


@dataclass(frozen=True)
class CelerySettings:
    visibility_timeout_s: int = setting(
        300, "An unacknowledged task is delivered again after this; must exceed the slowest apply"
    )
    reassert_s: int = setting(
        30, "Every this often every node is told to re-assert its revision (repairs drift)"
    )


@dataclass(frozen=True)
class ConsoleSettings:
    bind: str = setting("127.0.0.1:8080", "Where `slb console` serves the console and REST API")
    secret_key_file: str = setting(
        "",
        "Key that signs session cookies; created (0600) on first start if missing; "
        "empty: ~/.local/state/openslb/console-secret-key",
    )
    secure_cookies: bool = setting(
        False, "Mark session cookies Secure even on plain HTTP (behind a TLS proxy)"
    )
    trusted_proxy: str = setting(
        "",
        "Address of the reverse proxy in front, whose X-Forwarded-For/-Proto/-Host count; "
        "empty: none (the headers are dropped)",
    )
    trusted_proxies: int = setting(1, "How many proxies in a row `console.trusted_proxy` heads")
    threads: int = setting(8, "Worker threads of the WSGI server")
    tls_cert: str = setting(
        "", "PEM certificate chain: serve HTTPS (cheroot), cookies Secure; empty: HTTP (waitress)"
    )
    tls_key: str = setting("", "PEM private key of `console.tls_cert`")
    login_attempts: int = setting(
        5, "Failed logins from one client address for one user before it must wait"
    )
    login_window_s: int = setting(
        300, "First wait after `login_attempts` failures; each further failure doubles it"
    )
    session_lifetime_s: int = setting(
        43200, "A console sign-in ends this long after it began, however much it is used"
    )
    token_lifetime_days: int = setting(90, "Default lifetime of an API token (at most 365)")


@dataclass(frozen=True)
class DevSettings:
    state_dir: str = setting(
        ".state/dev", "Where `slb dev up` keeps the local platform's state and logs"
    )
    vip_cidr: str = setting(
        "198.18.200.0/24", "The local platform's VIP pool, made local on the host's loopback"
    )
    sample_cidr: str = setting(
        "198.18.201.0/24", "Where the local platform's gRPC sample backends listen"
    )
    lab: bool = setting(True, "Start the lab VM as LB node lb1 (IPVS), serving node group lab")


@dataclass(frozen=True)
class L4Settings:
    node: str = setting("", "This LB node's name, as its node group lists it (`--node` overrides)")
    node_group: str = setting("", "Node group to serve; empty: the group that lists this node")
    driver: str = setting("pyroute2", "How IPVS is programmed: `pyroute2` (netlink) or `ipvsadm`")
    interface: str = setting("slb0", "Dummy interface that holds the VIPs (created if missing)")
    vip_guard: bool = setting(
        True,
        "Drop what is addressed to a VIP but its listeners' ports, ping and ICMP errors: "
        "the nftables table `inet openslb_guard`, which the agent loads (needs Debian's "
        "`nftables`: libnftables and `nft`)",
    )
    drain_timeout_s: int = setting(300, "Longest wait for a removed real server's connections")
    healthy_floor: float = setting(
        0.5, "Share of a virtual service's real servers health checks never take out"
    )
    state_dir: str = setting(
        "/var/lib/openslb/l4", "Where the agent remembers what it applied, beyond Redis' reach"
    )
    resync_interval_s: int = setting(300, "Seconds between full re-reads of the kernel's IPVS")
    stats_interval_s: int = setting(10, "Seconds between traffic statistics samples")
    metrics_listen: str = setting("127.0.0.1:9641", "Prometheus metrics address; empty: off")
    vrrp_config: str = setting(
        "", "File the agent writes keepalived's VRRP instance to (included); empty: no VRRP"
    )
    vrrp_interface: str = setting("eth1", "Interface the VRRP MASTER holds the VIPs on")
    vrrp_router_id: int = setting(51, "VRRP virtual router id of the node group (1-255)")
    vrrp_priority: int = setting(100, "This node's VRRP priority (1-254); highest is MASTER")
    vrrp_advert_ms: int = setting(
        200, "VRRPv3 advert interval; a BACKUP takes over after about 3.6 of them"
    )
    vrrp_peers: str = setting("", "Unicast VRRP peers (comma-separated); empty: multicast")
    vrrp_check: str = setting(
        "", "Command keepalived runs to judge this node (e.g. Envoy's /ready); empty: none"
    )
    vrrp_gateway: str = setting(
        "", "`ADDR/LEN [dev IFACE]`, comma-separated: move with the VIPs (NAT gateway)"
    )
    vrrp_pidfile: str = setting("/run/keepalived.pid", "keepalived's pid file, for its reload")
    conn_sync_interface: str = setting(
        "", "Interface of IPVS connection sync between the group's nodes; empty: off"
    )


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    cmi: CmiSettings = field(default_factory=CmiSettings)
    xds: XdsSettings = field(default_factory=XdsSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    dev: DevSettings = field(default_factory=DevSettings)
    l4: L4Settings = field(default_factory=L4Settings)


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `path` (or $OPENSLB_CONFIG, or /etc/openslb/openslb.toml if present)."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        path = Path(environ[f"{ENV_PREFIX}CONFIG"])
    if path is None and DEFAULT_FILE.exists():
        path = DEFAULT_FILE
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    settings = Settings()
    sections = {}
    for section in fields(Settings):
        current = getattr(settings, section.name)
        table = data.pop(section.name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section.name}] must be a table")
        sections[section.name] = _apply(section.name, current, table, environ)
    if data:
        raise ConfigError(f"unknown section or key: {', '.join(sorted(data))}")
    return replace(settings, **sections)


def _apply(section: str, current: Any, table: dict[str, Any], environ: Mapping[str, str]) -> Any:
    hints = get_type_hints(type(current))
    changes = {}
    for f in fields(current):
        kind = hints[f.name]
        env_name = f"{ENV_PREFIX}{section}_{f.name}".upper()
        if f.name in table:
            value = table.pop(f.name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{section}.{f.name}: expected {kind.__name__}, got {value!r}")
            changes[f.name] = value
        if env_name in environ:
            changes[f.name] = _coerce(env_name, environ[env_name], kind)
    if table:
        raise ConfigError(f"unknown key in [{section}]: {', '.join(sorted(table))}")
    return replace(current, **changes)


def _coerce(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
    return raw


def reference() -> str:
    """The README's configuration table, one row per setting."""
    rows = [
        "| TOML key | Environment variable | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for section in fields(Settings):
        section_cls = section.default_factory
        assert callable(section_cls)
        assert is_dataclass(section_cls)
        for f in fields(section_cls):
            default = f.default if f.default is not MISSING else ""
            env = f"{ENV_PREFIX}{section.name}_{f.name}".upper()
            rows.append(
                f"| `{section.name}.{f.name}` | `{env}` | `{default!r}` | {f.metadata['doc']} |"
            )
    return "\n".join(rows)
