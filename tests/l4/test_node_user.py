"""An LB node's own worker runs under its own Redis user (#14), in the lab VM on real IPVS.

`slb redis-acl --node lb-a` makes the user `node-lb-a`; Redis starts with that ACL file
only. The node's worker (`slb worker --node lb-a`, its l4 agent inside) takes its lock,
follows the desired state, programs the kernel, records what it owns, reports its status
and stats, and consumes the apply task cmi's user sends, all without Redis denying it
anything (Redis's ACL log stays empty). `tests/slb/test_redis_acl.py` tries, against the
same rules, everything such a node must not do.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.process import Process, wait_until
from devbed.redis import RedisServer
from l4.drivers import Driver
from l4.ipvs import ServiceKey
from slb import config
from slb.pipeline import L4_APPLY, l4_queue, make_app
from slb.storage import acl
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.l4.conftest import INTERFACE

pytestmark = pytest.mark.lab

NODE = "lb-a"
PREFIX = "nodeuser"
VIP = "198.18.0.10"
WORKER_READY_S = 180.0
"""A worker's start (Python, Celery, the agent's first sync) under emulation, with room."""


class AclRedis:
    """A redis-server that knows only `slb redis-acl`'s users and the harness's own."""

    def __init__(self, directory: Path) -> None:
        self.acl_dir = directory / "acl"
        acl.write(self.acl_dir, PREFIX, nodes=[NODE])
        password = secrets.token_hex(16)
        with (self.acl_dir / acl.ACL_FILE).open("a") as users:
            users.write(f"user harness on >{password} ~* &* +@all\n")
        self.server = RedisServer(
            directory / "redis", aclfile=self.acl_dir / acl.ACL_FILE, auth=("harness", password)
        ).start()
        self.admin = self.server.client()

    def env(self, user: str) -> dict[str, str]:
        return {"OPENSLB_REDIS_URL": self.server.url, "OPENSLB_REDIS_PREFIX": PREFIX,
                "OPENSLB_REDIS_USERNAME": user,
                "OPENSLB_REDIS_PASSWORD_FILE": str(self.acl_dir / f"{user}.password")}  # fmt: skip

    def store(self, user: str) -> Store:
        return Store.connect(config.load(environ={"OPENSLB_CONFIG": "", **self.env(user)}).redis)

    def stop(self) -> None:
        self.admin.close()
        self.server.stop()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    made = AclRedis(tmp_path)
    yield made
    made.stop()


def test_a_nodes_worker_does_its_work_under_its_own_user(
    acl_redis: AclRedis, observer: Driver, tmp_path: Path
) -> None:
    cmi = acl_redis.store("cmi")
    revision = put(
        cmi, node_group((NODE, "198.18.255.15")), load_balancer(VIP),
        service("web", [("198.18.1.1", 8080, 1)]), listener("web", 80),
    )  # fmt: skip
    empty = tmp_path / "openslb.toml"
    empty.write_text("")
    env = {
        "OPENSLB_CONFIG": str(empty), **acl_redis.env(f"node-{NODE}"),
        "OPENSLB_L4_INTERFACE": INTERFACE, "OPENSLB_L4_STATE_DIR": str(tmp_path / "l4"),
        "OPENSLB_L4_METRICS_LISTEN": "", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    acl_redis.admin.acl_log_reset()
    worker = Process("worker", [sys.executable, "-m", "slb.cli", "worker", "--node", NODE],
                     tmp_path, env=env).start()  # fmt: skip
    board = StatusBoard(cmi)
    app = make_app(config.load(empty, environ={**env, **acl_redis.env("cmi")}), include_tasks=False)
    try:

        def serves(wanted: int) -> bool:
            worker.check_alive()
            status = board.all("l4").get(NODE)
            return status is not None and status.revision >= wanted

        wait_until(lambda: serves(revision), WORKER_READY_S, "the node serves its first revision")
        assert set(observer.dump().services) == {ServiceKey("TCP", VIP, 80)}
        # A revision more, handed over as cmi's hand-off does: a task on the node's queue.
        newer = put(cmi, listener("api", 81))
        task = app.send_task(L4_APPLY, kwargs={"node": NODE, "revision": newer, "force": False},
                             queue=l4_queue(NODE))  # fmt: skip
        wait_until(lambda: app.backend.get_task_meta(task.id)["status"] == "SUCCESS", 120,
                   "the node's apply task done")  # fmt: skip
        assert serves(newer)
        assert ServiceKey("TCP", VIP, 81) in observer.dump().services
        owned = acl_redis.admin.smembers(cmi.key("l4", NODE, "owned"))
        assert {m.decode() for m in owned} == {ServiceKey("TCP", VIP, p).encode() for p in (80, 81)}
        wait_until(lambda: bool(acl_redis.admin.exists(cmi.key("l4", NODE, "stats"))), 60,
                   "the node's stats sample")  # fmt: skip
    finally:
        app.close()
        worker.stop(timeout=60)
        subprocess.run(["ip", "link", "del", INTERFACE], capture_output=True, check=False)
    assert acl_redis.admin.acl_log() == [], worker.log_tail(60)
    node = acl_redis.store(f"node-{NODE}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        node.redis.get(node.key("secret", "any"))
    node.redis.close()
    cmi.redis.close()
