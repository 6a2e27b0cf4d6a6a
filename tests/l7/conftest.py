"""Fixtures of the L7 tests: this session's addresses, and a bed owning every process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devbed.l7harness import Bed, TestNet
from devbed.redis import RedisServer
from slb.storage.store import Store


@pytest.fixture(scope="session")
def net() -> Iterator[TestNet]:
    """A dummy interface for VIPs and backends, deleted with everything on it at the end."""
    test_net = TestNet().create()
    yield test_net
    test_net.delete()


@pytest.fixture
def bed(tmp_path: Path, net: TestNet, redis_server: RedisServer, store: Store) -> Iterator[Bed]:
    """Backends, Envoys and `slb xds` (on this test's store), all stopped after the test."""
    test_bed = Bed(tmp_path, net, redis_server.url, store.prefix)
    yield test_bed
    test_bed.close()
