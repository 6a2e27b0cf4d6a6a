"""Redis down under the console: a 503 that names the store, then service as before."""

from __future__ import annotations

from pathlib import Path

import argon2

from devbed.redis import RedisServer
from slb.storage.store import Store
from tests.web.conftest import CHEAP_HASH, PASSWORD, Auth, make_app
from web.auth import Accounts, Role


def test_a_redis_outage_answers_503_naming_the_store(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()  # its own: this test stops it
    try:
        store = Store(server.client(), prefix="console")
        Accounts(store, argon2.PasswordHasher(**CHEAP_HASH)).create_user(
            "alice", PASSWORD, Role.OPERATOR
        )
        client = make_app(server, store, tmp_path).test_client()
        auth = Auth(client)
        assert auth.login().status_code == 302

        server.stop()
        api = client.get("/api/v1/listeners")
        assert api.status_code == 503
        assert api.headers["Retry-After"] == "5"
        assert api.json is not None
        assert "the store (Redis) is unreachable" in api.json["errors"][0]["message"]
        page = client.get("/listeners")
        assert page.status_code == 503
        assert "the store (Redis) is unreachable" in page.get_data(as_text=True)
        write = auth.post("/listeners/new", {"name": "web"})
        assert write.status_code == 503
        assert "a change sent just before may have landed" in write.get_data(as_text=True)

        server.start()
        assert client.get("/listeners").status_code == 200  # same session, as before
        assert client.get("/api/v1/listeners").status_code == 200
    finally:
        server.stop()
