"""The one-node cluster as a process of its own: `python -m devbed.clusterd STATE_DIR`.

`slb dev up` exits once everything runs, but a `KubeNode` belongs to the process that
started it: its pid is the owner written on the cluster's bridges (a later `start()` treats
the cluster of a dead owner as leftovers), and only that process can stop it gracefully
(pods deleted through the API while the kubelet still runs). So this small process starts
the `KubeNode` and stays: SIGTERM stops the cluster with `KubeNode.stop()`, and when a part
of the cluster dies it stops the rest and exits, so the platform sees the component down
and starts it afresh. Ready once RECORD exists in STATE_DIR: where the cluster runs, its admin
kubeconfig and one for cmi's ServiceAccount.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from kubernetes.client import ApiClient
from kubernetes.config import new_client_from_config

from devbed.cluster import KubeNode, remove_run
from devbed.process import Process, StartError, wait_until

RECORD = "node.json"
CMI_TOKEN_HOURS = 48


@dataclass(frozen=True)
class RunningNode:
    """A cluster this module runs, as any process can use it (read from RECORD)."""

    pid: int  # this module's process, the cluster's owner
    run_dir: str  # KubeNode.run_dir: what remove_run() cleans up
    server: str
    kubeconfig: Path  # admin (system:masters)
    cmi_kubeconfig: Path  # cmi's ServiceAccount, bound to the role cmi ships with
    pids: tuple[int, ...]  # every process of the cluster

    @classmethod
    def read(cls, state_dir: Path) -> RunningNode | None:
        try:
            raw = json.loads((state_dir / RECORD).read_text())
        except FileNotFoundError:
            return None
        return cls(pid=raw["pid"], run_dir=raw["run_dir"], server=raw["server"],
                   kubeconfig=Path(raw["kubeconfig"]),
                   cmi_kubeconfig=Path(raw["cmi_kubeconfig"]),
                   pids=tuple(raw["pids"]))  # fmt: skip

    def client(self) -> ApiClient:
        """An admin client of the cluster's API server."""
        client: ApiClient = new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return client


def start(state_dir: Path, log_dir: Path, timeout: float = 240.0) -> tuple[Process, RunningNode]:
    """Start this module as a process and wait until its cluster is usable."""
    (state_dir / RECORD).unlink(missing_ok=True)
    process = Process("kubernetes", [sys.executable, "-m", "devbed.clusterd", str(state_dir)],
                      log_dir).start()  # fmt: skip

    def ready() -> bool:
        process.check_alive()
        return (state_dir / RECORD).exists()

    try:
        wait_until(ready, timeout, "the one-node cluster", interval=0.2)
    except TimeoutError:
        process.stop(timeout=120)
        raise
    node = RunningNode.read(state_dir)
    assert node is not None
    return process, node


def remove_left(state_dir: Path) -> None:
    """After this module's process is gone: if it could not stop its cluster (it was
    killed), remove what is left of it from disk."""
    node = RunningNode.read(state_dir)
    if node is not None:
        remove_run(Path(node.run_dir))
        (state_dir / RECORD).unlink(missing_ok=True)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """Unwind to `serve`'s clean-up (also out of a start under way), and only once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(0)


def serve(state_dir: Path) -> int:
    """Start the cluster, record it, and keep it until a signal or until a part dies."""
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    record = state_dir / RECORD
    node = KubeNode(state_dir)
    began = time.monotonic()
    try:
        node.start()
        assert node.api is not None
        kubeconfig = node.api.write_kubeconfig(
            state_dir / "kubeconfig", node.api.admin_token, "admin"
        )
        cmi_kubeconfig = node.api.cmi_kubeconfig(hours=CMI_TOKEN_HOURS)
        processes = _processes(node)
        running = RunningNode(
            pid=os.getpid(), run_dir=str(node.run_dir), server=node.api.server,
            kubeconfig=kubeconfig, cmi_kubeconfig=cmi_kubeconfig,
            pids=tuple(p.pid for p in processes),
        )  # fmt: skip
        written = record.with_suffix(".tmp")
        written.write_text(json.dumps(asdict(running), default=str, indent=2))
        written.rename(record)
        print(f"cluster up in {time.monotonic() - began:.1f} s: {running}", flush=True)
        while True:
            time.sleep(1.0)
            dead = [p.name for p in processes if not p.alive()]
            if dead:
                print(f"{', '.join(dead)} died: stopping the cluster", flush=True)
                return 1
    except StartError as exc:
        print(f"the cluster did not start: {exc}", flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        record.unlink(missing_ok=True)
        node.stop()
        print("cluster stopped", flush=True)


def _processes(node: KubeNode) -> list[Process]:
    assert node.api is not None
    parts = (node.api.etcd, node.api.apiserver, node.containerd, node.controller_manager,
             node.scheduler, node.kubelet)  # fmt: skip
    return [p for p in parts if p is not None]


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
