"""Fixtures of the L7 tests: this session's addresses, and the xDS server as a process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cmi.devbed.redis import RedisServer
from cmi.store import Store
from tests.l7.harness import TestNet, XdsProcess


@pytest.fixture(scope="session")
def net() -> Iterator[TestNet]:
    """A dummy interface for VIPs and backends, deleted with everything on it at the end."""
    test_net = TestNet().create()
    yield test_net
    test_net.delete()


@pytest.fixture
def xds(tmp_path: Path, redis_server: RedisServer, store: Store) -> Iterator[XdsProcess]:
    """`slb xds` on the test's store (not started: write the desired state first, or not)."""
    server = XdsProcess(tmp_path / "xds", redis_server.url, store.prefix)
    yield server
    server.stop()
