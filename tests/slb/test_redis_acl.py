"""Redis ACL users per role and per LB node (`slb redis-acl`) on a real redis-server
started with the ACL file: anonymous and wrong-password clients are refused, each role and
each node does what its part of openslb does and nothing it must not, and a real Celery
worker and the real xDS server run under their users without Redis denying them anything
(its ACL log stays empty). The lab VM runs a node's own worker under its user
(`tests/l4/test_node_user.py`)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from devbed.pki import key_pem
from devbed.process import Process, wait_until
from devbed.redis import RedisServer
from slb import config
from slb.cli import main
from slb.config import ConfigError, RedisSettings
from slb.model import LBNode, LoadBalancer, NodeGroup, Owner, OwnerKind
from slb.pipeline import REASSERT, l4_queue, make_app
from slb.storage import acl
from slb.storage.connect import credentials
from slb.storage.envoyhosts import EnvoyHosts
from slb.storage.secrets import SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from slb.storage.timeseries import TimeSeries
from tests.l7.test_server import ServerThread

PREFIX = "acltest"
OPERATOR = Owner(kind=OwnerKind.OPERATOR, name="tests")


def balancer(vip: str, name: str = "web") -> LoadBalancer:
    return LoadBalancer(name=name, vip=vip, node_group="g", owner=OPERATOR)


@dataclass
class AclRedis:
    server: RedisServer
    directory: Path
    admin: redis.Redis[bytes]

    def settings(self, role: str) -> RedisSettings:
        return RedisSettings(url=self.server.url, prefix=PREFIX, username=role,
                             password_file=str(self.directory / f"{role}.password"))  # fmt: skip

    def store(self, role: str) -> Store:
        return Store.connect(self.settings(role))

    def env(self, role: str) -> dict[str, str]:
        settings = self.settings(role)
        return {"OPENSLB_CONFIG": "", "OPENSLB_REDIS_URL": settings.url,
                "OPENSLB_REDIS_PREFIX": PREFIX, "OPENSLB_REDIS_USERNAME": role,
                "OPENSLB_REDIS_PASSWORD_FILE": settings.password_file}  # fmt: skip

    def denials(self) -> list[dict[str, object]]:
        """What Redis refused since the last reset (its ACL log)."""
        return list(self.admin.acl_log())


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    directory = tmp_path_factory.mktemp("acl")
    result = CliRunner().invoke(
        main, ["redis-acl", "--dir", str(directory / "acl"), "--prefix", PREFIX,
               "--node", "lb1", "--node", "lb2"],
        env={"OPENSLB_CONFIG": ""},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    acl_dir = directory / "acl"
    for user in (*acl.ROLES, "node-lb1", "node-lb2"):
        assert (acl_dir / f"{user}.password").read_text().strip() not in result.output
    # The harness's own user, to read Redis's ACL log; openslb has no such user.
    admin_password = secrets.token_hex(16)
    with (acl_dir / "users.acl").open("a") as users:
        users.write(f"user harness on >{admin_password} ~* &* +@all\n")
    server = RedisServer(
        directory / "redis", aclfile=acl_dir / "users.acl", auth=("harness", admin_password)
    ).start()
    admin = server.client()
    try:
        yield AclRedis(server, acl_dir, admin)
    finally:
        admin.close()
        server.stop()


def test_anonymous_and_wrong_passwords_are_refused(acl_redis: AclRedis) -> None:
    url = acl_redis.server.url
    with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):  # NOAUTH
        redis.Redis.from_url(url).ping()
    with pytest.raises(redis.AuthenticationError, match=r"WRONGPASS|invalid username-password"):
        redis.Redis.from_url(url, username="node-lb1", password="guess").ping()
    with pytest.raises(redis.AuthenticationError, match=r"WRONGPASS|invalid username-password"):
        redis.Redis.from_url(url, username="default", password="").ping()


def test_each_role_may_do_its_part_and_no_more(acl_redis: AclRedis) -> None:
    acl_redis.admin.acl_log_reset()
    cmi, worker, console = (acl_redis.store(role) for role in ("cmi", "node-lb1", "console"))
    revision = cmi.put(balancer("198.18.0.9"))  # cmi writes the desired state
    assert worker.get(LoadBalancer, "web") is not None  # workers read it...
    assert worker.snapshot().revision == revision
    with pytest.raises(redis.ResponseError, match="can't access at least one of the keys"):
        worker.put(balancer("198.18.0.66"))  # ...but cannot change it
    assert worker.revision() == revision
    assert str(cmi.get(LoadBalancer, "web").obj.vip) == "198.18.0.9"
    StatusBoard(worker).report("l4", "lb1", "g", revision)  # and report what they did
    assert StatusBoard(cmi).all("l4")["lb1"].revision == revision
    console.put(balancer("198.18.0.10"))  # the console writes operators' objects
    console.redis.hset(console.key("console", "users"), "admin", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.redis.hgetall(worker.key("console", "users"))  # accounts are not workers'
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.redis.get("elsewhere:key")  # nor anything outside the prefix
    for store in (cmi, worker, console):
        for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "save", "")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                store.redis.execute_command(*command)
    for role in (*acl.ROLES, "node-lb1"):  # Redis's verdict, for what must not be tried
        for denied in (("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "NOSAVE"), ("KEYS", "*"),
                       ("MONITOR",), ("ACL", "LIST")):  # fmt: skip
            verdict = acl_redis.admin.execute_command("ACL", "DRYRUN", role, *denied)
            assert b"no permissions" in verdict, (role, denied, verdict)
    with pytest.raises(redis.exceptions.NoPermissionError):
        console.redis.publish(f"{PREFIX}:celery:x", "no pub/sub for the console")
    assert acl_redis.admin.dbsize() > 0  # nothing was flushed
    assert acl_redis.admin.ping()  # and Redis still runs
    for store in (cmi, worker, console):
        store.redis.close()


def test_a_node_writes_its_own_keys_and_no_other_nodes(acl_redis: AclRedis) -> None:
    """#14: an LB node taken over can neither forge nor hide another node's status, alarm,
    lock, ownership record or chart points, nor queue tasks for cmi."""
    cmi, lb1 = acl_redis.store("cmi"), acl_redis.store("node-lb1")
    lb1_board, board = StatusBoard(lb1), StatusBoard(cmi)
    StatusBoard(acl_redis.store("node-lb2")).report("l4", "lb2", "g", 4)
    lb1_board.report("l4", "lb1", "g", 5)
    lb1_board.l4_alarm("lb1", "held")
    lb1.redis.set(lb1.key("l4", "lb1", "lock"), "me")
    lb1.redis.sadd(lb1.key("l4", "lb1", "owned"), "TCP 198.18.0.9:80")
    TimeSeries(lb1).append("l4_connections", {"tier": "l4", "listener": "web", "node": "lb1"}, 3)
    # its Envoy's sampler (`slb envoy-stats`): chart points per listener and backend, hosts
    l7_labels = {"tier": "l7", "listener": "api", "node": "lb1"}
    TimeSeries(lb1).append_many(
        [("connections", l7_labels, 2), ("backend_connections", {**l7_labels, "backend": "b:1"}, 1)]
    )
    EnvoyHosts(lb1).write("lb1", 1.0, {"api": {"198.18.0.1:80": "healthy"}})
    assert {n: s.revision for n, s in board.all("l4").items()} == {"lb1": 5, "lb2": 4}
    assert board.alarms() == {"l4 lb1": "held"}
    acl_redis.admin.acl_log_reset()
    forgeries = [
        lambda: lb1_board.report("l4", "lb2", "g", 99),
        lambda: lb1_board.forget("l4", "lb2"),
        lambda: lb1_board.l4_alarm("lb2", "forged"),
        lambda: lb1_board.alarm("xds", "forged"),
        lambda: lb1.redis.set(lb1.key("l4", "lb2", "lock"), "me"),
        lambda: lb1.redis.delete(lb1.key("l4", "lb2", "owned")),
        lambda: lb1.redis.srem(lb1.key("status", "l4-nodes"), "lb2"),
        lambda: lb1.redis.delete(lb1.key("ts-index", "l4_connections")),
        lambda: TimeSeries(lb1).append(
            "l4_connections", {"tier": "l4", "listener": "web", "node": "lb2"}, 1
        ),
        lambda: TimeSeries(lb1).append("connections", {**l7_labels, "node": "lb2"}, 1),
        lambda: EnvoyHosts(lb1).write("lb2", 1.0, {"api": {"198.18.0.1:80": "ejected"}}),
        lambda: lb1.redis.lpush(f"{PREFIX}:celery:celery", "a task for cmi's worker"),
        lambda: lb1.redis.lpush(f"{PREFIX}:celery:{l4_queue('lb2')}", "a task for lb2"),
    ]
    for forge in forgeries:
        with pytest.raises(redis.exceptions.NoPermissionError):
            forge()
    assert all(":lb1:" not in str(d["object"]) for d in acl_redis.denials())
    assert {n: s.revision for n, s in board.all("l4").items()} == {"lb1": 5, "lb2": 4}
    assert board.alarms() == {"l4 lb1": "held"}


def test_the_control_worker_runs_and_no_one_controls_it_remotely(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    """Every key and channel the control worker touches (its queue, `unacked`, the
    bindings, the nodes' queues it sends to) is in cmi's rules; a broadcast from an LB node's
    user neither reaches nor stops it, and a node cannot queue tasks for it."""
    acl_redis.admin.acl_log_reset()
    cmi = acl_redis.store("cmi")
    cmi.put(NodeGroup(name="g", nodes=(LBNode(name="lb1", address="198.18.0.21"),)))
    queue = f"{PREFIX}:celery:{l4_queue('lb1')}"
    worker = Process("worker", [sys.executable, "-m", "slb.cli", "worker", "--control"],
                     tmp_path, env=acl_redis.env("cmi"))  # fmt: skip
    worker.start()
    try:
        app = make_app(config.load(environ=acl_redis.env("cmi")), include_tasks=False)
        app.send_task(REASSERT)
        wait_until(lambda: acl_redis.admin.llen(queue) > 0, 60, "the node's apply task sent")
        node = make_app(config.load(environ=acl_redis.env("node-lb1")), include_tasks=False)
        node.control.broadcast("shutdown")  # nothing listens (no remote control)
        with pytest.raises(redis.exceptions.NoPermissionError):
            node.control.ping(timeout=2)  # nor may a node read the replies
        with pytest.raises(OperationalError, match="no permissions"):
            node.send_task(REASSERT)  # the control queue is not the node's
        node.close()
        acl_redis.admin.acl_log_reset()
        acl_redis.admin.delete(queue)
        app.send_task(REASSERT)
        wait_until(lambda: acl_redis.admin.llen(queue) > 0, 60, "a task after the broadcast")
        assert worker.check_alive()
        app.close()
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert "Connected to redis://cmi:**@" in log
    password = (acl_redis.directory / "cmi.password").read_text().strip()
    assert password not in log
    assert acl_redis.denials() == []


def test_node_users_are_kept_and_names_checked(tmp_path: Path) -> None:
    first = acl.write(tmp_path, PREFIX, nodes=["lb1"])
    again = acl.write(tmp_path, PREFIX, nodes=["lb2"])
    assert set(again.password_files) == {*acl.ROLES, "node-lb1", "node-lb2"}
    assert again.created == ("node-lb2",)
    assert (tmp_path / "node-lb1.password").read_text() == first.password_files[
        "node-lb1"
    ].read_text()
    with pytest.raises(ValueError, match=r"^--node: 'lb\*' is not an LB node name"):
        acl.write(tmp_path, PREFIX, nodes=["lb*"])


def test_the_xds_server_runs_as_the_xds_user(acl_redis: AclRedis) -> None:
    acl_redis.admin.acl_log_reset()
    cmi, xds = acl_redis.store("cmi"), acl_redis.store("xds")
    revision = cmi.put(balancer("198.18.0.12", "x"))
    with ServerThread(xds) as server:
        server.wait_revision(revision)
    assert acl_redis.denials() == []


def test_only_the_xds_server_reads_private_keys(acl_redis: AclRedis) -> None:
    """An LB node taken over used to read every tenant's private key, undoing the per-group
    mutual TLS of xDS (#14)."""
    console, worker, xds = (acl_redis.store(role) for role in ("console", "node-lb1", "xds"))
    key = key_pem()
    SecretStore(console).put_key("shop-1", key)
    assert SecretStore(xds).get_keys({"shop-1"}) == {"shop-1": key}
    with pytest.raises(redis.exceptions.NoPermissionError):
        SecretStore(worker).get_keys({"shop-1"})
    with pytest.raises(redis.ResponseError, match="can't access at least one of the keys"):
        xds.put(balancer("198.18.0.13", "y"))  # the xDS server writes no desired state


def test_password_settings_are_checked_and_named(acl_redis: AclRedis, tmp_path: Path) -> None:
    settings = acl_redis.settings("cmi")
    missing = replace(settings, password_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"^redis\.password_file: cannot read .*none"):
        credentials(missing)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"^redis\.password_file: .* is empty"):
        credentials(replace(settings, password_file=str(empty)))
    with_password = replace(settings, url=settings.url.replace("//", "//cmi:secret@"))
    with pytest.raises(ConfigError, match=r"^redis\.password_file: redis\.url carries"):
        credentials(replace(with_password, username=""))
    result = CliRunner().invoke(
        main, ["listener", "list"],
        env={**acl_redis.env("cmi"), "OPENSLB_REDIS_PASSWORD_FILE": str(tmp_path / "none")},
    )  # fmt: skip
    assert result.exit_code != 0
    assert "redis.password_file: cannot read" in result.output
    # The console's pool authenticates from the same settings.
    from web.app import create_app

    app = create_app(
        test_config={"SECRET_KEY": "x" * 40},
        settings=config.load(environ=acl_redis.env("console")),
    )
    with app.test_client() as client:
        assert client.get("/login").status_code == 200
        assert client.get("/api/v1/listeners").status_code == 401
