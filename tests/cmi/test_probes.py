"""cmi's liveness rule: stuck loops fail the probe, a standby or a waiting leader does not."""

from __future__ import annotations

import re
import socket

import pytest
from prometheus_client import CollectorRegistry

from cmi.probes import STALL_S, Liveness, liveness, serve
from slb.config import ConfigError

NOW = 10_000.0


def test_a_standby_whose_campaign_turns_is_alive() -> None:
    assert liveness(NOW, campaign_turn=NOW - 2, leading=False, controller_turn=None) == Liveness(
        True, "standing by (another cmi leads)"
    )


def test_a_leader_whose_loops_turn_is_alive() -> None:
    state = liveness(NOW, campaign_turn=NOW - 1, leading=True, controller_turn=NOW - 5)
    assert state == Liveness(True, "leading")


def test_a_stuck_campaign_fails_leading_or_not() -> None:
    for leading in (False, True):
        state = liveness(NOW, campaign_turn=NOW - STALL_S - 1, leading=leading,
                         controller_turn=NOW)  # fmt: skip
        assert not state.ok
        assert state.reason == "the Lease campaign has not turned for 61 s"


def test_a_leader_with_a_stuck_controller_or_a_dead_thread_fails() -> None:
    stuck = liveness(NOW, campaign_turn=NOW, leading=True, controller_turn=NOW - 300)
    assert stuck == Liveness(False, "the controller has not turned for 300 s")
    dead = liveness(NOW, campaign_turn=NOW, leading=True, controller_turn=NOW,
                    dead_threads=["handoff"])  # fmt: skip
    assert dead == Liveness(False, "leading, but handoff died")


def test_a_leader_still_loading_its_first_snapshot_is_alive() -> None:
    assert liveness(NOW, campaign_turn=NOW, leading=True, controller_turn=None).ok


def test_a_busy_or_malformed_address_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(ConfigError, match=re.escape(f"cannot listen on {address}")):
            serve(address, lambda: Liveness(True, ""), CollectorRegistry())
    with pytest.raises(ConfigError, match=re.escape("health_bind: expected HOST:PORT, got '9643'")):
        serve("9643", lambda: Liveness(True, ""), CollectorRegistry())
