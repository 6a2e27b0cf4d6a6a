"""The whole platform, as `slb dev up` runs it, once for the end-to-end tests.

Its VIP pool and the gRPC samples get a 198.19.N.0/24 of their own, so the tests can run
beside a developer's `slb dev up`; the drift re-assertion runs every 5 s and an
unacknowledged task comes back after 15 s, so the tests see both within their time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmi.devbed import demo
from cmi.devbed.platform import DevPlatform
from tests.l7.harness import free_octet

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
        tuning={"celery": {"reassert_s": REASSERT_S, "visibility_timeout_s": VISIBILITY_TIMEOUT_S}},
    )
    try:
        platform.up(print)
        demo.apply(platform.kube(), platform.apps())  # the sample apps every test starts from
        yield platform
    finally:
        platform.down(print)
