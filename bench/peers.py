"""The L7 promise side by side: openslb's Envoy, nginx, HAProxy and an L4 balancer, one
worker each, the same backends and the same client, in one run on one machine.

    .venv/bin/python -m bench.peers [--requests 100000] [--rounds 3] [--replot]

- openslb: the Envoy `slb xds` programs for a GRPC listener (the product's configuration,
  not a hand-written one), `--concurrency 1`;
- nginx (Debian's nginx-light): `grpc_pass` with upstream keepalive, one worker;
- HAProxy (Debian's 2.6): `proto h2` on both sides, `http-reuse always`, one thread;
- L4: HAProxy in TCP mode, one thread (the lab VM's emulated IPVS would not compare fairly
  on speed; for balance an L4 balancer is an L4 balancer).

Throughput: `h2load` (one client thread) against 3 `nghttpd` h2c backends serving a
137-byte file, at 10, 1,000 and 5,000 concurrent streams (1, 100 and 500 connections of 10
streams). Per proxy and load: requests/s, failed requests (anything but a 2xx answer),
p50/p99 request time (h2load's per-request log), the most upstream connections per backend
(ESTABLISHED sockets to each backend, sampled every 50 ms), the proxy's CPU seconds per
10,000 requests and its resident memory. Balance: 3,000 gRPC calls on ONE client connection
(50 in flight) to the project's grpcio samples, which answer their names: each backend's
share. Mixed in: one 30 s server stream (a message every 100 ms) through each proxy,
opened before its loads and held across them: whether it ends whole, and the longest wait
between two messages.

Every proxy is measured in each of 3 rounds, the order turned a step each round; each
figure is the median of its rounds (failures summed; the balance and the long stream:
the worst round's; every round's figures are written too). Writes
bench/results/peers.json and the plots in docs/bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench import results_file
from bench.procstat import cpu_seconds, rss_kib
from bench.results_file import metric
from devbed import l7harness as harness
from devbed.process import Process, connects, wait_until
from devbed.redis import RedisServer
from slb.snapshot import Put
from slb.storage.store import Store

REPO = Path(__file__).resolve().parents[1]
PLOTS = REPO / "docs" / "bench"
PROXIES = ("openslb", "nginx", "haproxy", "l4")
LOADS = {10: (1, 10), 1000: (100, 10), 5000: (500, 10)}  # streams: (connections, streams each)
TPUT_PORT, BALANCE_PORT = 50051, 50061
BODY = b"x" * 137
UPSTREAM_STREAMS = 100  # the most streams a backend takes on one connection (RFC 9113's floor)
STREAM_S, STREAM_EVERY_MS = 30, 100  # the long stream mixed into each proxy's loads


def log(message: str) -> None:
    print(f"[bench.peers] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    proxy: str
    streams: int
    requests: int
    rps: float
    failed: int
    p50_ms: float
    p99_ms: float
    upstream_conns_most: int  # per backend, the most seen at once
    upstream_conns: dict[str, int]  # per backend, the most seen
    cpu_s_per_10k: float
    rss_mb: float


@dataclass
class Balance:
    proxy: str
    shares: dict[str, float] = field(default_factory=dict)  # backend -> percent of calls

    @property
    def spread_pts(self) -> float:
        return max(self.shares.values()) - min(self.shares.values())


@dataclass
class LongStream:
    """The 30 s stream held open across one proxy's loads."""

    proxy: str
    expected: int  # messages the backend sends
    received: int = 0  # in order, each the next one
    error: str = ""  # the call's status if it ended badly
    longest_gap_ms: float = 0.0  # the backend sends one every STREAM_EVERY_MS

    @property
    def whole(self) -> bool:
        return not self.error and self.received == self.expected


# -- the peers' configurations --------------------------------------------------------------


def nginx_conf(directory: Path, vip: str, tput: list[str], balance: list[str]) -> str:
    """One worker; upstream keepalive, as nginx's docs advise for grpc_pass; no access log."""

    def upstream(name: str, backends: list[str]) -> str:
        servers = " ".join(f"server {b};" for b in backends)
        return f"upstream {name} {{ {servers} keepalive 1024; keepalive_requests 1000000; }}"

    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 1000;
  {upstream("tput", tput)}
  {upstream("balance", balance)}
  server {{ listen {vip}:{TPUT_PORT} http2; location / {{ grpc_pass grpc://tput; }} }}
  server {{ listen {vip}:{BALANCE_PORT} http2; location / {{ grpc_pass grpc://balance; }} }}
}}
"""


def haproxy_conf(vip: str, tput: list[str], balance: list[str], mode: str) -> str:
    """One thread; `proto h2` both sides and `http-reuse always` (HTTP), or plain TCP."""
    proto = " proto h2" if mode == "http" else ""
    reuse = "  http-reuse always\n" if mode == "http" else ""

    def section(name: str, port: int, backends: list[str]) -> str:
        servers = "".join(f"  server s{i} {b}{proto}\n" for i, b in enumerate(backends))
        return (f"listen {name}\n  bind {vip}:{port}{proto}\n  balance roundrobin\n"
                f"{reuse}{servers}")  # fmt: skip

    return (
        "global\n  nbthread 1\n  maxconn 9000\n"
        f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        + section("tput", TPUT_PORT, tput)
        + section("balance", BALANCE_PORT, balance)
    )


# -- measuring ----------------------------------------------------------------------------


def group_pids(leader: int) -> list[int]:
    """The processes of `leader`'s process group (nginx: master and worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == leader:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def rss_mb(pids: list[int]) -> float:
    """The processes' resident memory together, MiB (a process gone meanwhile counts nothing)."""
    kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            kib += rss_kib(pid)[0]
    return kib / 1024


def _split(backend: str) -> tuple[str, int]:
    host, port = backend.rsplit(":", 1)
    return host, int(port)


def _hex_address(address: str, port: int) -> str:
    """/proc/net/tcp's form of an IPv4 address and port."""
    octets = [int(o) for o in address.split(".")]
    return "".join(f"{o:02X}" for o in reversed(octets)) + f":{port:04X}"


class UpstreamConns:
    """The most ESTABLISHED connections to each backend seen at once, sampled."""

    def __init__(self, backends: list[str], interval: float = 0.05) -> None:
        self.by_hex = {_hex_address(*_split(b)): b for b in backends}
        self.most = dict.fromkeys(backends, 0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UpstreamConns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = dict.fromkeys(self.most, 0)
            with open("/proc/net/tcp") as table:
                next(table)
                for line in table:
                    parts = line.split(None, 4)
                    backend = self.by_hex.get(parts[2])
                    if backend is not None and parts[3] == "01":  # remote; ESTABLISHED
                        now[backend] += 1
            for backend, count in now.items():
                self.most[backend] = max(self.most[backend], count)


def h2load(url: str, requests: int, connections: int, streams: int, log_file: Path) -> str:
    argv = ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams),
            "-t", "1", "-T", "30", "-H", "content-type: application/grpc",
            "--log-file", str(log_file), url]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout


def parse_h2load(out: str) -> tuple[float, int, int]:
    """req/s, requests done, requests answered 2xx."""
    rps = done = ok = 0.0
    for line in out.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            done = int(line.split(",")[0].split()[1])  # "requests: N total"
        elif line.startswith("status codes:"):
            ok = int(line.split(":")[1].split(",")[0].split()[0])
    return rps, int(done), int(ok)


def request_times_ms(log_file: Path) -> list[float]:
    """h2load's per-request log: start (us), status, duration (us)."""
    times = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            times.append(int(parts[2]) / 1000)
    return times


# -- the bed ------------------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    vip: str
    leader: int  # the pid whose process group is the proxy
    config: str
    stop: Callable[[], None]


class Bed:
    """Backends, the four proxies, and where each listens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.net = harness.TestNet().create()
        self.redis = RedisServer(root / "redis").start()
        self.l7 = harness.Bed(root / "l7", self.net, self.redis.url, "peers")
        self.processes: list[Process] = []
        self.tput: list[str] = []
        self.balance: list[str] = []

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.l7.close()
        self.redis.stop()
        self.net.delete()

    def _process(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.root).start()
        self.processes.append(process)
        return process

    def start_backends(self) -> None:
        docroot = self.root / "doc"
        docroot.mkdir()
        (docroot / "f").write_bytes(BODY)
        for i in range(3):
            address = self.net.address(171 + i)
            self._process(f"nghttpd-{i + 1}", ["nghttpd", "--no-tls", "-a", address,
                                               "-d", str(docroot), str(TPUT_PORT)])  # fmt: skip
            self.tput.append(f"{address}:{TPUT_PORT}")
        grpc = self.l7.backends(["b1", "b2", "b3"], first_host=181)
        self.balance = [f"{b.address}:{b.grpc_port}" for b in grpc]
        for backend in self.tput:
            wait_until(lambda b=backend: connects(*_split(b)), 10, f"nghttpd {backend}")  # type: ignore[misc]

    access_log = False  # openslb's listeners: the product's default, off
    all_stats = False  # openslb's Envoy keeps the statistics it charts: the default
    envoy_workers = 1  # openslb's Envoy's --concurrency: one worker, as each peer has

    def start(self, name: str) -> Proxy:
        """Start one proxy (the others are stopped, so every upstream connection is its)."""
        if name == "openslb":
            return self._start_openslb()
        if name == "nginx":
            return self._start_nginx()
        return self._start_haproxy(name, 35 if name == "haproxy" else 36,
                                   "http" if name == "haproxy" else "tcp")  # fmt: skip

    def _start_openslb(self) -> Proxy:
        vip = self.net.address(33)
        store = Store(self.redis.client(), prefix="peers")
        backends = [_split(b) for b in (*self.tput, *self.balance)]
        store.apply([
            Put(harness.load_balancer("lb", vip)),
            Put(harness.service("tput", backends[:3])),
            Put(harness.service("balance", backends[3:])),
            Put(harness.listener("tput", "GRPC", TPUT_PORT, access_log=self.access_log)),
            Put(harness.listener("balance", "GRPC", BALANCE_PORT, access_log=self.access_log)),
        ])  # fmt: skip
        self.l7.xds.start()
        envoy = self.l7.envoy("openslb", concurrency=self.envoy_workers,
                              all_stats=self.all_stats)  # fmt: skip
        harness.wait_for_answer(f"{vip}:{BALANCE_PORT}")
        config = (f"Envoy 1.40 --concurrency {self.envoy_workers}, programmed by slb xds: "
                  "two GRPC listeners")  # fmt: skip

        def stop() -> None:  # the next round starts both afresh
            envoy.stop()
            self.l7.xds.stop()

        return Proxy("openslb", vip, envoy.process.pid, config, stop)

    def _start_nginx(self) -> Proxy:
        vip = self.net.address(34)
        directory = self.root / "nginx"
        (directory / "body").mkdir(parents=True, exist_ok=True)
        (directory / "proxy").mkdir(exist_ok=True)
        conf = nginx_conf(directory, vip, self.tput, self.balance)
        (directory / "nginx.conf").write_text(conf)
        process = self._process("nginx", ["nginx", "-p", str(directory), "-c",
                                          str(directory / "nginx.conf")])  # fmt: skip
        wait_until(lambda: process.check_alive() and connects(vip, BALANCE_PORT), 10, "nginx")
        return Proxy("nginx", vip, process.pid, conf, process.stop)

    def _start_haproxy(self, name: str, host: int, mode: str) -> Proxy:
        vip = self.net.address(host)
        conf = haproxy_conf(vip, self.tput, self.balance, mode)
        path = self.root / f"{name}.cfg"
        path.write_text(conf)
        process = self._process(name, ["haproxy", "-db", "-f", str(path)])
        wait_until(lambda: process.check_alive() and connects(vip, BALANCE_PORT), 10, name)
        return Proxy(name, vip, process.pid, conf, process.stop)


@contextmanager
def bed() -> Iterator[Bed]:
    b = Bed(Path(tempfile.mkdtemp(prefix="bench-peers-")))
    try:
        b.start_backends()
        yield b
    finally:
        b.close()


def throughput(b: Bed, proxy: Proxy, streams: int, requests: int) -> Run:
    connections, per_connection = LOADS[streams]
    url = f"http://{proxy.vip}:{TPUT_PORT}/f"
    log_file = b.root / f"h2load-{proxy.name}-{streams}.log"
    pids = group_pids(proxy.leader)
    cpu_before = cpu_seconds(pids)
    with UpstreamConns(b.tput) as conns:
        out = h2load(url, requests, connections, per_connection, log_file)
    cpu = cpu_seconds(pids) - cpu_before
    rps, done, ok = parse_h2load(out)
    times = sorted(request_times_ms(log_file))
    return Run(
        proxy=proxy.name, streams=streams, requests=requests, rps=rps,
        failed=requests - ok if done else requests,
        p50_ms=round(statistics.median(times), 2) if times else 0.0,
        p99_ms=round(results_file.percentile(times, 99), 2) if times else 0.0,
        upstream_conns_most=max(conns.most.values()), upstream_conns=dict(conns.most),
        cpu_s_per_10k=round(cpu / (requests / 10_000), 3), rss_mb=round(rss_mb(pids), 1),
    )  # fmt: skip


def medians(every: list[Run]) -> list[Run]:
    """One Run per proxy and load: the median of its rounds' figures (failures summed)."""
    out = []
    for key in dict.fromkeys((r.proxy, r.streams) for r in every):
        mine = [r for r in every if (r.proxy, r.streams) == key]

        def mid(field_: str, rounded: int = 2, runs: list[Run] = mine) -> float:
            return round(float(statistics.median(getattr(r, field_) for r in runs)), rounded)

        upstream = {b: round(statistics.median(r.upstream_conns[b] for r in mine))
                    for b in mine[0].upstream_conns}  # fmt: skip
        out.append(Run(
            proxy=key[0], streams=key[1], requests=sum(r.requests for r in mine),
            rps=mid("rps"), failed=sum(r.failed for r in mine),
            p50_ms=mid("p50_ms"), p99_ms=mid("p99_ms"),
            upstream_conns_most=round(statistics.median(r.upstream_conns_most for r in mine)),
            upstream_conns=upstream,
            cpu_s_per_10k=mid("cpu_s_per_10k", 3), rss_mb=mid("rss_mb", 1),
        ))  # fmt: skip
    return out


def balance(b: Bed, proxy: Proxy, calls: int = 3000) -> Balance:
    counts = harness.balance(f"{proxy.vip}:{BALANCE_PORT}", calls)
    names = ("b1", "b2", "b3")
    return Balance(proxy.name, {n: round(counts[n] / calls * 100, 2) for n in names})


@contextmanager
def long_stream(proxy: Proxy) -> Iterator[LongStream]:
    """A server stream through `proxy`'s balance listener for STREAM_S, open (its first
    message in) when the block starts; it is waited for when the block ends."""
    result = LongStream(proxy.name, STREAM_S * 1000 // STREAM_EVERY_MS + 1)
    started = threading.Event()

    def run() -> None:
        request = f"{result.expected},{STREAM_EVERY_MS}".encode()
        with harness.channel(f"{proxy.vip}:{BALANCE_PORT}") as chan:
            call = chan.unary_stream(harness.ECHO + "Stream", **harness.RAW)
            last = time.monotonic()
            try:
                for message in call(request, timeout=STREAM_S + 30):
                    now = time.monotonic()
                    if result.received:
                        gap = (now - last) * 1000
                        result.longest_gap_ms = round(max(result.longest_gap_ms, gap), 1)
                    last = now
                    if not message.endswith(f" {result.received}".encode()):
                        result.error = f"message {result.received} out of order: {message!r}"
                        return
                    result.received += 1
                    started.set()
            except grpc.RpcError as e:
                result.error = f"{e.code().name}: {e.details()}"
            finally:
                started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield result
    finally:
        thread.join(STREAM_S + 40)
        if thread.is_alive():
            result.error = result.error or "still open 40 s after it should have ended"


# -- plots --------------------------------------------------------------------------------


def plot(runs: list[Run], every: list[Run], balances: list[Balance]) -> list[Path]:
    """Three PNGs drawn from this run's figures: the medians, and for requests/s each
    round's range as a whisker."""
    PLOTS.mkdir(parents=True, exist_ok=True)
    loads = sorted(LOADS)
    width = 0.2
    paths = []

    def grouped(ax: Axes, value: str, log_scale: bool = False, ranges: bool = False) -> None:
        for i, name in enumerate(PROXIES):
            mine = {r.streams: getattr(r, value) for r in runs if r.proxy == name}
            xs = [j + (i - 1.5) * width for j in range(len(loads))]
            heights = [mine.get(s, 0) for s in loads]
            ax.bar(xs, heights, width, label=name)
            if ranges:
                each = [[getattr(r, value) for r in every if (r.proxy, r.streams) == (name, s)]
                        for s in loads]  # fmt: skip
                low = [h - min(v, default=h) for h, v in zip(heights, each, strict=True)]
                high = [max(v, default=h) - h for h, v in zip(heights, each, strict=True)]
                ax.errorbar(xs, heights, yerr=[low, high], fmt="none", capsize=3, ecolor="black")
        ax.set_xticks(range(len(loads)), [f"{s:,} streams" for s in loads])
        if log_scale:
            ax.set_yscale("log")
        ax.legend()

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    grouped(top, "rps", ranges=True)
    top.set_ylabel("requests/s (one worker)")
    rounds = len(every) // max(len(runs), 1)  # each proxy and load has one Run a round
    top.set_title(f"Throughput (median of {rounds} rounds; whiskers: slowest to fastest) "
                  "and failures,\nh2load against 3 nghttpd backends")  # fmt: skip
    grouped(bottom, "failed")
    bottom.set_ylim(0, max(10, *(r.failed for r in runs)) * 1.1)
    bottom.set_ylabel("failed requests")
    paths.append(_save(fig, "peers-throughput.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    grouped(ax, "upstream_conns_most", log_scale=True)
    ax.set_ylabel("most upstream connections to one backend")
    ax.set_title("Upstream connections per backend (log scale)")
    paths.append(_save(fig, "peers-upstream.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, backend in enumerate(("b1", "b2", "b3")):
        xs = [j + (i - 1) * 0.25 for j in range(len(balances))]
        ax.bar(xs, [bal.shares[backend] for bal in balances], 0.25, label=backend)
    ax.set_xticks(range(len(balances)), [bal.proxy for bal in balances])
    ax.set_ylabel("% of 3,000 calls on one connection")
    ax.set_title("Each backend's share of one client connection's calls")
    ax.legend()
    paths.append(_save(fig, "peers-share.png"))
    return paths


def replot() -> list[Path]:
    """The plots of the run bench/results/peers.json holds, drawn again (nothing measured)."""
    setup = json.loads((results_file.RESULTS / "peers.json").read_text())["setup"]
    balances = worst([Balance(b["proxy"], b["shares"]) for b in setup["balance"]])
    return plot([Run(**r) for r in setup["runs"]], [Run(**r) for r in setup["every_run"]],
                balances)  # fmt: skip


def worst(balances: list[Balance]) -> list[Balance]:
    """Each proxy's least even round, in the order the proxies first ran."""
    names = dict.fromkeys(b.proxy for b in balances)
    return [max((b for b in balances if b.proxy == n), key=lambda b: b.spread_pts) for n in names]


def _save(fig: Figure, name: str) -> Path:
    path = PLOTS / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure(
    args: argparse.Namespace, names: list[str]
) -> tuple[list[Run], list[Balance], list[LongStream], dict[str, str]]:
    """Each round, each proxy in turn (the order turned a step each round): its loads with
    the long stream open across them, then its balance."""
    every: list[Run] = []
    balances: list[Balance] = []
    long_streams: list[LongStream] = []
    configs: dict[str, str] = {}
    with bed() as b:
        b.access_log = args.access_log
        b.all_stats = args.all_stats
        b.envoy_workers = args.envoy_workers
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                log(f"round {round_ + 1} of {args.rounds}: {name}")
                proxy = b.start(name)
                configs[name] = proxy.config
                with long_stream(proxy) as stream:
                    for streams in sorted(LOADS):
                        requests = args.requests if streams > 10 else args.requests // 5
                        run = throughput(b, proxy, streams, requests)
                        every.append(run)
                        log(f"{name} at {streams:>5} streams: {run.rps:>9,.0f} req/s, "
                            f"{run.failed} failed, p50 {run.p50_ms} ms, p99 {run.p99_ms} ms, "
                            f"upstream {run.upstream_conns}, {run.cpu_s_per_10k} CPU s/10k, "
                            f"{run.rss_mb} MiB")  # fmt: skip
                    balances.append(balance(b, proxy))
                    log(f"{name}: one connection's 3,000 calls: {balances[-1].shares}")
                long_streams.append(stream)
                log(f"{name}: the {STREAM_S} s stream: {stream.received} of {stream.expected} "
                    f"messages, longest gap {stream.longest_gap_ms} ms {stream.error}")  # fmt: skip
                proxy.stop()
    return every, balances, long_streams, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--only", choices=PROXIES, nargs="+",
                        help="Measure only these (a trial: nothing is written)")  # fmt: skip
    parser.add_argument("--access-log", action="store_true",
                        help="openslb logs every request (a trial)")  # fmt: skip
    parser.add_argument("--all-stats", action="store_true",
                        help="openslb's Envoy keeps every statistic (a trial)")  # fmt: skip
    parser.add_argument("--envoy-workers", type=int, default=1,
                        help="openslb's Envoy runs this many workers (a trial)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds of every proxy, the order turned each round; the "
                             "figures are each one's medians")  # fmt: skip
    parser.add_argument("--replot", action="store_true",
                        help="Draw the plots again from bench/results/peers.json")  # fmt: skip
    args = parser.parse_args()
    if args.replot:
        log(f"drew {[str(p) for p in replot()]}")
        return
    names = list(args.only or PROXIES)
    every, balances, long_streams, configs = measure(args, names)
    runs = medians(every)
    for run in runs:
        log(f"median: {run.proxy} at {run.streams:>5} streams: {run.rps:>9,.0f} req/s, "
            f"p99 {run.p99_ms} ms, {run.cpu_s_per_10k} CPU s/10k")  # fmt: skip
    if args.only or args.access_log or args.all_stats or args.envoy_workers != 1:
        return  # a trial: the published figures are the product's defaults, every proxy
    by = {(r.proxy, r.streams): r for r in runs}
    least_even = worst(balances)
    spread = {bal.proxy: bal.spread_pts for bal in least_even}
    # openslb's targets: no failure; upstream connections at most in flight / 100 per
    # backend and no more than HAProxy's; req/s at least nginx's and half HAProxy's
    conns_target = min(-(-1000 // 3 // UPSTREAM_STREAMS), by["haproxy", 1000].upstream_conns_most)
    rps_target = round(max(by["nginx", 1000].rps, 0.5 * by["haproxy", 1000].rps))
    metrics = {}
    for name in ("openslb", "nginx", "haproxy"):
        ours = name == "openslb"
        metrics[f"{name}_failed_at_5000"] = metric(
            by[name, 5000].failed, "requests", 0 if ours else None
        )
        metrics[f"{name}_upstream_conns_at_1000"] = metric(
            by[name, 1000].upstream_conns_most, "connections per backend",
            conns_target if ours else None,
        )  # fmt: skip
        metrics[f"{name}_rps_at_1000"] = metric(
            by[name, 1000].rps, "req/s", rps_target if ours else None
        )
    for name in names:
        mine = [st for st in long_streams if st.proxy == name]
        metrics[f"{name}_long_stream_failed"] = metric(
            sum(not st.whole for st in mine), "streams", 0 if name == "openslb" else None
        )
        metrics[f"{name}_long_stream_longest_gap_ms"] = metric(
            max(st.longest_gap_ms for st in mine), "ms"
        )
    metrics["openslb_share_spread_pts"] = metric(spread["openslb"], "pts", 5.0)
    metrics["l4_share_spread_pts"] = metric(spread["l4"], "pts")
    plots = plot(runs, every, least_even)
    for name, entry in metrics.items():
        log(f"{name}: {entry['value']} {entry['unit']} (target {entry['target']})")
    path = results_file.write(
        "peers",
        metrics,
        setup={
            "client": "h2load, one thread; connections of 10 streams",
            "backends": "3 nghttpd --no-tls serving 137 bytes; balance: 3 grpcio samples",
            "rounds": args.rounds,
            "runs": [asdict(r) for r in runs],
            "every_run": [asdict(r) for r in every],
            "balance": [
                {"proxy": bal.proxy, "shares": bal.shares, "spread_pts": bal.spread_pts}
                for bal in balances
            ],
            "long_stream": {
                "seconds": STREAM_S,
                "every_ms": STREAM_EVERY_MS,
                "by_proxy": [asdict(st) | {"whole": st.whole} for st in long_streams],
            },
            "configs": configs,
            "plots": [str(p.relative_to(REPO)) for p in plots],
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
