"""A real one-node Kubernetes cluster on this machine: pods run, Kubernetes makes the endpoints.

`KubeAPI` alone is envtest-like: tests write EndpointSlices by hand. `KubeNode` adds what
a cluster has around it, so readiness probes, rolling updates and the EndpointSlice
controller behave for real:

    etcd + kube-apiserver      KubeAPI with a NodePKI (client certificates, Node,RBAC)
    kube-controller-manager    deployments, replica sets, EndpointSlices, node IPAM, ...
    kube-scheduler
    containerd 2 + runc        private root, state and sockets under a short /tmp directory
    kubelet                    Node `openslb-node`, cgroupfs driver under a cgroup of its own

Network: the node's address 198.18.127.254 sits on an empty bridge (this kernel has no
dummy links); pods get 198.18.128.0/24 on a second bridge through the CNI bridge plugin,
whose gateway address we set ourselves so the plugin never turns on the host-wide
net.ipv4.ip_forward. The host reaches pod IPs directly; there is no kube-proxy, so
ClusterIPs and NodePorts do not forward.

Images come from devbed/images.py (no registry): pods use `imagePullPolicy: Never`.
Needs root (links, mounts, cgroups). One cluster at a time: the bridges are fixed names.
`stop()` removes everything it made, also after any part of it crashed; a cluster left
by a killed test run is cleaned up by the next `start()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from devbed import images
from devbed.images import Image
from devbed.kube import BUILD_SCRIPT, KUBE_VERSION, SERVICE_CIDR, KubeAPI, cache_dir
from devbed.kubepki import NodePKI
from devbed.process import Process, StartError, free_port, wait_until

CONTAINERD_VERSION = os.environ.get("OPENSLB_CONTAINERD_VERSION", "v2.4.2")
NODE_NAME = "openslb-node"
NODE_IP = "198.18.127.254"
"""Just below the pod range, inside 198.18.0.0/15 like every address of the test bed."""
CLUSTER_CIDR = "198.18.128.0/20"
POD_CIDR = "198.18.128.0/24"
"""node-ipam gives the one node the first /24 of the cluster CIDR; CNI uses the same."""
POD_GATEWAY = "198.18.128.1"
NODE_LINK = "slbnode0"
POD_BRIDGE = "slbpods0"
KUBERNETES_SERVICE_IP = "198.19.0.1"
"""The `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR."""
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_RESULTS = Path("/var/lib/cni/results")
LINK_ALIAS = re.compile(r"openslb-node pid=(\d+) run=(\S+)")
CONTROLLERS = (
    "serviceaccount-token-controller", "serviceaccount-controller",
    "root-ca-certificate-publisher-controller", "namespace-controller",
    "garbage-collector-controller", "deployment-controller", "replicaset-controller",
    "endpointslice-controller", "node-lifecycle-controller", "node-ipam-controller",
    "pod-garbage-collector-controller",
)  # fmt: skip
"""What Deployments behind a Service need, and no more (no kube-proxy, no DNS, no PVs)."""


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    controller_manager: Path
    scheduler: Path
    containerd_dir: Path
    runc: Path = Path("/usr/sbin/runc")
    cni_dir: Path = Path("/usr/lib/cni")

    @property
    def containerd(self) -> Path:
        return self.containerd_dir / "containerd"

    @property
    def ctr(self) -> Path:
        return self.containerd_dir / "ctr"

    @classmethod
    def cached(cls) -> NodeBinaries:
        """The binaries build-kube-binaries.sh built and install.sh installed, or a clear error."""
        bin_dir = cache_dir() / "bin"
        binaries = cls(
            kubelet=bin_dir / f"kubelet-{KUBE_VERSION}",
            controller_manager=bin_dir / f"kube-controller-manager-{KUBE_VERSION}",
            scheduler=bin_dir / f"kube-scheduler-{KUBE_VERSION}",
            containerd_dir=bin_dir / f"containerd-{CONTAINERD_VERSION}",
        )
        built = (
            binaries.kubelet, binaries.controller_manager, binaries.scheduler,
            binaries.containerd, binaries.ctr, binaries.containerd_dir / "containerd-shim-runc-v2",
            *(image.binary for image in images.IMAGES),
        )  # fmt: skip
        missing = [str(p) for p in built if not p.exists()]
        if missing:
            raise StartError(f"not built yet: {', '.join(missing)}; run {BUILD_SCRIPT}")
        packaged = [binaries.runc, binaries.cni_dir / "bridge", binaries.cni_dir / "host-local"]
        if not all(p.exists() for p in packaged):
            raise StartError("runc or the CNI plugins are missing: run deploy/testbed/install.sh")
        return binaries


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _link_owner(link: str) -> tuple[int, Path] | None:
    """The pid and run directory a KubeNode wrote on `link`, if the link exists."""
    shown = _ip("-d", "link", "show", link, check=False)
    if shown.returncode != 0:
        return None
    match = LINK_ALIAS.search(shown.stdout)
    if match is None:
        raise StartError(f"{link} exists and is not a one-node cluster's: remove it by hand")
    return int(match[1]), Path(match[2])


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class KubeNode:
    """A one-node cluster: logs, certificates and API state under `state_dir` (kept after
    `stop()`, like `KubeAPI`'s), the node's runtime state under a short directory of /tmp
    (`run_dir`: containerd's shim sockets need a short path) that `stop()` removes."""

    def __init__(self, state_dir: Path, binaries: NodeBinaries | None = None) -> None:
        self.state_dir = state_dir
        self.binaries = binaries or NodeBinaries.cached()
        self.node_name = NODE_NAME
        self.node_ip = NODE_IP
        self.pod_cidr = POD_CIDR
        self.cluster_cidr = CLUSTER_CIDR
        self.run_dir: Path | None = None
        self.api: KubeAPI | None = None
        self.containerd: Process | None = None
        self.controller_manager: Process | None = None
        self.scheduler: Process | None = None
        self.kubelet: Process | None = None
        self.log_dir = state_dir / "logs"

    # -- what tests use ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """An admin (system:masters) kubeconfig."""
        return self._api().kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self._run_dir() / "containerd.sock"

    def client(self) -> ApiClient:
        """An admin client of the cluster's API server."""
        return self._api().client()

    def apply_manifest(self, path: Path) -> None:
        """Create every object of a YAML manifest (objects that exist are left alone)."""
        self._api().apply_manifest(path)

    def import_image(self, image: Image) -> None:
        """Load a test image into the node's containerd, for pods with imagePullPolicy Never."""
        images.import_image(image, self.binaries.ctr, self.containerd_socket, self._run_dir())

    def ctr(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`ctr` on the node's containerd, in the kubelet's namespace (k8s.io)."""
        return subprocess.run(
            [str(self.binaries.ctr), "--address", str(self.containerd_socket),
             "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    # -- start ---------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> KubeNode:
        """Start everything and wait until the Node is Ready and pods can be created."""
        if os.geteuid() != 0:
            raise StartError("the one-node cluster needs root (links, mounts, cgroups)")
        self._claim_bridges()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _claim_bridges(self) -> None:
        """Refuse while another live cluster holds the bridges; clean up after a dead one."""
        for link in (POD_BRIDGE, NODE_LINK):
            owner = _link_owner(link)
            if owner is None:
                continue
            pid, run_dir = owner
            if _start_time(pid) is not None:
                raise StartError(
                    f"{link} exists: the one-node cluster of process {pid} (state in {run_dir})"
                    " is running; stop it first, only one runs at a time"
                )
            remove_run(run_dir)
            _ip("link", "del", link, check=False)

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="openslb-node.", dir="/tmp"))
        run_dir.chmod(0o755)  # containers whose user is not root read their root file system here
        self.run_dir = run_dir
        self._make_links(run_dir)
        cgroup_root = self._make_cgroup_root(run_dir)
        pki = NodePKI.create(self.state_dir / "pki", NODE_NAME, NODE_IP, KUBERNETES_SERVICE_IP)
        self._start_containerd(run_dir)
        api = KubeAPI(self.state_dir / f"api-{run_dir.name}", node_pki=pki)  # a fresh etcd
        self.api = api
        api.start(timeout=_left(deadline))
        self._record(api.etcd, api.apiserver)
        api.install_gateway_api(timeout=_left(deadline))  # before cmi asks whether it is there
        self._start_controllers(api, pki)
        self._wait_for_containerd(deadline)
        for image in images.IMAGES:
            self.import_image(image)
        self._start_kubelet(api, pki, run_dir, cgroup_root)
        self._wait_until_usable(deadline)

    def _make_links(self, run_dir: Path) -> None:
        """The node's address on an empty bridge, and the pod bridge with its gateway."""
        alias = f"openslb-node pid={os.getpid()} run={run_dir}"
        for link, address in ((NODE_LINK, f"{NODE_IP}/32"), (POD_BRIDGE, f"{POD_GATEWAY}/24")):
            _ip("link", "add", link, "type", "bridge")
            _ip("link", "set", link, "alias", alias)
            _ip("addr", "add", address, "dev", link)
            _ip("link", "set", link, "up")

    @staticmethod
    def _make_cgroup_root(run_dir: Path) -> str:
        """A cgroup of this run in every hierarchy: pods go below it, and stop() removes it."""
        name = run_dir.name
        for hierarchy in CGROUP_FS.iterdir():
            if not (hierarchy / "cgroup.procs").exists():
                continue
            group = hierarchy / name
            group.mkdir(exist_ok=True)
            for setting in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset cgroup starts empty
                if (hierarchy / setting).exists():
                    (group / setting).write_text((hierarchy / setting).read_text())
        return f"/{name}"

    def _record(self, *processes: Process | None) -> None:
        """Note each process group, so a later run can end them if this one is killed."""
        with (self._run_dir() / "pids").open("a") as pids:
            for process in processes:
                if process is not None:
                    pids.write(f"{process.pid} {_start_time(process.pid)}\n")

    def _start_containerd(self, run_dir: Path) -> None:
        for sub in ("containerd/root", "containerd/state", "runc", "s", "cni/net.d", "cni/ipam"):
            (run_dir / sub).mkdir(parents=True)
        config = run_dir / "containerd.toml"
        config.write_text(_containerd_config(run_dir, self.binaries))
        (run_dir / "cni" / "net.d" / "10-pods.conflist").write_text(_cni_config(run_dir))
        path = f"{self.binaries.containerd_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.containerd = Process(
            "containerd",
            [str(self.binaries.containerd), "--config", str(config), "--log-level", "info"],
            self.log_dir,
            env={"PATH": path},  # containerd finds its shim on PATH
        ).start()
        self._record(self.containerd)

    def _wait_for_containerd(self, deadline: float) -> None:
        containerd = self.containerd
        assert containerd is not None

        def serving() -> bool:
            containerd.check_alive()
            return self.ctr("version", timeout=5).returncode == 0

        wait_until(serving, _left(deadline), "containerd", interval=0.2)

    def _start_controllers(self, api: KubeAPI, pki: NodePKI) -> None:
        kcm = api.write_cert_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            pki.controller_manager.cert, pki.controller_manager.key,
            "system:kube-controller-manager",
        )  # fmt: skip
        self.controller_manager = Process(
            "kube-controller-manager",
            [
                str(self.binaries.controller_manager),
                "--kubeconfig", str(kcm),
                "--authentication-kubeconfig", str(kcm),
                "--authorization-kubeconfig", str(kcm),
                "--bind-address", "127.0.0.1",
                "--secure-port", str(free_port()),
                "--leader-elect=false",
                "--controllers", ",".join(CONTROLLERS),
                "--use-service-account-credentials",
                "--service-account-private-key-file", str(pki.service_account_key),
                "--root-ca-file", str(pki.ca.cert),
                "--allocate-node-cidrs",
                "--cluster-cidr", CLUSTER_CIDR,
                "--node-cidr-mask-size", "24",
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--cluster-name", "openslb",
                "--profiling=false",
                "--v", "1",
            ],
            self.log_dir,
        ).start()  # fmt: skip
        scheduler = api.write_cert_kubeconfig(
            self.state_dir / "scheduler.kubeconfig",
            pki.scheduler.cert, pki.scheduler.key, "system:kube-scheduler",
        )  # fmt: skip
        self.scheduler = Process(
            "kube-scheduler",
            [
                str(self.binaries.scheduler),
                "--kubeconfig", str(scheduler),
                "--authentication-kubeconfig", str(scheduler),
                "--authorization-kubeconfig", str(scheduler),
                "--bind-address", "127.0.0.1",
                "--secure-port", str(free_port()),
                "--leader-elect=false",
                "--profiling=false",
                "--v", "1",
            ],
            self.log_dir,
        ).start()  # fmt: skip
        self._record(self.controller_manager, self.scheduler)

    def _start_kubelet(self, api: KubeAPI, pki: NodePKI, run_dir: Path, cgroup_root: str) -> None:
        kubeconfig = api.write_cert_kubeconfig(
            self.state_dir / "kubelet.kubeconfig",
            pki.kubelet_client.cert, pki.kubelet_client.key, f"system:node:{NODE_NAME}",
        )  # fmt: skip
        config = self.state_dir / "kubelet.yaml"
        config.write_text(_kubelet_config(run_dir, pki, cgroup_root))
        self.kubelet = Process(
            "kubelet",
            [
                str(self.binaries.kubelet),
                "--config", str(config),
                "--kubeconfig", str(kubeconfig),
                "--root-dir", str(run_dir / "kubelet"),
                "--hostname-override", NODE_NAME,
                "--node-ip", NODE_IP,
                "--v", "2",
            ],
            self.log_dir,
        ).start()  # fmt: skip
        self._record(self.kubelet)

    def _wait_until_usable(self, deadline: float) -> None:
        """The Node Ready, and the default ServiceAccount there (pods are refused before)."""
        with self.client() as client:
            core = CoreV1Api(client)

            def ready() -> bool:
                for process in (self.kubelet, self.controller_manager, self.scheduler):
                    assert process is not None
                    process.check_alive()
                try:
                    node = core.read_node(NODE_NAME)
                    core.read_namespaced_service_account("default", "default")
                except ApiException:
                    return False
                conditions = (node.status.conditions if node.status else None) or []
                return any(c.type == "Ready" and c.status == "True" for c in conditions)

            try:
                wait_until(ready, _left(deadline), f"node {NODE_NAME}", interval=0.5)
            except TimeoutError as exc:
                assert self.kubelet is not None
                raise StartError(f"{exc}; kubelet log:\n{self.kubelet.log_tail()}") from None

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything and remove what the node made on the host, crashed or not."""
        if self.run_dir is None:
            if self.api is not None:
                self.api.stop()
            return
        self._delete_workloads()
        for process in (self.kubelet, self.scheduler, self.controller_manager):
            if process is not None:
                process.stop()
        if self.api is not None:
            self.api.stop()
        if self.containerd is not None and self.containerd.alive():
            self._delete_containers()
            self.containerd.stop()
        remove_run(self.run_dir)
        self.run_dir = None

    def _delete_workloads(self) -> None:
        """Let the kubelet take pods down (CNI DEL frees addresses and veths) while it can."""
        if not (self.kubelet and self.kubelet.alive() and self.api and self.api.apiserver):
            return
        if not self.api.apiserver.alive():
            return
        try:
            with self.client() as client:
                core, apps = CoreV1Api(client), AppsV1Api(client)
                for namespace in core.list_namespace(_request_timeout=5).items:
                    name = namespace.metadata.name if namespace.metadata else None
                    if not name:
                        continue
                    apps.delete_collection_namespaced_deployment(name, _request_timeout=5)
                    apps.delete_collection_namespaced_replica_set(name, _request_timeout=5)
                    apps.delete_collection_namespaced_daemon_set(name, _request_timeout=5)
                    apps.delete_collection_namespaced_stateful_set(name, _request_timeout=5)
                    core.delete_collection_namespaced_pod(
                        name, grace_period_seconds=0, _request_timeout=5
                    )
        except (ApiException, OSError):
            return
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.ctr("tasks", "ls", "-q").stdout.strip(), 30, "pods gone")

    def _delete_containers(self) -> None:
        """Whatever containers the kubelet left (it may have crashed): kill and delete."""
        for task in self.ctr("tasks", "ls", "-q").stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.ctr("tasks", "ls", "-q").stdout.strip(), 5, "tasks")
        for task in self.ctr("tasks", "ls", "-q").stdout.split():
            self.ctr("tasks", "delete", "--force", task)
        for container in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("containers", "delete", container)

    def _api(self) -> KubeAPI:
        if self.api is None:
            raise RuntimeError("the cluster is not started")
        return self.api

    def _run_dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("the cluster is not started")
        return self.run_dir


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def remove_run(run_dir: Path) -> None:
    """Remove every trace of the run whose runtime state is `run_dir`, from what is on disk
    alone (its KubeNode object may be gone with a killed test process): processes,
    containers' processes, mounts, links, cgroups, files outside run_dir, run_dir."""
    _end_recorded_processes(run_dir)
    _kill_processes_of(run_dir)
    _unmount_under(run_dir)
    for link in (POD_BRIDGE, NODE_LINK):
        owner = _link_owner(link)
        if owner is not None and owner[1] == run_dir:
            for port in _ip("-o", "link", "show", "master", link, check=False).stdout.splitlines():
                _ip("link", "del", port.split(": ")[1].split("@")[0], check=False)
            _ip("link", "del", link, check=False)
    for hierarchy in CGROUP_FS.iterdir():
        group = hierarchy / run_dir.name
        for directory, _, _ in os.walk(group, topdown=False):  # the kubelet's pods, then ours
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    _remove_files_outside(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def _end_recorded_processes(run_dir: Path) -> None:
    """SIGKILL every process group the run recorded that still runs. stop() has ended its
    own gracefully by now; these are a killed owner's, with nothing left to drain."""
    try:
        lines = (run_dir / "pids").read_text().splitlines()
    except OSError:
        return
    groups = [int(pid) for pid, started in (line.split() for line in lines)
              if _start_time(int(pid)) == started]  # fmt: skip
    for pid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all(_start_time(p) is None for p in groups), 5, "kill", interval=0.1)


def _kill_processes_of(run_dir: Path) -> None:
    """SIGKILL the containers' processes (in the run's cgroups) and the shims (their
    command line names the run's containerd socket): both outlive containerd."""
    pids: set[int] = set()
    for procs in CGROUP_FS.glob(f"*/{run_dir.name}/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    marker = f"{run_dir}/".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: all(_start_time(p) is None for p in pids), 5, "kill", interval=0.1)


def _mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")  # \040 is a space
        if point == str(directory) or point.startswith(prefix):
            points.append(point)
    return points


def _unmount_under(directory: Path) -> None:
    """Root file systems, shm, network namespaces, kubelet volumes: deepest first."""
    for _ in range(3):
        points = _mounts_under(directory)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_files_outside(run_dir: Path) -> None:
    """What the CNI plugins, the kubelet and ctr write at fixed paths, then their empty dirs."""
    sandboxes = run_dir / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"
    ids = [p.name for p in sandboxes.iterdir()] if sandboxes.is_dir() else []
    for sandbox in ids:
        for name in (f"{_network_name(run_dir)}-{sandbox}-eth0", f"cni-loopback-{sandbox}-lo"):
            (CNI_RESULTS / name).unlink(missing_ok=True)
    for path in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if path.is_symlink() and str(path.readlink()).startswith(f"{run_dir}/"):
                path.unlink()
    # the kubelet's device-plugin socket is at a fixed path whatever its root directory
    Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink(missing_ok=True)
    for directory in (
        CNI_RESULTS, CNI_RESULTS.parent, Path("/var/log/containers"),
        Path("/var/lib/kubelet/device-plugins"), Path("/var/lib/kubelet"),
        Path("/run/containerd/fifo"), Path("/run/containerd"),
    ):  # fmt: skip
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: another program's files stay


def _network_name(run_dir: Path) -> str:
    """The CNI network's name: CNI caches results under it, so each run has its own."""
    return run_dir.name


def _containerd_config(run_dir: Path, binaries: NodeBinaries) -> str:
    return f"""version = 3
root = '{run_dir}/containerd/root'
state = '{run_dir}/containerd/state'
imports = []
disabled_plugins = [
  'io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs',
  'io.containerd.snapshotter.v1.blockfile',
]
required_plugins = ['io.containerd.grpc.v1.cri']

[grpc]
  address = '{run_dir}/containerd.sock'
[ttrpc]
  address = '{run_dir}/containerd.sock.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{images.PAUSE.ref}'

[plugins.'io.containerd.cri.v1.runtime']
  enable_criu = false
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (a sandbox asks -998)
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{binaries.runc}'
        Root = '{run_dir}/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{binaries.cni_dir}']
    conf_dir = '{run_dir}/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '{run_dir}/s'
"""


def _cni_config(run_dir: Path) -> str:
    """The bridge plugin on our pod bridge; isGateway false keeps net.ipv4.ip_forward alone."""
    return f"""{{
  "cniVersion": "1.0.0",
  "name": "{_network_name(run_dir)}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{POD_BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{run_dir}/cni/ipam",
        "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{POD_GATEWAY}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }}
  ]
}}
"""


def _kubelet_config(run_dir: Path, pki: NodePKI, cgroup_root: str) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {free_port(NODE_IP)}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {free_port()}
tlsCertFile: {pki.kubelet_serving.cert}
tlsPrivateKeyFile: {pki.kubelet_serving.key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki.ca.cert}}}
authorization: {{mode: Webhook}}
# no systemd here, and cgroup v1 (refused since 1.35 unless allowed)
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{run_dir}/containerd.sock
podLogsDir: {run_dir}/pod-logs
volumePluginDir: {run_dir}/kubelet/volume-plugins
resolvConf: ""
clusterDomain: cluster.local
# images are imported, never pulled: garbage collection must not remove them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
nodeStatusUpdateFrequency: 10s
"""
