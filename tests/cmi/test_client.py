"""`KubeClient` against the real API server: its kept connections suffice for cmi."""

from __future__ import annotations

import threading
from urllib.parse import urlparse

from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI

WATCHES = 5  # cmi's informers
WRITERS = 11  # cmi's reporter's eight, the leader's lease, the handoff, the controller


def test_watches_and_concurrent_requests_reuse_kept_connections(kube: KubeAPI) -> None:
    """Five open watches and eleven threads of requests, as cmi runs them, open no more
    connections than they use at once: none is opened for one request and dropped."""
    client = KubeClient.from_kubeconfig(str(kube.kubeconfig))
    url = urlparse(client.host)
    pool = client.pool.connection_from_host(url.hostname, url.port, url.scheme)
    version = client.get("/api/v1/namespaces")["metadata"]["resourceVersion"]
    watches = [client.watch("/api/v1/namespaces", version, timeout_s=30) for _ in range(WATCHES)]
    failed: list[BaseException] = []
    together = threading.Barrier(WRITERS, timeout=30)

    def requests() -> None:
        try:
            for _ in range(20):
                together.wait()  # every thread's request in flight at once
                client.get("/api/v1/namespaces/default")
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    threads = [threading.Thread(target=requests) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for watch in watches:
        watch.stop()
    assert not failed, failed
    # With eight kept (five of them the watches'), each round opened three more and closed
    # them after.
    assert pool.num_connections <= WATCHES + WRITERS, pool.num_connections
