"""Debian's redis-server on a free loopback port, with AOF on.

`appendfsync everysec` is the default here and in deploy/: at most one second of writes
can be lost on a host crash (not on a process crash), at a fraction of the cost of
`always`, which fsyncs every write. The store's revisions make that loss visible and
self-healing: cmi's periodic resync rewrites whatever went missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from devbed.process import Process, StartError, free_port, wait_until
from slb.storage.store import Store


class RedisServer:
    """A private redis-server: its own port, directory and append-only file."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        fsync: str = "everysec",
        *,
        aclfile: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """With `aclfile` (from `slb redis-acl`), Redis knows only its users; `auth` is the
        (user, password) this harness checks readiness with."""
        self.state_dir = state_dir
        self.port = port or free_port()
        self.fsync = fsync
        self.auth = auth
        binary = shutil.which("redis-server")
        if binary is None:
            raise StartError("redis-server not found: run deploy/testbed/install.sh")
        self.process = Process(
            f"redis-{self.port}",
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(state_dir),
                "--appendonly", "yes",
                "--appendfsync", fsync,
                "--save", "",
                "--protected-mode", "yes",
                "--daemonize", "no",
                *(["--aclfile", str(aclfile.resolve())] if aclfile else []),
            ],
            state_dir,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        """Its Unix socket too: reachable from every network namespace on the machine."""
        return self.state_dir / "redis.sock"

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def client(self) -> redis.Redis[bytes]:
        username, password = self.auth or (None, None)
        return redis.Redis.from_url(self.url, username=username, password=password)

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        client = self.client()

        def ready() -> bool:
            self.process.check_alive()
            try:
                if self.auth is not None:  # a role without INFO: PING answers LOADING meanwhile
                    return bool(client.ping())
                return bool(client.ping()) and client.info("persistence")["loading"] == 0
            except redis.ConnectionError:
                return False

        wait_until(ready, timeout, f"redis on port {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stop and start on the same port and files: the AOF is replayed."""
        self.stop()
        self.start()

    def save(self, to: Path) -> Path:
        """A backup of the data now: an RDB file, as an operator's backup job takes one."""
        client = self.client()
        client.save()
        shutil.copyfile(self.state_dir / "dump.rdb", to)
        return to

    def start_from(self, rdb: Path, timeout: float = 30.0) -> RedisServer:
        """Start (stopped) from the backup `rdb` alone, as an operator restores one: with
        AOF on Redis would ignore the RDB, so it starts with AOF off and turns it on once
        loaded, which writes a fresh AOF from the restored data."""
        shutil.rmtree(self.state_dir / "appendonlydir", ignore_errors=True)
        shutil.copyfile(rdb, self.state_dir / "dump.rdb")
        argv = self.process.argv
        at = argv.index("--appendonly") + 1
        argv[at] = "no"
        try:
            self.start(timeout)
        finally:
            argv[at] = "yes"
        client = self.client()
        client.config_set("appendonly", "yes")

        def rewritten() -> bool:
            info = client.info("persistence")
            return bool(info["aof_enabled"] and not info["aof_rewrite_in_progress"]
                        and not info["aof_rewrite_scheduled"])  # fmt: skip

        wait_until(rewritten, timeout, "the restored data in a fresh AOF", interval=0.1)
        return self


def lose(store: Store) -> int:
    """Empty one store as a Redis that lost its data would (FLUSHALL, but of this store's
    keys only: tests share one Redis); return how many keys went."""
    keys = list(store.redis.scan_iter(match=store.key("*")))
    return int(store.redis.delete(*keys)) if keys else 0


def backup(store: Store) -> dict[bytes, bytes]:
    """A copy of one store's keys (DUMP), for `restore`: a backup taken while it runs."""
    dumps = {key: store.redis.dump(key) for key in store.redis.scan_iter(match=store.key("*"))}
    return {key: value for key, value in dumps.items() if value is not None}


def restore(store: Store, copy: dict[bytes, bytes]) -> None:
    """Put the store back as `copy` has it, as a Redis restored from an older backup would."""
    lose(store)
    pipe = store.redis.pipeline(transaction=True)
    for key, value in copy.items():
        pipe.restore(key, 0, value)
    pipe.execute()
