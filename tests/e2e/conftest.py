"""The whole platform, as `slb dev up` runs it, once for the end-to-end tests.

Its VIP pool and the gRPC samples get a 198.19.N.0/24 of their own; the one-node cluster
cannot be shared (one runs on a machine at a time), so the tests do not run beside a
developer's `slb dev up`, nor beside tests/devbed/test_cluster.py's `kube_node` (gone with
its module). The drift re-assertion runs every 5 s and an unacknowledged task comes back
after 15 s, so the tests see both within their time. `platform.cluster` is the cluster
(`.kubeconfig`, `.client()`); `platform.deployments()` and devbed.demo apply Deployments and
wait for their pods and VIPs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from devbed import conformance, demo
from devbed.l7harness import free_octet
from devbed.platform import DevPlatform

REASSERT_S = 5
VISIBILITY_TIMEOUT_S = 15


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPlatform]:
    """The whole platform, down as soon as tests/e2e is done: its emulated VM and workers
    would otherwise slow every test that runs after it (the lab VM's run above all)."""
    octet = free_octet()
    platform = DevPlatform(
        tmp_path_factory.mktemp("platform"),
        vip_cidr=f"198.19.{octet}.0/25",
        sample_cidr=f"198.19.{octet}.128/25",
        tuning={
            "celery": {"reassert_s": REASSERT_S, "visibility_timeout_s": VISIBILITY_TIMEOUT_S},
            # The conformance suite's hand-made EndpointSlices (its HTTPRouteServiceTypes).
            "cmi": {"endpoint_slices_from": f"{demo.NAMESPACE},{conformance.SUITE_NAMESPACE}"},
        },
    )
    try:
        platform.up(print)
        demo.apply(platform.kube(), platform.apps())  # the sample apps every test starts from
        yield platform
    finally:
        platform.down(print)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed end-to-end test shows the last lines of every component's log: the cause
    (a thread that died, a refused config) is usually there, not in the assertion."""
    report = yield
    platform = getattr(item, "funcargs", {}).get("platform")
    if report.failed and call.when == "call" and isinstance(platform, DevPlatform):
        for name, component in platform.components().items():
            report.sections.append((f"log of {name}", _tail(Path(component.log), 40)))
    return report


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})"
