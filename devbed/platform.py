"""`slb dev up|down|status`: the whole platform as long-running local processes.

Each component is started by the same test-bed classes the tests use, detached into its
own session so it outlives the command, and recorded in `state.json` (pids, address, log).
Ports are picked once and kept in `ports.json`, so a component that died comes back where
the others expect it. `up` is idempotent: what is recorded and alive is left alone, the
rest is started; if Redis or the cluster has to start, everything is started afresh (Redis
replays its AOF; the cluster starts empty and the demo applies its apps again).

Kubernetes is a real one-node cluster (devbed/cluster.py), run by a process of its own
(devbed/clusterd.py) that owns it: the cluster's API server picks its own free ports, which
its record (kube/node.json) holds. Only one such cluster runs on a machine at a time (its
bridges have fixed names), so only one platform does.

Addresses: the VIP pool and the gRPC samples' network are made local on the host's
loopback (`ip route add local CIDR dev lo`, Linux's AnyIP), so the host's Envoy binds the
L7 VIPs and the samples bind their own addresses without any interface; the lab VM is
LB node `lb1` of node group `lab`, with IPVS, a client and three TCP pods inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cmi.k8s.client import KubeClient
from devbed import clusterd, demo
from devbed.cluster import NODE_NAME, POD_CIDR
from devbed.clusterd import RunningNode
from devbed.envoy import EnvoyProxy
from devbed.labnode import POD_PORT, LabNode
from devbed.process import Process, connects, free_port, wait_until
from devbed.redis import RedisServer
from slb.config import RedisSettings, host_port
from slb.model import AddressPool, LBNode, NodeGroup
from slb.storage.secrets import add_key
from slb.storage.store import Store

Progress = Callable[[str], None]

PREFIX = "openslb"
LAB_NODE, LAB_GROUP = "lb1", "lab"
SAMPLES = ("echo-1", "echo-2", "echo-3")
SAMPLE_PORT = 50051
SLOW_STARTS = {"lab-node": " (the emulated VM boots and starts its worker: about 90 s)"}
PORTS = ("redis", "xds", "xds_metrics", "envoy_admin", "console")
CLUSTER_STOP_S = 120.0
"""The cluster's own process deletes the pods and waits for them before it stops the rest."""


@dataclass
class Component:
    name: str
    pids: list[int]
    address: str
    log: str
    detail: str = ""

    def alive(self) -> bool:
        return bool(self.pids) and all(_alive(pid) for pid in self.pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own exited child) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def sample_addresses(sample_cidr: str) -> list[str]:
    """The gRPC samples' addresses: the 11th, 12th, ... host of the sample network."""
    network = ipaddress.ip_network(sample_cidr)
    return [str(network.network_address + 11 + i) for i in range(len(SAMPLES))]


class DevPlatform:
    """The components of the local platform, their state kept under `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        vip_cidr: str = "198.18.200.0/24",
        sample_cidr: str = "198.18.201.0/24",
        lab: bool = True,
        tuning: dict[str, dict[str, str | int | bool]] | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.state_file = self.state_dir / "state.json"
        self.vip_cidr, self.sample_cidr, self.lab = vip_cidr, sample_cidr, lab
        self.tuning = tuning or {}  # settings over the platform's own, e.g. for tests
        self._env: dict[str, str] = {}  # over the settings of the next `slb` started

    # -- recorded state -------------------------------------------------------------------

    def components(self) -> dict[str, Component]:
        if not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {name: Component(**value) for name, value in raw.items()}

    def _save(self, components: dict[str, Component]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps({name: asdict(c) for name, c in components.items()}, indent=2)
        )

    def ports(self) -> dict[str, int]:
        """Every port of the platform, picked once (free at the time) and then kept."""
        path = self.state_dir / "ports.json"
        ports: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        missing = [name for name in PORTS if name not in ports]
        if missing:
            ports.update({name: free_port() for name in missing})
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ports, indent=2))
        return ports

    @property
    def config_file(self) -> Path:
        """Settings pointing `slb` at this platform: `slb --config FILE ...`."""
        return self.state_dir / "openslb.toml"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports()['redis']}/0"

    def store(self) -> Store:
        return Store.connect(RedisSettings(url=self.redis_url, prefix=PREFIX))

    @property
    def cluster_dir(self) -> Path:
        """The one-node cluster's state: certificates, logs, its record, kubeconfigs."""
        return self.state_dir / "kube"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.cluster_dir / "kubeconfig"

    @property
    def console_password_file(self) -> Path:
        return self.state_dir / "console-admin-password"

    def lab_node(self) -> LabNode:
        """The lab VM as LB node lb1 (probes go through Redis, so any process can ask)."""
        return LabNode(self.state_dir / "lab", self.redis_url, PREFIX, node=LAB_NODE)

    # -- up / down ------------------------------------------------------------------------

    def up(self, progress: Progress) -> dict[str, Component]:
        components = self.components()
        foundation = ("redis", "kubernetes")
        if components and not all(
            name in components and components[name].alive() for name in foundation
        ):
            progress("redis or kubernetes is down: restarting everything")
            self._stop_all(components, progress)
            components = {}
        self.ports()
        self._routes(add=True)
        starters: list[tuple[str, Callable[[], Component]]] = [
            ("redis", self._start_redis),
            ("kubernetes", self._start_cluster),
            ("samples", self._start_samples),
            ("xds", self._start_xds),
            ("envoy", self._start_envoy),
            ("envoy-stats", self._start_envoy_stats),
            ("cmi", self._start_cmi),
            ("worker-control", self._start_control_worker),
        ]
        if self.lab:
            starters.append(("lab-node", self._start_lab_node))
        starters.append(("console", self._start_console))
        for name, start in starters:
            current = components.get(name)
            if current is not None and current.alive():
                progress(f"{name}: already running (pid {', '.join(map(str, current.pids))})")
                continue
            if current is not None:
                self._stop_component(current)
            began = time.monotonic()
            progress(f"{name}: starting{SLOW_STARTS.get(name, '')}")
            components[name] = start()
            self._save(components)
            progress(f"{name}: up at {components[name].address} ({time.monotonic() - began:.1f} s)")
        return components

    def apps(self) -> list[demo.SampleApp]:
        grpc_echo = demo.SampleApp("grpc-echo", SAMPLE_PORT, sample_addresses(self.sample_cidr),
                                   app_protocol="kubernetes.io/h2c")  # fmt: skip
        if not self.lab:
            return [grpc_echo]
        pods = [host_port(a, "pod address")[0] for a in self.lab_node().pod_addresses]
        return [grpc_echo, demo.SampleApp("tcp-echo", POD_PORT, pods, node_group=LAB_GROUP)]

    def deployments(self) -> list[demo.DeploymentApp]:
        """The apps the cluster runs: Deployments of 3 pods each, Services with selectors;
        with the lab VM, one behind its IPVS too."""
        apps = [demo.DeploymentApp("grpc-pods", "grpc", SAMPLE_PORT),
                demo.DeploymentApp("http-pods", "http", 80)]  # fmt: skip
        if self.lab:
            apps.append(demo.DeploymentApp("tcp-pods", "tcp", POD_PORT, node_group=LAB_GROUP))
        return apps

    @property
    def cluster(self) -> RunningNode:
        """The platform's one-node cluster (`.kubeconfig`, `.client()`), from its record."""
        node = RunningNode.read(self.cluster_dir)
        if node is None:
            raise RuntimeError(f"no cluster runs for {self.state_dir}: slb dev up starts it")
        return node

    def kube(self) -> KubeClient:
        """The platform's API server, as its admin."""
        return KubeClient.from_kubeconfig(str(self.admin_kubeconfig))

    def show_traffic(self, progress: Progress, timeout: float = 180.0) -> list[str]:
        """Expose the demo apps by label and send traffic through their VIPs; a report.

        Raises if a Service is not programmed in time or its VIP does not answer (for a
        Deployment: by every one of its pods).
        """
        kube = self.kube()
        apps: list[demo.SampleApp | demo.DeploymentApp] = [*self.apps(), *self.deployments()]
        # the lab VM's app last: its first apply, in the emulated VM, is the slowest
        apps.sort(key=lambda a: a.node_group == LAB_GROUP)
        progress("demo: exposing " + ", ".join(f"{demo.NAMESPACE}/{a.name}" for a in apps))
        began = time.monotonic()
        demo.apply(kube, apps)
        report, ready_pods = [], {}
        for app in apps:
            pods = None
            if isinstance(app, demo.DeploymentApp):
                pods = demo.wait_rolled_out(kube, app, timeout)
            exposed = demo.wait_programmed(kube, app.name, timeout)
            target = f"{exposed.vip}:{app.port}"
            answers, how = self._traffic(app, target, pods)
            if any(x.startswith("error") for x in answers):
                raise RuntimeError(f"{demo.NAMESPACE}/{app.name} at {target}: {answers}")
            if pods is not None and set(answers) != set(pods):
                raise RuntimeError(f"{demo.NAMESPACE}/{app.name} at {target}: answered by "
                                   f"{sorted(set(answers))}, not by its pods {pods}")  # fmt: skip
            seconds = time.monotonic() - began
            report.append(f"{demo.NAMESPACE}/{app.name}: VIP {target} ({how}), answering "
                          f"{seconds:.1f} s after the apply")  # fmt: skip
            if pods is not None:
                report.append(f"    pods ready: {' '.join(pods)}")
            report.append(f"    answered by: {' '.join(answers)}")
            report.append(f"    status: {exposed.conditions[demo.PROGRAMMED][2]}")
            ready_pods[app.name] = pods
        gateway = demo.GatewayApp(grpc_backend="grpc-pods", grpc_backend_port=SAMPLE_PORT)
        return report + self._gateway_traffic(gateway, ready_pods, timeout)

    def _gateway_traffic(
        self, gateway: demo.GatewayApp, ready_pods: dict[str, list[str] | None], timeout: float
    ) -> list[str]:
        """The Gateway API's way to the same pods: a Gateway, an HTTPRoute and a GRPCRoute
        on one port; a report."""
        kube = self.kube()
        began = time.monotonic()
        demo.apply(kube, [gateway])
        target = gateway.wait_address(kube, timeout)
        pods = set(ready_pods.get(gateway.backend) or ())
        answers = demo.eventually(lambda: gateway.who(target, 6), lambda a: set(a) == pods, 60)
        if set(answers) != pods:
            raise RuntimeError(f"Gateway {demo.NAMESPACE}/{gateway.name} at {target}: {answers}")
        report = [
            f"{demo.NAMESPACE}/{gateway.name} (Gateway API): address {target}, HTTPRoute "
            f"{gateway.route} sends {gateway.path} to Service {gateway.backend} (HTTP through "
            f"Envoy, 6 requests), answering {time.monotonic() - began:.1f} s after the apply",
            f"    answered by: {' '.join(answers)}",
        ]
        if gateway.grpc_backend is not None:
            pods = set(ready_pods.get(gateway.grpc_backend) or ())
            calls = demo.eventually(
                lambda: gateway.grpc_who(target, 6), lambda a: set(a) == pods, 60
            )
            if set(calls) != pods:
                raise RuntimeError(f"GRPCRoute {gateway.grpc_route} at {target}: {calls}")
            report += [
                f"    GRPCRoute {gateway.grpc_route} sends gRPC Echo calls on the same port to "
                f"Service {gateway.grpc_backend} (6 calls on one HTTP/2 connection)",
                f"    answered by: {' '.join(calls)}",
            ]
        return report

    def _traffic(
        self, app: demo.SampleApp | demo.DeploymentApp, target: str, pods: list[str] | None
    ) -> tuple[list[str], str]:
        """Who answers connections or calls to `target`, from where the app's clients are."""
        if app.node_group == LAB_GROUP:
            node = self.lab_node()
            answers = demo.eventually(
                lambda: node.tcp(target, count=6),
                lambda a: set(a) == set(pods) if pods is not None
                else not any(x.startswith("error") for x in a), 60,
            )  # fmt: skip
            to = "a Deployment's pods" if pods is not None else "the VM's own TCP pods"
            return (
                answers,
                f"TCP through IPVS on {LAB_NODE} to {to}, from the VM's client namespace",
            )
        if isinstance(app, demo.DeploymentApp):
            assert pods is not None
            answers = demo.eventually(lambda: app.who(target, 6), lambda a: set(a) == set(pods), 30)
            calls = "6 calls on one HTTP/2 connection" if app.kind == "grpc" else "6 requests"
            protocol = "gRPC" if app.kind == "grpc" else "HTTP"
            return answers, f"{protocol} through Envoy to a Deployment's pods, {calls}"
        answers = demo.eventually(
            lambda: demo.grpc_who(target, 6), lambda a: len(set(a)) == len(app.endpoints), 30
        )
        return answers, "gRPC through Envoy, 6 calls on one HTTP/2 connection"

    def restart_redis(self, backup: Path | None = None) -> None:
        """Stop Redis and start it again on its port and files: it replays its AOF; or, with
        `backup` (`backup_redis`), it starts from that older copy."""
        components = self.components()
        _terminate(components["redis"].pids)
        components["redis"] = self._start_redis(backup)
        self._save(components)

    def backup_redis(self) -> Path:
        """An RDB backup of the platform's Redis now."""
        server = RedisServer(self.state_dir / "redis", port=self.ports()["redis"])
        return server.save(self.state_dir / "redis-backup.rdb")

    def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        """Stop one of the platform's `slb` components and start it again, with `env` over
        its settings (e.g. another `OPENSLB_REDIS_PREFIX`)."""
        starters = {"xds": self._start_xds, "cmi": self._start_cmi,
                    "worker-control": self._start_control_worker}  # fmt: skip
        self.stop(name)
        components = self.components()
        self._env = env or {}
        try:
            components[name] = starters[name]()
        finally:
            self._env = {}
        self._save(components)

    def stop(self, name: str) -> None:
        """Stop one component (`restart` starts it again)."""
        components = self.components()
        if name in components:
            self._stop_component(components[name])

    def down(self, progress: Progress) -> None:
        self._stop_all(self.components(), progress)
        self._routes(add=False)
        self.state_file.unlink(missing_ok=True)

    def _stop_all(self, components: dict[str, Component], progress: Progress) -> None:
        for name, component in reversed(list(components.items())):
            self._stop_component(component)
            progress(f"{name}: stopped")
        self.state_file.unlink(missing_ok=True)

    def _stop_component(self, component: Component) -> None:
        if component.name != "kubernetes":
            _terminate(component.pids)
            return
        _terminate(component.pids, CLUSTER_STOP_S)  # its process stops the cluster gracefully
        clusterd.remove_left(self.cluster_dir)  # what is left if it was killed

    def _routes(self, *, add: bool) -> None:
        """Make the VIP pool and the samples' network local on loopback (AnyIP), or undo it."""
        for cidr in (self.vip_cidr, self.sample_cidr):
            verb = "replace" if add else "del"
            done = subprocess.run(
                ["ip", "route", verb, "local", cidr, "dev", "lo"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if add and done.returncode != 0:
                raise RuntimeError(f"ip route {verb} local {cidr} dev lo: {done.stderr.strip()}")

    # -- the components -------------------------------------------------------------------

    def _slb(self, name: str, *argv: str) -> Process:
        """An `slb` command of this platform, reading the platform's config file."""
        env = {"OPENSLB_CONFIG": str(self.config_file), "PYTHONUNBUFFERED": "1", **self._env}
        process = Process(name, [sys.executable, "-m", "slb.cli", *argv], self.state_dir / "logs",
                          env=env)  # fmt: skip
        return process.start()

    def _run_slb(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A short `slb` command against this platform, run to completion."""
        return subprocess.run(
            [sys.executable, "-m", "slb.cli", *argv], input=stdin,
            env={**os.environ, "OPENSLB_CONFIG": str(self.config_file)},
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    def _component(self, process: Process, address: str, detail: str = "") -> Component:
        return Component(process.name, [process.pid], address, str(process.log_path), detail)

    def _start_redis(self, backup: Path | None = None) -> Component:
        server = RedisServer(self.state_dir / "redis", port=self.ports()["redis"])
        server = server.start_from(backup) if backup else server.start()
        return Component("redis", [server.process.pid], server.url, str(server.process.log_path),
                         detail="append-only file on")  # fmt: skip

    def _start_cluster(self) -> Component:
        process, node = clusterd.start(self.cluster_dir, self.state_dir / "logs")
        self._write_config(node.cmi_kubeconfig)
        return self._component(
            process, node.server,
            f"node {NODE_NAME}, pods on {POD_CIDR}; KUBECONFIG={node.kubeconfig} (admin); cmi "
            f"runs as openslb-system/openslb-cmi; the cluster's logs in {self.cluster_dir}/logs",
        )  # fmt: skip

    def _write_config(self, cmi_kubeconfig: Path) -> None:
        ports = self.ports()
        tables: dict[str, dict[str, str | int | bool]] = {
            "redis": {"url": self.redis_url, "prefix": PREFIX},
            "kube": {"kubeconfig": str(cmi_kubeconfig)},
            # The selector-less demo apps' slices are hand-made (devbed writes them); the
            # Deployments' come from Kubernetes' EndpointSlice controller. One tenant, whose
            # benches expose thousands of Services: no instance or listener quota.
            "cmi": {"pool_cidrs": self.vip_cidr, "endpoint_slices_from": demo.NAMESPACE,
                    "instances_per_namespace": 0, "listeners_per_namespace": 0,
                    "release_grace_s": 5, "lease_duration_s": 6,
                    "renew_deadline_s": 4, "retry_period_s": 1},
            "xds": {"bind": f"127.0.0.1:{ports['xds']}",
                    "metrics_bind": f"127.0.0.1:{ports['xds_metrics']}",
                    "state_dir": str(self.state_dir / "xds")},
            "console": {"bind": f"127.0.0.1:{ports['console']}",
                        "secret_key_file": str(self.state_dir / "console-secret-key")},
            "secrets": {"key_file": str(self._key_file())},
            "dev": {"state_dir": str(self.state_dir), "vip_cidr": self.vip_cidr,
                    "sample_cidr": self.sample_cidr, "lab": self.lab},
            "l4": {"metrics_listen": ""},
        }  # fmt: skip
        for table, values in self.tuning.items():
            tables.setdefault(table, {}).update(values)
        self.config_file.write_text(
            "\n".join(
                f"[{table}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                for table, values in tables.items()
            )
        )

    def _key_file(self) -> Path:
        """The key file that encrypts private keys in the demo's Redis, as in production."""
        path = self.state_dir / "secrets.keys"
        if not path.exists():
            add_key(path, "devbed")
        return path

    def _start_samples(self) -> Component:
        processes = [
            Process(
                f"sample-{name}",
                [sys.executable, "-m", "devbed.samples", "grpc", "--name", name,
                 "--grpc", f"{address}:{SAMPLE_PORT}"],
                self.state_dir / "logs",
            ).start()
            for name, address in zip(SAMPLES, sample_addresses(self.sample_cidr), strict=True)
        ]  # fmt: skip
        for process, address in zip(processes, sample_addresses(self.sample_cidr), strict=True):
            wait_until(lambda p=process, a=address: p.check_alive() and connects(a, SAMPLE_PORT),  # type: ignore[misc]
                       30, process.name)  # fmt: skip
        addresses = sample_addresses(self.sample_cidr)
        return Component(
            "samples",
            [p.pid for p in processes],
            f"{addresses[0]}..{addresses[-1].rsplit('.', 1)[1]}:{SAMPLE_PORT}",
            str(processes[0].log_path),
            detail="gRPC samples /openslb.test.Echo/Who answer their name",
        )

    def _start_xds(self) -> Component:
        port = self.ports()["xds"]
        process = self._slb("xds", "xds")
        wait_until(lambda: process.check_alive() and connects("127.0.0.1", port), 60, "slb xds")
        return self._component(process, f"127.0.0.1:{port}", "ADS (gRPC), Delta and SotW")

    def _start_envoy(self) -> Component:
        """An Envoy of node group `default`, bootstrapped by `slb envoy-bootstrap` (l7)."""
        ports = self.ports()
        directory = self.state_dir / "envoy"
        directory.mkdir(parents=True, exist_ok=True)
        bootstrap_file = directory / "bootstrap.json"
        made = self._run_slb(
            "envoy-bootstrap", "--node-group", "default", "--node-id", "dev-envoy-1",
            "--admin-port", str(ports["envoy_admin"]), "--stats-port", "0",
            "--out", str(bootstrap_file),
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"slb envoy-bootstrap: {made.stderr.strip()}")
        proxy = EnvoyProxy(
            directory, json.loads(bootstrap_file.read_text()), admin_port=ports["envoy_admin"]
        )
        proxy.start()
        return Component(
            "envoy", [proxy.process.pid], proxy.admin_url, str(proxy.process.log_path),
            detail="node group default (L7 listeners bind their VIPs); admin API here",
        )  # fmt: skip

    def _start_envoy_stats(self) -> Component:
        """The Envoy's sampler: its statistics and hosts' health into the console's charts."""
        admin = f"127.0.0.1:{self.ports()['envoy_admin']}"
        process = self._slb("envoy-stats", "envoy-stats", "--node-id", "dev-envoy-1",
                            "--admin", admin, "--interval", "5")  # fmt: skip
        time.sleep(0.5)
        process.check_alive()
        return self._component(process, admin, "samples that Envoy every 5 s into Redis")

    def _start_cmi(self) -> Component:
        process = self._slb("cmi", "cmi")
        store = self.store()
        wait_until(  # the leader creates the VIP pool from cmi.pool_cidrs
            lambda: process.check_alive() and store.get(AddressPool, "default") is not None,
            60, "slb cmi (leader)", interval=0.2,
        )  # fmt: skip
        return self._component(process, "leader of openslb-system/openslb-cmi",
                               f"VIP pool default: {self.vip_cidr}")  # fmt: skip

    def _start_control_worker(self) -> Component:
        process = self._slb("worker-control", "worker", "--control", "--beat")
        time.sleep(1.0)
        process.check_alive()
        return self._component(process, "queue openslb", "drift re-assertion (Celery beat)")

    def _start_lab_node(self) -> Component:
        node = self.lab_node()
        self.put_lab_group()
        node.start()
        return Component(
            "lab-node",
            [node.pid],
            f"{node.address} (in the lab VM)",
            str(node.console_log),
            detail=f"LB node {LAB_NODE} of node group {LAB_GROUP}: IPVS, l4 agent in its "
            f"worker (queue l4.{LAB_NODE}), TCP pods {', '.join(node.pod_addresses)}",
        )

    def put_lab_group(self) -> None:
        """Node group `lab`, lb1 its one node: an operator's object, which cmi does not make
        (after a lost store the operator puts it back)."""
        lb1 = LBNode(name=LAB_NODE, address=self.lab_node().address)
        self.store().put(NodeGroup(name=LAB_GROUP, nodes=(lb1,)))

    def _start_console(self) -> Component:
        port = self.ports()["console"]
        if not self.console_password_file.exists():
            password = secrets.token_urlsafe(12)
            created = self._run_slb(
                "console", "create-admin", "admin", "--password-stdin", stdin=password + "\n"
            )
            if created.returncode != 0 and "exists" not in created.stderr:
                raise RuntimeError(f"slb console create-admin: {created.stderr.strip()}")
            self.console_password_file.write_text(password + "\n")
            self.console_password_file.chmod(0o600)
        process = self._slb("console", "console")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: process.check_alive() and _http_ok(f"{url}/login"), 60, "console")
        return self._component(
            process, url, f"user admin, password in {self.console_password_file}"
        )


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
        return bool(resp.status == 200)


def _terminate(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
