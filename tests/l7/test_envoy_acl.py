"""Access control at L7 (#17 item 2): a listener's allowed and denied client networks,
enforced by a real Envoy on each connection's own peer address."""

from __future__ import annotations

import http.client
from typing import Any

from devbed.l7harness import Bed, http_request, listener, load_balancer, service
from devbed.process import wait_until
from slb.snapshot import Put
from slb.storage.store import Store


def _answer(vip: str, source: str) -> int | str:
    """The status a client at `source` gets, or how its connection ended."""
    try:
        return http_request(vip, 8080, "shop.test", "/", source=source).status
    except (ConnectionError, http.client.RemoteDisconnected) as exc:
        return type(exc).__name__


def test_allowed_and_denied_sources_decide_who_connects(store: Store, bed: Bed) -> None:
    (b1,) = bed.backends(["b1"])
    vip = bed.net.address(8)
    allowed, other, denied = (bed.net.address(h) for h in (41, 42, 43))

    def web(**acl: Any) -> Put:
        return Put(listener("web", "HTTP", 8080, app="web", target_port="http",
                            health_check=None, **acl))  # fmt: skip

    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("web", [(b1.address, b1.http_port)], port_name="http")),
        web(allowed_sources=[f"{allowed}/32", f"{denied}/32"], denied_sources=[f"{denied}/32"]),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: _answer(vip, allowed) == 200, 30, "the allowed client is answered")
    refused = {_answer(vip, other), _answer(vip, denied)}
    assert 200 not in refused, refused  # closed at accept: no HTTP answer at all
    # Opened to every address: the other client is served from the next revision on; the
    # denied one still is not.
    store.apply([web(denied_sources=[f"{denied}/32"])])
    wait_until(lambda: _answer(vip, other) == 200, 10, "the listener opened")
    assert _answer(vip, denied) != 200
    assert _answer(vip, allowed) == 200
    store.apply([web()])
    wait_until(lambda: _answer(vip, denied) == 200, 10, "the deny list lifted")
