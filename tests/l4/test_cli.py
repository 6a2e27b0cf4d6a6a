"""`slb l4-agent`: settings are checked and named before anything touches the kernel."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slb.cli import main


def test_the_node_is_required() -> None:
    result = CliRunner().invoke(main, ["l4-agent"], env={"OPENSLB_L4_NODE": ""})
    assert result.exit_code == 2
    assert "--node" in result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OPENSLB_L4_DRIVER": "iptables"}, "l4.driver"),
        ({"OPENSLB_L4_HEALTHY_FLOOR": "1.5"}, "l4.healthy_floor"),
        ({"OPENSLB_L4_DRAIN_TIMEOUT_S": "-1"}, "l4.drain_timeout_s"),
        ({"OPENSLB_L4_STATS_INTERVAL_S": "0"}, "l4.stats_interval_s"),
        ({"OPENSLB_L4_METRICS_LISTEN": "9641"}, "l4.metrics_listen"),
        ({"OPENSLB_L4_INTERFACE": "a-very-long-interface"}, "l4.interface"),
    ],
)
def test_bad_settings_are_refused_by_name(env: dict[str, str], named: str) -> None:
    result = CliRunner().invoke(main, ["l4-agent", "--node", "lb-a"], env=env)
    assert result.exit_code == 2
    assert named in result.output
