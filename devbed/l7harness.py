"""The L7 test bed: addresses on a dummy interface, real gRPC/HTTP backends, the xDS
server as `slb xds`, Envoys bootstrapped for ADS, and the load scenarios that the tests
and `bench/l7.py` share.

Every address comes from 198.19.N.0/24 (inside the benchmarking range 198.18.0.0/15),
with N picked per session so that parallel sessions on one machine do not collide.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import itertools
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from devbed.envoy import EnvoyProxy
from devbed.process import Process, free_port, wait_until
from l7.bootstrap import bootstrap
from l7.stats import read_clusters_page
from slb.model import (
    Backend,
    LoadBalancer,
    Owner,
    OwnerKind,
    Protocol,
    Service,
    ServicePort,
    parse,
)
from slb.model import Listener as ListenerModel
from slb.storage.status import StatusBoard
from slb.storage.store import Store

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SLB = str(Path(sys.executable).parent / "slb")
ECHO = "/openslb.test.Echo/"
OPERATOR = Owner(kind=OwnerKind.OPERATOR, name="tests")
RAW: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}


# -- addresses ----------------------------------------------------------------------------


_CLAIMED: set[int] = set()
"""Octets this process handed out: a net may not have put an address on its own yet."""


def free_octet() -> int:
    """An N whose 198.19.N.0/24 no address or route on this host uses yet."""
    taken = "".join(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for cmd in (["ip", "-o", "addr"], ["ip", "route", "show", "table", "all"])
    )
    used = {int(m) for m in re.findall(r"198\.19\.(\d+)\.", taken)} | _CLAIMED
    octet = random.choice([n for n in range(100, 250) if n not in used])  # noqa: S311
    _CLAIMED.add(octet)
    return octet


class TestNet:
    """A dummy interface holding this session's VIPs and backend addresses.

    On a kernel without the dummy driver (this project's development machines have none)
    a bridge with no ports stands in: it holds local addresses the same way.
    """

    __test__ = False  # not a test class, whatever its name

    _made = itertools.count()  # several nets in one process (a session's and a test's)

    def __init__(self) -> None:
        self.name = f"slb7t{os.getpid() % 100000}n{next(self._made)}"[:15]
        self.octet = free_octet()
        self.added: set[str] = set()

    def create(self) -> TestNet:
        for kind in ("dummy", "bridge"):
            added = subprocess.run(
                ["ip", "link", "add", self.name, "type", kind],
                capture_output=True,
                text=True,
                check=False,
            )
            if added.returncode == 0:
                break
        else:
            raise RuntimeError(f"cannot create {self.name}: {added.stderr.strip()}")
        subprocess.run(["ip", "link", "set", self.name, "up"], check=True)
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.name], check=False, capture_output=True)

    def address(self, host: int) -> str:
        """198.19.N.host, added to the interface on first use."""
        return self.add(f"198.19.{self.octet}.{host}")

    def add(self, address: str) -> str:
        """`address` on the interface (once), e.g. a VIP of a benchmark's world."""
        if address not in self.added:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", self.name], check=True)
            self.added.add(address)
        return address


# -- the desired state --------------------------------------------------------------------


def load_balancer(name: str, vip: str, group: str = "default") -> LoadBalancer:
    return LoadBalancer(
        name=name, vip=vip, node_group=group, owner=OPERATOR, allowed_namespaces=("tests",)
    )


def service(
    name: str, backends: Iterable[tuple[str, int]], port_name: str = "grpc", lb: str = "lb"
) -> Service:
    return Service(
        namespace="tests",
        name=name,
        labels={"app": name},
        load_balancer=lb,
        ports=(ServicePort(name=port_name, port=80),),
        backends={port_name: tuple(Backend(address=a, port=p) for a, p in backends)},
    )


def listener(
    name: str, protocol: Protocol | str, port: int, lb: str = "lb", **extra: Any
) -> ListenerModel:
    data = {
        "name": name,
        "load_balancer": lb,
        "protocol": str(protocol),
        "port": port,
        "selector": {"match_labels": {"app": extra.pop("app", name)}},
        "target_port": extra.pop("target_port", "grpc"),
        "owner": {"kind": "Operator", "name": "tests"},
        **extra,
    }
    obj = parse("Listener", data)
    assert isinstance(obj, ListenerModel)
    return obj


# -- processes ----------------------------------------------------------------------------


@dataclass
class BackendServer:
    name: str
    address: str
    grpc_port: int
    http_port: int
    process: Process
    _log_offset: int = field(default=0, repr=False)  # where this start's output begins

    @property
    def grpc_target(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    def start(self) -> None:
        log = self.process.log_path
        self._log_offset = log.stat().st_size if log.exists() else 0
        self.process.start()

    def ready(self) -> bool:
        """Its "ready" line printed since this start: gRPC listens (and takes connections)
        as soon as a port is added, before the TLS port's certificate is written."""
        self.process.check_alive()
        with self.process.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return f"ready {self.name}".encode() in log.read()

    def tls_certificate(self) -> str:
        """The certificate of its TLS port (started with `tls_port`), PEM."""
        cwd = Path(self.process.log_path).parent
        return (cwd / f"backend-{self.name}-tls.pem").read_text()

    def stop(self, timeout: float = 40.0) -> None:
        self.process.stop(timeout=timeout)


class XdsProcess:
    """`slb xds` as its own process, as it runs on a control node."""

    def __init__(self, directory: Path, redis_url: str, prefix: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {
            "OPENSLB_REDIS_URL": redis_url,
            "OPENSLB_REDIS_PREFIX": prefix,
            "OPENSLB_XDS_STATE_DIR": str(directory / "state"),  # its memory: this one's own
        }
        self.process: Process | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> XdsProcess:
        self.starts += 1
        argv = [
            SLB, "xds", "-vv" if os.environ.get("OPENSLB_XDS_DEBUG") else "-v",
            "--bind", self.address,
            "--metrics-bind", f"127.0.0.1:{self.metrics_port}",
        ]  # fmt: skip
        self.process = Process(f"xds-{self.starts}", argv, self.directory, env=self.env).start()
        wait_until(self._serving, 30, "slb xds")
        return self

    def _serving(self) -> bool:
        assert self.process is not None
        self.process.check_alive()
        return self.metric("openslb_xds_revision") >= 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, prefix: str) -> float:
        """The sum of every sample whose name (with labels) starts with `prefix`."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def log(self) -> str:
        assert self.process is not None
        return self.process.log_path.read_text(errors="replace")


class Bed:
    """Everything one test starts (backends, Envoys, the xDS server), stopped at the end."""

    def __init__(self, directory: Path, net: TestNet, redis_url: str, prefix: str) -> None:
        self.directory = directory
        self.net = net
        self.xds = XdsProcess(directory / "xds", redis_url, prefix)
        self.envoys: list[EnvoyProxy] = []
        self.servers: list[BackendServer] = []

    def backends(
        self,
        names: Iterable[str],
        *,
        first_host: int = 101,
        max_streams: int = 0,
        grpc_port: int = 50051,
        http_port: int = 8080,
        tls_port: int = 0,
        unhealthy: Iterable[str] = (),
    ) -> list[BackendServer]:
        """Backend processes on 198.19.N.first_host and up; `unhealthy` ones fail checks."""
        servers = []
        unhealthy = set(unhealthy)
        for i, name in enumerate(names):
            address = self.net.address(first_host + i)
            argv = [
                PYTHON, "-m", "devbed.samples", "grpc", "--name", name,
                "--grpc", f"{address}:{grpc_port}", "--http", f"{address}:{http_port}",
            ]  # fmt: skip
            if max_streams:
                argv += ["--max-streams", str(max_streams)]
            if tls_port:
                cert = self.directory / f"backend-{name}-tls.pem"
                argv += ["--tls-port", str(tls_port), "--tls-cert-out", str(cert)]
            if name in unhealthy:
                argv.append("--unhealthy")
            process = Process(
                f"backend-{name}", argv, self.directory, env={"PYTHONPATH": str(REPO)}
            )
            server = BackendServer(name, address, grpc_port, http_port, process)
            self.servers.append(server)
            servers.append(server)
            server.start()
        for server in servers:
            wait_until(server.ready, 30, f"backend {server.name}")
        return servers

    def envoy(
        self, node_id: str, *, group: str = "default", delta: bool = True, concurrency: int = 1,
        drain_time_s: int = 1, all_stats: bool = False,
    ) -> EnvoyProxy:  # fmt: skip
        """An Envoy bootstrapped for ADS from this bed's xDS server; returns once LIVE."""
        config = bootstrap(group, node_id, self.xds.address, delta=delta, stats_port=None,
                           all_stats=all_stats)  # fmt: skip
        proxy = EnvoyProxy(self.directory / node_id, config, concurrency=concurrency,
                           name=node_id, drain_time_s=drain_time_s)  # fmt: skip
        self.envoys.append(proxy)
        return proxy.start()

    def close(self) -> None:
        for proxy in self.envoys:
            proxy.stop()
        self.xds.stop()
        for server in self.servers:
            server.process.stop(timeout=5)

    def l4_envoy(self, listen: tuple[str, int], backends: list[BackendServer]) -> EnvoyProxy:
        """A plain TCP proxy balancing connections (as an L4 balancer does), for contrast."""
        tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        proxy = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": tcp, "stat_prefix": "l4", "cluster": "l4"},
        }
        cluster = {"name": "l4", "type": "STATIC", "lb_policy": "ROUND_ROBIN",
                   "load_assignment": _assignment("l4", backends)}  # fmt: skip
        return self._static_envoy("l4", listen, proxy, cluster)

    def default_envoy(self, listen: tuple[str, int], backends: list[BackendServer]) -> EnvoyProxy:
        """An HTTP/2 proxy to the backends with Envoy's defaults (circuit breakers of 1,024
        requests, no limit on streams per upstream connection), for contrast."""
        hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        manager = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": f"type.googleapis.com/{hcm}",
                "stat_prefix": "defaults",
                "route_config": {"virtual_hosts": [{
                    "name": "any", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "route": {"cluster": "echo", "timeout": "0s"}}],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/"
                                     "envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }  # fmt: skip
        cluster = {
            "name": "echo", "type": "STATIC",
            "typed_extension_protocol_options": {options: {
                "@type": f"type.googleapis.com/{options}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }},
            "load_assignment": _assignment("echo", backends),
        }  # fmt: skip
        return self._static_envoy("defaults", listen, manager, cluster)

    def _static_envoy(
        self,
        name: str,
        listen: tuple[str, int],
        network_filter: dict[str, Any],
        cluster: dict[str, Any],
    ) -> EnvoyProxy:
        """A hand-configured Envoy (no xDS): one listener with one network filter, one cluster."""
        listener = {"name": name, "address": _socket(*listen), "freebind": True,
                    "filter_chains": [{"filters": [network_filter]}]}  # fmt: skip
        config = {
            "node": {"id": name, "cluster": name},
            "static_resources": {"listeners": [listener], "clusters": [cluster]},
        }
        proxy = EnvoyProxy(self.directory / name, config, name=name)
        self.envoys.append(proxy)
        return proxy.start()


def _assignment(cluster: str, backends: list[BackendServer]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _socket(b.address, b.grpc_port)}} for b in backends]
    return {"cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}]}


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


# -- Envoy's view -------------------------------------------------------------------------


def cluster_hosts(envoy: EnvoyProxy, cluster: str) -> dict[str, dict[str, str]]:
    """Every host of one cluster with its statistics and flags (as text), from the admin
    /clusters page, by host:port."""
    hosts = read_clusters_page(envoy.admin("clusters").splitlines()).get(cluster, {})
    # the cluster's own lines (`default_priority::max_connections::1024`, ...) name no host
    return {host: stats for host, stats in hosts.items() if "cx_active" in stats}


def host_stats(envoy: EnvoyProxy, cluster: str, stat: str) -> dict[str, int]:
    """A per-host statistic of one cluster, from the admin /clusters page, by host:port."""
    return {
        host: int(stats[stat])
        for host, stats in cluster_hosts(envoy, cluster).items()
        if stat in stats
    }


def workers(envoy: EnvoyProxy) -> int:
    info = json.loads(envoy.admin("server_info"))
    return int(info["command_line_options"]["concurrency"])


def config_dump(envoy: EnvoyProxy) -> dict[str, Any]:
    return json.loads(envoy.admin("config_dump?include_eds"))  # type: ignore[no-any-return]


def dynamic_resources(envoy: EnvoyProxy) -> dict[str, dict[str, Any]]:
    """The listeners, clusters, routes, endpoints and secrets Envoy got over xDS and put
    in force (warming ones left out), by kind and name, without versions or timestamps."""
    out: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    for section in config_dump(envoy)["configs"]:
        for entry in section.get("dynamic_listeners", []):
            if "active_state" in entry:
                listener = entry["active_state"]["listener"]
                out["listeners"][listener["name"]] = listener
        for entry in section.get("dynamic_active_clusters", []):
            out["clusters"][entry["cluster"]["name"]] = entry["cluster"]
        for entry in section.get("dynamic_route_configs", []):
            out["routes"][entry["route_config"]["name"]] = entry["route_config"]
        for entry in section.get("dynamic_endpoint_configs", []):
            config = entry["endpoint_config"]
            out["endpoints"][config["cluster_name"]] = config
        for entry in section.get("dynamic_active_secrets", []):
            out["secrets"][entry["name"]] = entry["secret"]
    return dict(out)


# -- gRPC clients -------------------------------------------------------------------------


def channel(target: str, **options: Any) -> grpc.Channel:
    """A channel with a connection of its own (not shared with other channels)."""
    opts = [("grpc.use_local_subchannel_pool", 1), *options.items()]
    return grpc.insecure_channel(target, options=opts)


def aio_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def who(chan: grpc.Channel, timeout: float = 5.0) -> str:
    reply: bytes = chan.unary_unary(ECHO + "Who", **RAW)(b"", timeout=timeout)
    return reply.decode()


def wait_for_answer(
    target: str,
    expect: set[str] | None = None,
    timeout: float = 30.0,
    authority: str | None = None,
) -> float:
    """Poll until a gRPC call through `target` (for host `authority`, if given) succeeds,
    answered by one of `expect`."""
    options = {"grpc.default_authority": authority} if authority else {}

    def answered() -> bool:
        with channel(target, **options) as chan:
            try:
                name = who(chan, timeout=1)
            except grpc.RpcError:
                return False
            return expect is None or name in expect

    return wait_until(answered, timeout, f"a gRPC answer through {target}", interval=0.05)


def balance(target: str, calls: int, window: int = 50) -> collections.Counter[str]:
    """Unary calls over ONE client connection, `window` in flight; who answered each."""
    counts: collections.Counter[str] = collections.Counter()
    with channel(target) as chan:
        method = chan.unary_unary(ECHO + "Who", **RAW)
        done = 0
        while done < calls:
            batch = [method.future(b"", timeout=10) for _ in range(min(window, calls - done))]
            for future in batch:
                counts[future.result().decode()] += 1
            done += len(batch)
    return counts


class PeakSampler:
    """The highest values Envoy statistics reach while the block runs (sampled): `stat`
    overall, and per host of `cluster` its `host_stat` (from /clusters)."""

    def __init__(
        self,
        envoy: EnvoyProxy,
        stat: str,
        cluster: str = "",
        host_stat: str = "rq_active",
        interval: float = 0.1,
    ) -> None:
        self.envoy, self.stat, self.interval = envoy, stat, interval
        self.cluster, self.host_stat = cluster, host_stat
        self.value = 0
        self.hosts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                value = self.envoy.stats(f"^{re.escape(self.stat)}$").get(self.stat, 0)
                self.value = max(self.value, value)
                if self.cluster:
                    for host, n in host_stats(self.envoy, self.cluster, self.host_stat).items():
                        self.hosts[host] = max(self.hosts.get(host, 0), n)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    by_backend: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0


async def _load(
    target: str,
    *,
    connections: int,
    streams: int,
    method: str,
    payload: bytes,
    rounds: int,
    deadline_s: float,
    pause_ms: int,
    in_flight: int,
) -> LoadResult:
    result = LoadResult()
    channels = [aio_channel(target) for _ in range(connections)]
    slots = asyncio.Semaphore(in_flight or connections * streams)
    started = time.monotonic()
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))

        async def worker(chan: grpc.aio.Channel) -> None:
            call = chan.unary_unary(ECHO + method, **RAW)
            if pause_ms:
                await asyncio.sleep(random.uniform(0, pause_ms) / 1000)  # noqa: S311
            for _ in range(rounds):
                try:
                    async with slots:
                        reply = await call(payload, timeout=deadline_s)
                    result.ok += 1
                    result.by_backend[reply.decode()] += 1
                except grpc.aio.AioRpcError as exc:
                    result.failed += 1
                    result.errors[f"{exc.code().name}: {exc.details()}"] += 1
                if pause_ms:
                    await asyncio.sleep(pause_ms / 1000)

        await asyncio.gather(*(worker(c) for c in channels for _ in range(streams)))
    finally:
        result.seconds = time.monotonic() - started
        await asyncio.gather(*(c.close() for c in channels))
    return result


def load(
    target: str,
    *,
    connections: int,
    streams: int = 1,
    rounds: int = 1,
    hold_ms: int = 0,
    deadline_s: float = 60.0,
    pause_ms: int = 0,
    in_flight: int = 0,
) -> LoadResult:
    """`connections` client connections x `streams` concurrent calls each, `rounds` times.

    With `hold_ms`, each call stays in flight that long at the backend, so all
    connections x streams calls are in flight together; with `pause_ms`, each stream
    pauses that long between its calls, as clients with something else to do would;
    `in_flight` caps the calls in flight across all connections together.
    """
    method, payload = ("Hold", str(hold_ms).encode()) if hold_ms else ("Who", b"")
    return asyncio.run(
        _load(
            target,
            connections=connections,
            streams=streams,
            method=method,
            payload=payload,
            rounds=rounds,
            deadline_s=deadline_s,
            pause_ms=pause_ms,
            in_flight=in_flight,
        )
    )


@contextlib.contextmanager
def background_load(target: str, connections: int = 4, window: int = 8) -> Iterator[LoadResult]:
    """Steady unary calls from another process while the block runs; the result fills in
    when the block exits. Run in a subprocess so the test's own work cannot stall it."""
    out = Path(f"/tmp/openslb-load-{os.getpid()}-{time.monotonic_ns()}.json")  # noqa: S108
    argv = [PYTHON, "-m", "tests.l7.loadgen", target, str(out), str(connections), str(window)]
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = LoadResult()
    try:
        wait_until(lambda: out.with_suffix(".started").exists(), 30, "the load generator")
        yield result
    finally:
        proc.send_signal(2)
        proc.wait(60)
        data = json.loads(out.read_text())
        out.unlink()
        out.with_suffix(".started").unlink()
        result.ok, result.failed = data["ok"], data["failed"]
        result.by_backend.update(data["by_backend"])
        result.errors.update(data["errors"])
        result.seconds = data["seconds"]


# -- TLS clients --------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the tests compare the served certificate itself
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def tls_connect(address: str, port: int, sni: str | None) -> ssl.SSLSocket:
    """A TLS connection, handshake done, sending `sni` (None: no name); no verification."""
    raw = socket.create_connection((address, port), timeout=5)
    try:
        return _tls_context().wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def served_certificate(address: str, port: int, sni: str | None) -> tuple[bytes, str | None]:
    """The DER certificate a TLS listener presents for `sni`, and the ALPN it picked."""
    with tls_connect(address, port, sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der, tls.selected_alpn_protocol()


def https_get(address: str, port: int, host: str, path: str = "/") -> tuple[int, str]:
    """GET over TLS (HTTP/1.1) with SNI and Host `host`, connecting to `address`."""
    context = _tls_context()
    context.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection(address, port, timeout=5, context=context)
    conn.sock = context.wrap_socket(
        socket.create_connection((address, port), timeout=5), server_hostname=host
    )
    return _get(conn, host, path)


def http_get(address: str, port: int, host: str, path: str = "/") -> tuple[int, str]:
    return _get(http.client.HTTPConnection(address, port, timeout=5), host, path)


def _get(conn: http.client.HTTPConnection, host: str, path: str) -> tuple[int, str]:
    answer = _request(conn, "GET", host, path)
    return answer.status, answer.body


@dataclass(frozen=True)
class Answer:
    """An HTTP response as the client saw it, with what the sample backend saw if it
    was reached (its `x-seen` header: the path and every request header)."""

    status: int
    headers: dict[str, str]
    body: str

    @property
    def seen_path(self) -> str:
        return str(json.loads(self.headers["x-seen"])["path"])

    @property
    def seen_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in json.loads(self.headers["x-seen"])["headers"]]


def http_request(
    address: str,
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Answer:
    """One HTTP/1.1 request (from local address `source`, if given); redirects are not
    followed."""
    bind = (source, 0) if source is not None else None
    conn = http.client.HTTPConnection(address, port, timeout=5, source_address=bind)
    return _request(conn, method, host, path, headers)


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    host: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> Answer:
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read().decode()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def wait_programmed(
    store: Store, nodes: Iterable[str], revision: int, timeout: float = 30.0
) -> float:
    """Wait until every Envoy in `nodes` reports `revision` (or newer) programmed, no error."""
    board = StatusBoard(store)
    nodes = list(nodes)

    def programmed() -> bool:
        status = board.all("l7")
        return all(
            n in status and status[n].revision >= revision and status[n].error is None
            for n in nodes
        )

    return wait_until(programmed, timeout, f"{nodes} at revision {revision}", interval=0.02)
