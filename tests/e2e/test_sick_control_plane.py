"""A sick control plane never removes traffic: each chaos scenario once, under live traffic
through both tiers (`bench.chaos` measures them)."""

from __future__ import annotations

import pytest

from devbed import chaos
from devbed.platform import LAB_NODE, DevPlatform

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("scenario", ["redis_flush", "wrong_prefix", "redis_rewind"])
def test_the_data_planes_keep_serving(platform: DevPlatform, scenario: str) -> None:
    outcome = chaos.SCENARIOS[scenario](platform)
    print(outcome.summary())
    assert outcome.l7_ok > 50, "gRPC calls crossed Envoy throughout"
    assert outcome.l4_ok > 5, "connections crossed IPVS throughout"
    assert outcome.failed == 0, outcome
    assert outcome.vips_changed == 0
    assert outcome.alarms_left == {}
    if scenario != "redis_rewind":  # a rewind may be rebuilt before a consumer looks
        assert {"xds", f"l4 {LAB_NODE}"} <= set(outcome.alarms), outcome.alarms


def test_health_checks_depool_while_the_nodes_redis_link_is_black_holed(
    platform: DevPlatform,
) -> None:
    """The worker's agent, its link to Redis dead (no FIN, no RST), still takes a dead pod
    out of IPVS; `bench.chaos` compares the time with the check's own interval x threshold."""
    seconds = chaos.redis_blackhole_depool(platform)
    print(f"depooled {seconds:.2f} s after the pod died")
