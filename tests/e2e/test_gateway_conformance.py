"""The Gateway API conformance suite's core tests of profiles GATEWAY-HTTP, GATEWAY-GRPC and
GATEWAY-TLS (v1.6.3) against the whole platform: every one must pass (`python -m bench.gateway` runs
the whole profiles and keeps their report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devbed import conformance
from devbed.platform import DevPlatform
from devbed.process import wait_until
from slb.model import Listener, OwnerKind

pytestmark = pytest.mark.timeout(900)


def test_the_core_tests_of_gateway_http_grpc_and_tls_pass(
    platform: DevPlatform, tmp_path: Path
) -> None:
    core = (*conformance.CORE_HTTP_TESTS, *conformance.CORE_GRPC_TESTS,
            *conformance.CORE_TLS_TESTS)  # fmt: skip
    # With every feature openslb claims, as bench.gateway runs them: a core test may ask
    # for a refusal of what is not claimed (TLSRouteListenerTerminateNotSupported).
    run = conformance.run(platform.cluster.kubeconfig, tmp_path, tests=core, timeout_s=800)
    top = {name: state for name, state in run.results.items() if "/" not in name}
    assert run.named("FAIL") == [], "\n".join(run.errors())
    assert sorted(n for n, s in top.items() if s == "PASS") == sorted(core), run.output[-3000:]

    # The suite deleted its namespaces: what their Gateways made leaves the store.
    def from_the_suite() -> list[str]:
        listeners = platform.store().all(Listener).values()
        return [s.obj.name for s in listeners if s.obj.owner.kind is OwnerKind.GATEWAY
                and s.obj.owner.name.startswith("gateway-conformance")]  # fmt: skip

    wait_until(lambda: not from_the_suite(), 120, "the suite's Gateways withdrawn", interval=1)
