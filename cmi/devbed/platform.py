"""`slb dev up|down|status`: the local platform as long-running background processes.

Each component is started by the same test-bed classes the tests use, detached into
its own session so it outlives the command, and recorded in `state.json` (pid, address,
log). `up` is idempotent: what is recorded and alive is left alone, the rest is started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cmi.devbed.envoy import EnvoyProxy
from cmi.devbed.kube import KubeAPI
from cmi.devbed.redis import RedisServer

Progress = Callable[[str], None]


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


class DevPlatform:
    """The components of the local platform, their state kept under `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.state_file = self.state_dir / "state.json"

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

    def up(self, progress: Progress) -> dict[str, Component]:
        components = self.components()
        starters: list[tuple[str, Callable[[], Component]]] = [
            ("redis", self._start_redis),
            ("kube-apiserver", self._start_kube),
            ("envoy", self._start_envoy),
        ]
        for name, start in starters:
            current = components.get(name)
            if current is not None and current.alive():
                progress(f"{name}: already running (pid {', '.join(map(str, current.pids))})")
                continue
            if current is not None:
                _terminate(current.pids)
            began = time.monotonic()
            progress(f"{name}: starting")
            components[name] = start()
            self._save(components)
            progress(f"{name}: up at {components[name].address} ({time.monotonic() - began:.1f} s)")
        self._write_config(components)
        return components

    @property
    def config_file(self) -> Path:
        """Settings pointing `slb` at this platform: `slb --config FILE ...`."""
        return self.state_dir / "openslb.toml"

    def _write_config(self, components: dict[str, Component]) -> None:
        kubeconfig = components["kube-apiserver"].detail.removeprefix("KUBECONFIG=")
        self.config_file.write_text(
            f'[redis]\nurl = "{components["redis"].address}"\n\n'
            f'[kube]\nkubeconfig = "{kubeconfig}"\n\n'
            f'[dev]\nstate_dir = "{self.state_dir}"\n'
        )

    def down(self, progress: Progress) -> None:
        for name, component in reversed(list(self.components().items())):
            _terminate(component.pids)
            progress(f"{name}: stopped")
        self.state_file.unlink(missing_ok=True)

    def _start_redis(self) -> Component:
        server = RedisServer(self.state_dir / "redis").start()
        return Component("redis", [server.process.pid], server.url, str(server.process.log_path))

    def _start_kube(self) -> Component:
        api = KubeAPI(self.state_dir / "kube").start()
        assert api.etcd is not None
        assert api.apiserver is not None
        return Component(
            "kube-apiserver",
            [api.apiserver.pid, api.etcd.pid],
            api.server,
            str(api.apiserver.log_path),
            detail=f"KUBECONFIG={api.kubeconfig}",
        )

    def _start_envoy(self) -> Component:
        proxy = EnvoyProxy(
            self.state_dir / "envoy", bootstrap={"node": {"id": "dev", "cluster": "default"}}
        )
        proxy.start()
        return Component(
            "envoy",
            [proxy.process.pid],
            proxy.admin_url,
            str(proxy.process.log_path),
            detail="admin API",
        )


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
