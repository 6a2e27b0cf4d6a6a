"""An LB node's Celery worker killed mid-apply gets its task back (slb/pipeline.py's promise).

The product's own worker (`slb worker --node lb-a`, its l4 agent inside) programs the
kernel's real IPVS in the lab VM; Redis is the broker, as in production. The test catches an
`openslb.l4.apply` in flight: delivered to the worker and not acknowledged (its message in
Celery's `unacked` hash) while the agent programs the kernel, stops the worker there, kills
it, and starts another at once, as a node's unit restarts it within seconds: the dead
worker's node lock is still live then, so the new worker's agent cannot start, and the
task comes back to a worker without an agent. It must wait for the lock, not fail: the same
task must end SUCCESS, and the kernel and the status board must say the node serves the new
revision.

What gives the task back is Redis's visibility timeout: a SIGKILLed worker rejects nothing,
its message stays in `unacked` until a worker's sweep finds it older than
`celery.visibility_timeout_s` (kombu sweeps when a worker starts, then about every 100 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.process import Process, wait_until
from devbed.redis import RedisServer
from l4.drivers import Driver
from l4.ipvs import ServiceKey
from l4.ownership import LOCK_TTL_S
from slb import config
from slb.model import Listener
from slb.pipeline import L4_APPLY, l4_queue, make_app
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.l4.conftest import INTERFACE

pytestmark = pytest.mark.lab

NODE = "lb-a"
VIP = "198.18.0.10"
BACKENDS = [("198.18.1.1", 8080, 1), ("198.18.1.2", 8080, 2)]
WEB = ServiceKey("TCP", VIP, 80)
LISTENERS = 1000
"""Listeners each new revision adds: 1,000 virtual services and 2,000 real servers, an apply
that takes seconds under the VM's emulation, long enough to stop the worker in the middle
(300 took about a second once the agent's change path got faster)."""
VISIBILITY_TIMEOUT_S = 10
ATTEMPTS = 5
WORKER_READY_S = 180.0
"""A worker's start (Python, Celery, the agent's first sync) under emulation, with room."""


def generation(number: int) -> list[Listener]:
    """The listeners revision `number` adds, each on a port of its own."""
    return [listener(f"g{number}-{i}", port) for i, port in enumerate(ports(number))]


def ports(number: int) -> range:
    return range(10000 + number * 1000, 10000 + number * 1000 + LISTENERS)


def services_of(number: int) -> set[ServiceKey]:
    return {ServiceKey("TCP", VIP, port) for port in ports(number)}


class Node:
    """`slb worker --node lb-a` processes on the test's store, and what Celery holds for them."""

    def __init__(self, store: Store, redis_server: RedisServer, directory: Path) -> None:
        self.store = store
        self.directory = directory
        empty = directory / "openslb.toml"  # nothing from /etc/openslb: the env says it all
        empty.write_text("")
        self.env = {
            "OPENSLB_CONFIG": str(empty),
            "OPENSLB_REDIS_URL": redis_server.url,
            "OPENSLB_REDIS_PREFIX": store.prefix,
            "OPENSLB_L4_INTERFACE": INTERFACE,
            "OPENSLB_L4_STATE_DIR": str(directory / "l4"),
            "OPENSLB_L4_METRICS_LISTEN": "",
            "OPENSLB_CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = config.load(empty, environ=self.env)
        self.app: Celery = make_app(self.settings, include_tasks=False)
        self.workers: list[Process] = []
        self.unacked = f"{store.prefix}:celery:unacked"
        self.queue = f"{store.prefix}:celery:{l4_queue(NODE)}"
        self.lock = store.key("l4", NODE, "lock")
        self.owned = store.key("l4", NODE, "owned")

    def start_worker(self) -> Process:
        argv = [sys.executable, "-m", "slb.cli", "worker", "--node", NODE]
        name = f"worker{len(self.workers) + 1}"
        worker = Process(name, argv, self.directory, env=self.env).start()
        self.workers.append(worker)
        return worker

    def send_apply(self, revision: int) -> str:
        """The task as cmi's hand-off sends it (cmi/handoff.py)."""
        kwargs = {"node": NODE, "revision": revision, "force": False}
        return str(self.app.send_task(L4_APPLY, kwargs=kwargs, queue=l4_queue(NODE)).id)

    def in_flight(self) -> set[str]:
        """Ids of the apply tasks delivered to a worker and not acknowledged."""
        messages = [json.loads(raw)[0] for raw in self.store.redis.hvals(self.unacked)]
        return {m["headers"]["id"] for m in messages if m["headers"]["task"] == L4_APPLY}

    def meta(self, task_id: str) -> dict[str, Any]:
        """The task's result, read as a key (no pub/sub subscription left behind)."""
        meta: dict[str, Any] = self.app.backend.get_task_meta(task_id)
        return meta

    def serves(self, revision: int) -> bool:
        status = StatusBoard(self.store).all("l4").get(NODE)
        return status is not None and status.revision >= revision

    def owns(self, key: ServiceKey) -> bool:
        return bool(self.store.redis.sismember(self.owned, key.encode()))

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}.log ---\n{w.log_tail(40)}" for w in self.workers)

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """`wait_until`, with the workers' logs in the message if it times out."""
        try:
            return wait_until(check, timeout, what, interval=0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def done(self, task_id: str) -> bool:
        return bool(self.meta(task_id)["status"] in ("SUCCESS", "FAILURE"))

    def catch_in_flight(self, worker: Process, number: int) -> tuple[int, str] | None:
        """Write revision `number`, send its apply and stop `worker` (SIGSTOP) while the
        task is unacknowledged and the agent programs the kernel (it records what it owns
        just before it creates it). Return (revision, task id), or None (worker resumed) if
        the task had finished by then."""
        revision = put(self.store, *generation(number))
        task_id = self.send_apply(revision)
        self.wait(lambda: task_id in self.in_flight() or self.done(task_id), 60,
                  f"apply of revision {revision} delivered to the worker")  # fmt: skip
        first_new = min(services_of(number))
        self.wait(lambda: self.owns(first_new) or self.done(task_id), 60,
                  f"apply of revision {revision} programming the kernel")  # fmt: skip
        os.killpg(worker.pid, signal.SIGSTOP)
        if task_id in self.in_flight() and self.meta(task_id)["status"] == "PENDING":
            return revision, task_id
        os.killpg(worker.pid, signal.SIGCONT)
        self.wait(lambda: self.done(task_id), 60, f"apply of revision {revision} finished")
        return None


@pytest.fixture
def node(
    store: Store, redis_server: RedisServer, observer: Driver, tmp_path: Path
) -> Iterator[Node]:
    """Workers of node lb-a; afterwards each is stopped (resumed first if stopped), and
    slb0 removed (`observer` flushes IPVS after this)."""
    made = Node(store, redis_server, tmp_path)
    yield made
    for worker in made.workers:
        if worker.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGCONT)
        worker.stop(timeout=60)
    made.app.close()
    subprocess.run(["ip", "link", "del", INTERFACE], capture_output=True, check=False)


def test_a_worker_killed_mid_apply_gets_its_task_back(node: Node, observer: Driver) -> None:
    began = time.monotonic()
    store = node.store
    first_revision = put(
        store, node_group((NODE, "198.18.255.15")), load_balancer(VIP),
        service("web", BACKENDS), listener("web", 80),
    )  # fmt: skip
    first = node.start_worker()
    # When ready, the worker takes the node's lock and syncs: the first revision is served.
    node.wait(lambda: first.check_alive() and node.serves(first_revision), WORKER_READY_S,
              f"the first worker serves revision {first_revision}")  # fmt: skip
    assert set(observer.dump().services) == {WEB}
    started_s = time.monotonic() - began

    # Catch an apply in flight; if it finished before the worker stopped, try a new revision.
    caught = None
    for number in range(1, ATTEMPTS + 1):
        caught = node.catch_in_flight(first, number)
        if caught is not None:
            break
    assert caught is not None, f"no apply caught in flight in {ATTEMPTS} attempts\n{node.logs()}"
    revision, task_id = caught
    programmed = len(services_of(number) & observer.dump().services.keys())
    print(f"stopped the worker with {programmed} of {LISTENERS} new services programmed")

    first.kill()  # SIGKILL to its process group, as a crash would
    with pytest.raises(ProcessLookupError):
        os.killpg(first.pid, 0)  # nothing of it survives
    assert task_id in node.in_flight(), "the killed worker's task is still unacknowledged"
    assert node.meta(task_id)["status"] == "PENDING"
    assert store.revision() == revision

    # The dead worker's node lock names it (host, pid, token): no one can take it over, so a
    # new worker's agent can start only once it expires (LOCK_TTL_S after its last renewal).
    # A node's unit restarts a worker in seconds; the emulated VM takes longer to start one,
    # so the test keeps the dead lock alive until the new worker has met it, both in its
    # agent's start and in the task, which must then wait for the lock rather than fail.
    dead_lock = store.redis.get(node.lock)
    assert dead_lock is not None, "the killed worker's lock is still live"
    killed_s = time.monotonic() - began
    second = node.start_worker()
    retried = f"{L4_APPLY}[{task_id}] retry"

    def locked_out() -> bool:
        store.redis.set(node.lock, dead_lock, px=int(LOCK_TTL_S * 1000))
        second.check_alive()
        log = second.log_path.read_text()
        return "another l4 agent programs this node" in log and retried in log

    node.wait(locked_out, WORKER_READY_S + 4 * VISIBILITY_TIMEOUT_S,
              "the new worker met the dead worker's lock, and so did the task")  # fmt: skip
    met_s = time.monotonic() - began

    def finished() -> bool:
        second.check_alive()
        meta = node.meta(task_id)
        assert meta["status"] not in ("FAILURE", "REVOKED", "REJECTED"), (meta, node.logs())
        return bool(meta["status"] == "SUCCESS")

    node.wait(finished, LOCK_TTL_S + WORKER_READY_S,
              f"task {task_id} redelivered to the new worker and done")  # fmt: skip
    redelivered_s = time.monotonic() - began
    result = node.meta(task_id)["result"]
    assert result["revision"] >= revision, result
    assert result["errors"] == [], result

    # Ran to its end once, by the new worker (after its retries while the node was locked);
    # the killed one only received it. (A worker logs "succeeded" after it stored the result.)
    succeeded = f"{L4_APPLY}[{task_id}] succeeded"
    node.wait(lambda: succeeded in second.log_path.read_text(), 30, "the new worker's log")
    logs = [w.log_path.read_text() for w in (first, second)]
    received = [log.count(f"{L4_APPLY}[{task_id}] received") for log in logs]
    assert received[0] == 1, node.logs()
    assert received[1] >= 2, node.logs()  # retried while the node was locked
    assert [log.count(succeeded) for log in logs] == [0, 1], node.logs()
    node.wait(lambda: node.in_flight() == set(), 30, "the task acknowledged")  # after its log
    assert store.redis.llen(node.queue) == 0

    # The node serves the new revision, every service once with its two real servers.
    expected = {WEB}.union(*(services_of(n) for n in range(1, number + 1)))
    services = observer.dump().services
    assert set(services) == expected
    dests = {key: sorted((d.address, d.port, d.weight) for d in vs.dests)
             for key, vs in services.items()}  # fmt: skip
    assert {str(key): got for key, got in dests.items() if got != BACKENDS} == {}
    assert {m.decode() for m in store.redis.smembers(node.owned)} == {k.encode() for k in expected}
    status = StatusBoard(store).all("l4")[NODE]
    assert (status.revision, status.group, status.error) == (revision, "default", None)
    print(
        f"first worker ready {started_s:.0f} s, caught at attempt {number}, killed at"
        f" {killed_s:.0f} s, the new worker and the task met its lock at {met_s:.0f} s, task"
        f" done by the new worker at {redelivered_s:.0f} s; its result: {result}"
    )
