"""Fixtures that start the real components: Redis, kube-apiserver + etcd, Envoy, and
the one-node Kubernetes cluster for tests marked `cluster`.

Each starts once per test session (the cluster once per module that uses it) on free
loopback ports, with its state under the session's temporary directory; tests isolate
themselves by key prefix or namespace.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes.client import ApiClient

from devbed.cluster import KubeNode
from devbed.envoy import EnvoyProxy
from devbed.kube import KubeAPI
from devbed.redis import RedisServer
from slb.storage.store import Store

pytest_plugins = ["tests.labplugin", "tests.golden"]

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis[bytes]]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis[bytes], request: pytest.FixtureRequest) -> Store:
    """A store under a prefix of its own, so tests share one Redis without interfering."""
    return Store(redis_client, prefix=f"test{next(_prefixes)}-{request.node.name[:40]}")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    api = KubeAPI(tmp_path_factory.mktemp("kube")).start()
    api.install_gateway_api()  # as a cluster that uses it has: cmi serves it when it is there
    yield api
    api.stop()


@pytest.fixture(scope="module")
def kube_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeNode]:
    """A real one-node cluster (kubelet, controllers, scheduler, containerd) with the test
    images imported; its own API server, apart from `kube`'s. Per module: one cluster runs
    on a machine at a time, and the platform of tests/e2e and `slb dev up` in
    tests/devbed/test_dev_platform.py start one of their own, so this one is gone by then."""
    node = KubeNode(tmp_path_factory.mktemp("kube-node")).start()
    yield node
    node.stop()


@pytest.fixture
def kube_client(kube: KubeAPI) -> Iterator[ApiClient]:
    """An admin client of the real API server."""
    with kube.client() as client:
        yield client


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Callable[..., EnvoyProxy]]:
    """Start Envoys from a bootstrap; every one is stopped after the test."""
    started: list[EnvoyProxy] = []

    def start(bootstrap: dict[str, Any], **kwargs: Any) -> EnvoyProxy:
        proxy = EnvoyProxy(tmp_path / f"envoy{len(started)}", bootstrap, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()
