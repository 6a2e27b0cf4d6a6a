"""The agent end to end in the lab VM: store -> kernel, status, ownership across restarts."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.process import wait_until
from devbed.redis import RedisServer, lose
from l4.drivers import Driver
from l4.ipvs import ServiceKey
from l4.ownership import AgentError
from slb.cli import main
from slb.snapshot import Delete
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.l4.conftest import INTERFACE, AgentFactory, following

pytestmark = pytest.mark.lab

WEB = ServiceKey("TCP", "198.18.0.10", 80)
DNS = ServiceKey("UDP", "198.18.0.10", 53)
BACKENDS = [("198.18.1.1", 8080, 1), ("198.18.1.2", 8080, 2)]


def desired_state(store: Store) -> int:
    return put(
        store,
        node_group(("lb-a", "198.18.255.15"), ("lb-b", "198.18.255.16")),
        load_balancer("198.18.0.10"),
        listener("web", 80),
        listener("dns", 53, protocol="UDP", app="dns"),
        service("web", BACKENDS),
        service("dns", [("198.18.1.1", 53, 1)], app="dns", protocol="UDP"),
    )


def owned(store: Store) -> set[str]:
    return {m.decode() for m in store.redis.smembers(store.key("l4", "lb-a", "owned"))}


def vips_on_interface() -> str:
    return subprocess.run(
        ["ip", "-o", "addr", "show", "dev", INTERFACE], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("driver_name", ["pyroute2", "ipvsadm"])
def test_sync_to_programs_the_node_and_reports_it(
    store: Store, agent_factory: AgentFactory, observer: Driver, driver_name: str
) -> None:
    agent = agent_factory(driver_name)
    revision = desired_state(store)
    report = agent.sync_to(revision)
    assert report.errors == []
    assert report.revision == revision
    assert report.vips_added == ["198.18.0.10"]
    assert len(report.operations) == 2 + 3
    services = observer.dump().services
    assert set(services) == {WEB, DNS}
    assert [(d.address, d.weight) for d in services[WEB].dests] == [
        ("198.18.1.1", 1), ("198.18.1.2", 2)
    ]  # fmt: skip
    assert "inet 198.18.0.10/32" in vips_on_interface()
    assert owned(store) == {WEB.encode(), DNS.encode()}
    status = StatusBoard(store).all("l4")["lb-a"]
    assert (status.revision, status.group, status.error) == (revision, "default", None)

    assert agent.sync_to(revision).already
    again = agent.sync()
    assert again.operations == []
    assert again.errors == []


@pytest.mark.parametrize("driver_name", ["pyroute2", "ipvsadm"])
def test_a_restarted_agent_repairs_the_kernel_and_removes_what_is_gone(
    store: Store, agent_factory: AgentFactory, observer: Driver, driver_name: str
) -> None:
    first = agent_factory(driver_name)
    first.sync_to(desired_state(store))
    first.stop()
    # a crash left one weight at 0, and someone added a service by hand meanwhile
    subprocess.run(["ipvsadm", "-e", "-t", "198.18.0.10:80", "-r", "198.18.1.2:8080", "-m",
                    "-w", "0"], check=True)  # fmt: skip
    subprocess.run(["ipvsadm", "-A", "-t", "198.18.0.99:22", "-s", "rr"], check=True)

    second = agent_factory(driver_name)
    repaired = second.sync()
    assert repaired.operations == ["set-dest TCP 198.18.0.10:80 -> 198.18.1.2:8080 nat w2"]
    report = json.loads(store.redis.get(second.report_key) or b"{}")
    assert report["foreign"] == ["TCP 198.18.0.99:22"]

    gone = store.apply([Delete("Listener", "web"), Delete("Listener", "dns")])
    result = second.sync_to(gone)
    assert sorted(result.operations) == ["delete-service TCP 198.18.0.10:80",
                                         "delete-service UDP 198.18.0.10:53"]  # fmt: skip
    assert result.vips_removed == ["198.18.0.10"]
    assert set(observer.dump().services) == {ServiceKey("TCP", "198.18.0.99", 22)}
    assert owned(store) == set()
    assert "198.18.0.10" not in vips_on_interface()


def test_forced_sync_repairs_what_the_agent_believes_is_fine(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    """The pipeline's periodic re-assertion: a rule deleted by hand comes back."""
    agent = agent_factory()
    revision = desired_state(store)
    agent.sync_to(revision)
    subprocess.run(["ipvsadm", "-D", "-u", "198.18.0.10:53"], check=True)
    assert agent.sync_to(revision).already
    assert DNS not in observer.dump().services
    repaired = agent.sync_to(revision, force=True)
    assert repaired.operations == [
        "add-service UDP 198.18.0.10:53 rr",
        "add-dest UDP 198.18.0.10:53 -> 198.18.1.1:53 nat w1",
    ]
    assert DNS in observer.dump().services


def test_a_requested_repair_runs_beside_the_tasks_on_the_next_tick(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    """A node's worker runs one task at a time: the re-assertion only asks for the repair,
    and the housekeeping makes it, reading the kernel outside the kernel's lock."""
    agent = agent_factory()
    revision = desired_state(store)
    agent.sync_to(revision)
    assert agent.view is not None
    kernel = observer.dump().services
    assert {k: v for k, v in agent.view.services.items() if v != kernel.get(k)} == {}, (
        "the view is the kernel: a drift check finds nothing to read again"
    )
    subprocess.run(["ipvsadm", "-D", "-u", "198.18.0.10:53"], check=True)
    subprocess.run(["ipvsadm", "-e", "-t", "198.18.0.10:80", "-r", "198.18.1.1:8080", "-m",
                    "-w", "9"], check=True)  # fmt: skip
    agent.request_repair()
    assert DNS not in observer.dump().services  # asked for, not made yet
    agent.tick()
    repaired = observer.dump().services
    assert DNS in repaired
    assert {d.address: d.weight for d in repaired[WEB].dests}["198.18.1.1"] == 1


def test_the_periodic_resync_repairs_drift_too(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    """Every `resync_interval_s` the agent reads the kernel in full again, outside the
    kernel's lock, as a repair does."""
    agent = agent_factory(resync_interval_s=1)
    agent.sync_to(desired_state(store))
    subprocess.run(["ipvsadm", "-D", "-u", "198.18.0.10:53"], check=True)
    time.sleep(1.1)
    agent.tick()
    assert DNS in observer.dump().services


def test_a_statistics_sample_gives_way_while_a_change_is_applied(
    store: Store, agent_factory: AgentFactory
) -> None:
    """The statistics' full read (as the drift repair's) pauses between services while a
    sync runs (here: holds the sync's lock), so that a change does not queue for the
    interpreter lock behind it; it goes on once the change is done."""
    agent = agent_factory()
    agent.sync_to(desired_state(store))
    done = threading.Event()

    def housekeeping() -> None:
        agent.sample_stats()
        done.set()

    with agent._following:
        worker = threading.Thread(target=housekeeping)
        worker.start()
        assert not done.wait(1.0), "the read waits while a change is applied"
    assert done.wait(30), "and goes on after it"
    worker.join()


def test_a_sync_re_plans_what_the_stream_says_changed_and_all_after_a_fresh_snapshot(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    agent = agent_factory()
    agent.sync_to(desired_state(store))
    assert agent.plan is not None
    dns = agent.plan.services[DNS]
    put(store, service("web", [*BACKENDS, ("198.18.1.3", 8080, 1)]))
    assert agent.sync().errors == []
    assert agent.plan.services[DNS] is dns  # untouched: handed over, not planned again
    assert len(observer.dump([WEB]).services[WEB].dests) == 3

    put(store, service("web", BACKENDS))
    store.redis.xtrim(store.key("changes"), maxlen=0)  # the stream cannot say what changed
    assert agent.sync().errors == []
    assert agent.plan.services[DNS] is not dns
    assert agent.plan.services[DNS] == dns
    assert len(observer.dump([WEB]).services[WEB].dests) == 2

    dns = agent.plan.services[DNS]
    assert agent.sync(full=True).operations == []
    assert agent.plan.services[DNS] is not dns  # `full`: read and planned anew


def test_one_agent_per_node(store: Store, agent_factory: AgentFactory) -> None:
    agent_factory()
    with pytest.raises(AgentError, match="another l4 agent programs this node"):
        agent_factory()


def test_a_node_in_no_group_holds_nothing_and_says_why(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    agent = agent_factory()
    agent.sync_to(desired_state(store))
    revision = put(store, node_group(("lb-b", "198.18.255.16")))
    report = agent.sync_to(revision)
    assert report.problems == ["node 'lb-a' is not in any node group"]
    assert observer.dump().services == {}


def test_the_follow_loop_applies_new_revisions(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    with following(agent_factory()):
        desired_state(store)
        wait_until(lambda: WEB in observer.dump().services, timeout=20, what="first revision")
        put(store, service("web", [*BACKENDS, ("198.18.1.3", 8080, 1)]))
        wait_until(
            lambda: len(observer.dump([WEB]).services[WEB].dests) == 3,
            timeout=20, what="new backend programmed",
        )  # fmt: skip
        # The kernel is programmed before the status is written: wait for the report too.
        wait_until(
            lambda: StatusBoard(store).all("l4")["lb-a"].revision == store.revision(),
            timeout=20, what="status reports the new revision",
        )  # fmt: skip


def test_a_lost_store_leaves_the_node_serving_until_cmi_has_rebuilt_it(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    board = StatusBoard(store)
    agent = agent_factory()
    with following(agent):
        desired_state(store)
        wait_until(lambda: WEB in observer.dump().services, timeout=20, what="first revision")
        assert not agent.collector.held()
        assert lose(store)  # Redis lost its data

        def holding() -> bool:
            status = board.all("l4").get("lb-a")
            return bool(status and (status.error or "").startswith("holding: the store is empty"))

        wait_until(holding, timeout=20, what="the agent holds and says why")
        assert board.alarms()["l4 lb-a"].startswith("the store is empty")  # the console's banner
        assert agent.collector.held()  # openslb_l4_store_held
        identity = store.identity()  # cmi rebuilds: half of it is written
        store.mark_syncing(identity)
        put(store, node_group(("lb-a", "198.18.255.15")), load_balancer("198.18.0.10"),
            listener("web", 80), service("web", BACKENDS[:1]))  # fmt: skip
        time.sleep(1.5)  # several steps of the loop (200 ms each)
        assert set(observer.dump().services) == {WEB, DNS}
        assert len(observer.dump([WEB]).services[WEB].dests) == 2
        assert "inet 198.18.0.10/32" in vips_on_interface()
        assert store.mark_synced(identity, store.revision()) is not None
        wait_until(lambda: set(observer.dump().services) == {WEB}, timeout=20,
                   what="the rebuilt store applied")  # fmt: skip
        assert len(observer.dump([WEB]).services[WEB].dests) == 1
        wait_until(lambda: owned(store) == {WEB.encode()}, timeout=10, what="ownership kept")
        wait_until(lambda: not board.all("l4")["lb-a"].error, timeout=10, what="alarm cleared")
        assert "l4 lb-a" not in board.alarms()
        assert not agent.collector.held()


def test_a_rebuilt_store_that_lost_the_operators_objects_waits_for_an_operator(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    """cmi rebuilds only what Kubernetes holds: a node group lost with the store would take
    every service off the node, so the agent holds until an operator adopts the store."""
    board = StatusBoard(store)
    with following(agent_factory()):
        desired_state(store)
        wait_until(lambda: WEB in observer.dump().services, timeout=20, what="first revision")
        assert lose(store)

        def alarm() -> str:
            return board.alarms().get("l4 lb-a", "")

        wait_until(lambda: alarm().startswith("the store is empty"), timeout=20, what="held")
        identity = store.identity()  # cmi's rebuild: its own objects, no node group
        put(store, load_balancer("198.18.0.10"), listener("web", 80), service("web", BACKENDS))
        assert store.mark_synced(identity, store.revision()) is not None

        wait_until(lambda: "would take 2 of the 2 IPVS services" in alarm(), timeout=20,
                   what="the agent holds and says why")  # fmt: skip
        assert set(observer.dump().services) == {WEB, DNS}
        assert "inet 198.18.0.10/32" in vips_on_interface()
        assert store.mark_synced(identity, store.revision(), adopted=True) is not None
        wait_until(lambda: observer.dump().services == {}, timeout=20, what="adopted: applied")
        wait_until(lambda: not alarm(), timeout=10, what="alarm cleared")


def test_a_restarted_agent_remembers_what_it_applied(
    store: Store, agent_factory: AgentFactory, observer: Driver
) -> None:
    """Redis cannot tell a restarted agent that it lost its data since: the agent's own
    record on the node's disk does."""
    first = agent_factory()
    first.sync_to(desired_state(store))
    first.stop()
    assert lose(store)
    identity = store.identity()  # rebuilt by cmi, without the operators' node group
    put(store, load_balancer("198.18.0.10"), listener("web", 80), service("web", BACKENDS))
    assert store.mark_synced(identity, store.revision()) is not None
    second = agent_factory()
    report = second.sync()
    assert report.errors
    assert "would take 2 of the 2 IPVS services" in report.errors[0]
    assert set(observer.dump().services) == {WEB, DNS}
    assert "inet 198.18.0.10/32" in vips_on_interface()
    put(store, node_group(("lb-a", "198.18.255.15")))  # the operator puts it back
    report = second.sync()
    assert report.errors == []  # what it made is still its own, though Redis forgot
    assert set(observer.dump().services) == {WEB}
    assert owned(store) == {WEB.encode()}


def test_slb_l4_agent_once(
    store: Store, redis_server: RedisServer, observer: Driver, tmp_path: Path
) -> None:
    revision = desired_state(store)
    env = {
        "OPENSLB_REDIS_URL": redis_server.url,
        "OPENSLB_REDIS_PREFIX": store.prefix,
        "OPENSLB_L4_INTERFACE": INTERFACE,
        "OPENSLB_L4_STATE_DIR": str(tmp_path),
    }
    try:
        result = CliRunner().invoke(main, ["l4-agent", "--node", "lb-a", "--once"], env=env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["revision"] == revision
        assert set(observer.dump().services) == {WEB, DNS}
    finally:
        subprocess.run(["ip", "link", "del", INTERFACE], check=False)
