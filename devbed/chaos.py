"""The control plane made sick under live traffic, on the whole platform (`slb dev up`).

Each scenario runs while a gRPC client calls through the L7 VIP (Envoy) and the lab VM's
client connects through the L4 VIP (IPVS), and says how many of those failed, which alarms
were raised, whether they cleared, and whether any Service's VIP moved. `bench.chaos`
records the figures; tests/e2e runs each scenario once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import redis

from devbed import demo
from devbed.l7harness import background_load
from devbed.labnode import POD_PORT, LabNode, pod_address
from devbed.platform import LAB_NODE, DevPlatform
from devbed.process import wait_until
from devbed.relay import Relay
from slb.config import RedisSettings
from slb.storage.status import StatusBoard
from slb.storage.store import Store

Progress = Callable[[str], None]
WRONG_PREFIX = "openslb-wrong"
LB1_ALARM = StatusBoard.node_alarm(LAB_NODE)
HELD_S = 5.0
"""How long each scenario keeps the consumers holding, under traffic, before recovery."""


@dataclass
class Outcome:
    """What a scenario did to the traffic and what the operator saw."""

    scenario: str
    l7_ok: int = 0
    l7_failed: int = 0
    l4_ok: int = 0
    l4_failed: int = 0
    alarms: dict[str, str] = field(default_factory=dict)
    """Every alarm raised meanwhile, by consumer (the first words of each)."""
    alarms_left: dict[str, str] = field(default_factory=dict)
    vips_changed: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.l7_failed + self.l4_failed

    def summary(self) -> str:
        return (
            f"{self.scenario}: L7 {self.l7_ok} calls, {self.l7_failed} failed; L4 "
            f"{self.l4_ok} connections, {self.l4_failed} failed; alarms {sorted(self.alarms)}, "
            f"left {sorted(self.alarms_left)}; VIPs moved {self.vips_changed} "
            f"({self.seconds:.0f} s)"
        )


class AlarmWatch:
    """Polls the consumers' alarms (`StatusBoard.alarms`) of one or more stores."""

    def __init__(self, stores: list[Store]) -> None:
        self.boards = [StatusBoard(s) for s in stores]
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="alarm-watch", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            for board in self.boards:
                try:
                    for consumer, why in board.alarms().items():
                        self.seen.setdefault(consumer, why[:120])
                except redis.RedisError:
                    continue  # Redis restarting: the next poll

    def wait_for(self, consumers: set[str], timeout: float = 240.0) -> None:
        what = f"alarms of {sorted(consumers)}"
        wait_until(lambda: consumers <= set(self.seen), timeout, what, interval=0.2)

    @contextmanager
    def running(self) -> Iterator[AlarmWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


def _vips(platform: DevPlatform, apps: list[demo.SampleApp]) -> dict[str, str | None]:
    kube = platform.kube()
    return {app.name: demo.exposure(kube, app.name).vip for app in apps}


def _targets(platform: DevPlatform, apps: list[demo.SampleApp]) -> tuple[str, str]:
    """The gRPC app's L7 target and the TCP app's L4 target, once both are programmed."""
    kube = platform.kube()
    grpc_app, tcp_app = apps
    grpc_vip = demo.wait_programmed(kube, grpc_app.name, 120).vip
    tcp_vip = demo.wait_programmed(kube, tcp_app.name, 120).vip
    return f"{grpc_vip}:{grpc_app.port}", f"{tcp_vip}:{tcp_app.port}"


def recovered(platform: DevPlatform, timeout: float = 300.0) -> None:
    """Every alarm cleared, cmi's mark on the store, and lb1 serving its newest revision."""
    store = platform.store()
    board = StatusBoard(store)

    def done() -> bool:
        snapshot = store.snapshot(kinds=())
        synced = snapshot.synced
        lb1 = board.all("l4").get(LAB_NODE)
        return bool(
            not board.alarms()
            and synced is not None
            and synced.store_id == snapshot.store_id
            and not snapshot.syncing
            and lb1 is not None
            and not lb1.error
            and lb1.revision >= synced.revision
        )

    wait_until(done, timeout, "alarms cleared and lb1 serving the rebuilt store", interval=0.5)


def under_traffic(
    platform: DevPlatform,
    scenario: str,
    act: Callable[[AlarmWatch], None],
    progress: Progress,
    apps: list[demo.SampleApp] | None = None,
) -> Outcome:
    """Run `act` while traffic crosses both tiers to `apps` (the gRPC one and the TCP one;
    default: the platform's); then wait for recovery and count."""
    apps = apps or platform.apps()
    grpc_target, tcp_target = _targets(platform, apps)
    node = platform.lab_node()
    wrong = Store.connect(RedisSettings(url=platform.redis_url, prefix=WRONG_PREFIX))
    vips = _vips(platform, apps)
    outcome = Outcome(scenario)
    began = time.monotonic()
    l4_loads: list[str] = []
    stop_l4 = threading.Event()

    def l4_traffic() -> None:  # probes of 10 s, one after another, until the scenario ends
        while not stop_l4.is_set():
            l4_loads.append(node.load(tcp_target, 10.0))
            stop_l4.wait(10.0)

    with (
        background_load(grpc_target, connections=2, window=2) as l7,
        AlarmWatch([platform.store(), wrong]).running() as watch,
    ):
        sender = threading.Thread(target=l4_traffic, name="l4-traffic", daemon=True)
        sender.start()
        time.sleep(3.0)  # traffic flows before anything breaks
        progress(f"{scenario}: breaking the control plane")
        act(watch)
        progress(f"{scenario}: recovering")
        recovered(platform)
        time.sleep(3.0)  # and flows after
        stop_l4.set()
        sender.join(30)
    for probe in l4_loads:
        answers = _collect(node, probe)
        outcome.l4_ok += sum(1 for a in answers if not a.startswith("error"))
        outcome.l4_failed += sum(1 for a in answers if a.startswith("error"))
    outcome.l7_ok, outcome.l7_failed = l7.ok, l7.failed
    outcome.alarms = dict(watch.seen)
    outcome.alarms_left = StatusBoard(platform.store()).alarms()
    after = _vips(platform, apps)
    outcome.vips_changed = sum(1 for name, vip in vips.items() if after.get(name) != vip)
    outcome.seconds = time.monotonic() - began
    progress(outcome.summary())
    return outcome


def _collect(node: LabNode, probe: str, timeout: float = 60.0) -> list[str]:
    """A load probe's answers; a probe lost with the data it was queued in sent nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = node.answer(probe)
        if answers is not None:
            return answers
        time.sleep(0.2)
    return []


def redis_flush(platform: DevPlatform, progress: Progress = print) -> Outcome:
    """Redis loses everything (FLUSHALL) while cmi is down; the xDS server and both workers
    restart on the empty store and hold; cmi comes back and rebuilds it from Kubernetes;
    the operator puts back the node group cmi cannot rebuild."""

    def act(watch: AlarmWatch) -> None:
        platform.stop("cmi")
        platform.store().redis.flushall()
        platform.restart("xds")
        platform.restart("worker-control")  # Celery's bindings went with the data
        platform.lab_node().restart_worker()
        watch.wait_for({"xds", LB1_ALARM})
        time.sleep(HELD_S)
        platform.restart("cmi")
        board = StatusBoard(platform.store())
        wait_until(lambda: "would take" in board.alarms().get(LB1_ALARM, ""), 120,
                   "lb1 holds its services for the operator", interval=0.5)  # fmt: skip
        platform.put_lab_group()

    return under_traffic(platform, "redis_flush", act, progress)


def redis_rewind(platform: DevPlatform, progress: Progress = print) -> Outcome:
    """Redis restarts from an older backup, taken before the two Services the traffic goes
    to were exposed: applied as it is, it would take both off the data planes. The
    consumers hold what they serve until cmi has rebuilt the store."""
    kube = platform.kube()
    backup = platform.backup_redis()
    late = [replace(app, name=f"late-{app.name}") for app in platform.apps()]
    demo.apply(kube, late)

    def act(watch: AlarmWatch) -> None:
        platform.restart_redis(backup)

    try:
        return under_traffic(platform, "redis_rewind", act, progress, late)
    finally:
        for app in late:
            kube.request("DELETE", f"/api/v1/namespaces/{demo.NAMESPACE}/services/{app.name}")


def wrong_prefix(platform: DevPlatform, progress: Progress = print) -> Outcome:
    """The xDS server and lb1's worker restart pointed at the wrong `redis.prefix` (an empty
    store), then again at the right one."""

    def act(watch: AlarmWatch) -> None:
        env = {"OPENSLB_REDIS_PREFIX": WRONG_PREFIX}
        platform.restart("xds", env)
        platform.lab_node().restart_worker(WRONG_PREFIX)
        watch.wait_for({"xds", LB1_ALARM})
        time.sleep(HELD_S)
        platform.restart("xds")
        platform.lab_node().restart_worker()

    return under_traffic(platform, "wrong_prefix", act, progress)


def redis_blackhole_depool(platform: DevPlatform, progress: Progress = print) -> float:
    """Seconds from a TCP pod's death to lb1's health check weighing it 0 in IPVS, while lb1's
    link to Redis is black-holed (its worker restarted behind a relay that then stops
    forwarding without closing). Then the pod, the link and the worker are put back."""
    _, tcp_target = _targets(platform, platform.apps())
    node = platform.lab_node()
    pod = 3
    address = f"{pod_address(pod)}:{POD_PORT}"
    relay = Relay(("127.0.0.1", platform.ports()["redis"])).start()
    store = platform.store()
    try:
        _restarted_and_serving(store, lambda: node.restart_worker(redis_port=relay.port))
        relay.blackhole()
        time.sleep(1.0)  # the link is dead before the pod dies
        node.kill_pod(pod)
        began = time.monotonic()
        wait_until(lambda: node.weights(tcp_target).get(address, 0) == 0, 60,
                   f"{address} depooled", interval=0.1)  # fmt: skip
        seconds = time.monotonic() - began
        progress(f"redis_blackhole: {address} depooled {seconds:.2f} s after it died")
    finally:
        relay.restore()
        node.start_pod(pod)
        node.restart_worker()
        relay.stop()
    wait_until(lambda: node.weights(tcp_target).get(address, 0) > 0, 60, f"{address} back")
    return seconds


def _restarted_and_serving(store: Store, restart: Callable[[], None]) -> None:
    """Restart lb1's agent; return once the new one (its own node lock) has reported."""
    board, lock = StatusBoard(store), store.key("l4", LAB_NODE, "lock")
    holder = store.redis.get(lock)
    restart()
    wait_until(lambda: store.redis.get(lock) not in (None, holder), 180, "lb1's new agent")
    reported = board.all("l4")[LAB_NODE].updated_at

    def serving() -> bool:
        lb1 = board.all("l4")[LAB_NODE]
        return lb1.updated_at > reported and not lb1.error and lb1.revision >= store.revision()

    wait_until(serving, 60, "lb1's new agent serving", interval=0.2)


SCENARIOS = {"redis_flush": redis_flush, "redis_rewind": redis_rewind, "wrong_prefix": wrong_prefix}
