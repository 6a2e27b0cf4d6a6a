"""Every Redis client's waits are bounded: a link that stops answering fails a call within
`redis.timeout_s`, and the client works again once the link is back."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import redis

from devbed.redis import RedisServer
from devbed.relay import Relay
from slb.config import ConfigError, RedisSettings
from slb.storage import connect


def test_a_black_holed_link_fails_within_the_timeout(redis_server: RedisServer) -> None:
    url = urlsplit(redis_server.url)
    relay = Relay((url.hostname or "127.0.0.1", url.port or 6379)).start()
    try:
        settings = RedisSettings(url=f"redis://127.0.0.1:{relay.port}/0", timeout_s=3)
        client = connect.client(settings)
        assert client.ping()
        relay.blackhole()
        began = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.get("anything")
        assert 2.5 <= time.monotonic() - began <= 6  # without a timeout: for ever
        relay.restore()
        assert client.set("back", "1")
        assert client.get("back") == b"1"
    finally:
        relay.stop()


def test_a_timeout_shorter_than_the_longest_blocking_read_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"redis.timeout_s: 2 s is too short"):
        connect.pool(replace(RedisSettings(), timeout_s=2))
