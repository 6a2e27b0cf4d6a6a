"""Pods change under an L7 VIP on the real one-node cluster, with gRPC calls throughout.

Each test deploys its own echo-basic Deployment (demo.DeploymentApp: 3 replicas, tcpSocket
readiness probe every second, preStop sleep 5 s) behind a labelled LoadBalancer Service
(appProtocol h2c), waits for the VIP, changes the pods under `EchoLoad`, and deletes
everything afterwards. The last test does the same for an L4 VIP on the lab VM's IPVS,
whose real servers are the pods.

What keeps calls whole: an endpoint is withdrawn as soon as its pod terminates (the preStop
sleep keeps the pod serving meanwhile), a new pod's only once it is Ready. What does not:
a pod killed outright takes down the calls it holds. Envoy's retry policy for every route
(l7/translate/policy.py RETRY_ON) retries a call only where the pod cannot have acted on it:
connect-failure, refused-stream, reset-before-request, and the gRPC statuses unavailable,
resource-exhausted, cancelled (NUM_RETRIES 2, never on the host already tried). A call
already sent when the pod's connection resets is not retried (`reset` is not in the list:
the pod may have acted on it), so those fail: at most one per client, as each client has
one call in flight.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from devbed import demo, grpcecho, podtraffic
from devbed.demo import DeploymentApp
from devbed.envoy import EnvoyProxy
from devbed.labnode import POD_PORT
from devbed.platform import LAB_GROUP, SAMPLE_PORT, DevPlatform
from devbed.podtraffic import EchoLoad, PodWatch, deployed, envoy_hosts, ready_to_traffic_ms
from devbed.process import connects, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

CLIENTS = 8
PROBE_PERIOD_S = 1
"""demo.DeploymentApp's readiness probe period."""
PROPAGATION_S = 2.0
"""Pod deleted -> EndpointSlice -> cmi (at once, or a 75 ms hold-off in a burst) -> Redis ->
slb xds -> Envoy: a fraction of a second when idle (bench/pipeline: label -> answer p99
0.12 s); 2 s on two busy cores."""


@pytest.fixture
def envoy(platform: DevPlatform) -> EnvoyProxy:
    return podtraffic.platform_envoy(platform)


def gone_from_envoy(envoy: EnvoyProxy, cluster: str, host: str) -> float:
    """Seconds until Envoy no longer has `host` in `cluster`."""
    return wait_until(lambda: host not in envoy_hosts(envoy, cluster), 30,
                      f"{host} gone from Envoy", interval=0.02)  # fmt: skip


def assert_at_most_calls_in_flight_failed(load: EchoLoad, since: float) -> None:
    """Only calls the pod held when it went may fail (module doc): one per client at most."""
    assert not load.cut_short
    assert load.result.failed <= CLIENTS, load.result.errors
    assert load.result.failed_since(since) == load.result.failed


def test_a_rolling_update_fails_no_call_and_ends_on_the_new_pods(platform: DevPlatform) -> None:
    kube = platform.kube()
    app = DeploymentApp("roll", "grpc", SAMPLE_PORT)
    with deployed(kube, app) as target:
        old = set(podtraffic.pods(kube, app))
        with PodWatch(kube, app.name) as watch, EchoLoad(target, clients=CLIENTS) as load:
            demo.apply(kube, [replace(app, version="v2")])
            new = podtraffic.wait_settled(kube, app)
            time.sleep(1.0)  # calls go on to the new pods alone for a while
        result = load.result
        print(f"rolling update: {result.ok} calls in {result.seconds:.1f} s, {result.failed} "
              f"failed, by pod {dict(result.by_pod)}; Ready -> first answer (ms) "
              f"{ready_to_traffic_ms(watch, result)}")  # fmt: skip
        assert not load.cut_short, "a bound of the load ended it before the update did"
        assert result.ok > 500
        assert result.failed == 0, result.errors
        assert len(new) == 3
        assert not new & old
        assert set(watch.ready_at) == new
        assert set(result.by_pod) == old | new, "every pod, old and new, answered on the way"
        assert set(grpcecho.who(target, 30)) == new


def test_a_pod_killed_under_load_fails_at_most_its_calls_in_flight(
    platform: DevPlatform, envoy: EnvoyProxy
) -> None:
    kube = platform.kube()
    app = DeploymentApp("kill", "grpc", SAMPLE_PORT)
    cluster = podtraffic.listener(app)
    with deployed(kube, app) as target:
        victim, victim_ip = sorted(podtraffic.pods(kube, app).items())[0]
        host = f"{victim_ip}:{grpcecho.PORT}"
        assert host in envoy_hosts(envoy, cluster)
        with EchoLoad(target, clients=CLIENTS) as load:
            time.sleep(1.0)
            killed = time.monotonic()
            podtraffic.force_delete_pod(kube, victim)
            gone_after = gone_from_envoy(envoy, cluster, host)
            dead_after = wait_until(lambda: not connects(victim_ip, grpcecho.PORT), 60,
                                    f"{victim} stops listening", interval=0.02)  # fmt: skip
            running = podtraffic.wait_settled(kube, app)  # with the ReplicaSet's replacement
            time.sleep(1.0)
        result = load.result
        print(f"pod {victim} killed: gone from Envoy after {gone_after * 1000:.0f} ms, its "
              f"server down {dead_after * 1000:.0f} ms later; {result.ok} calls, "
              f"{result.failed} failed: {dict(result.errors)}")  # fmt: skip
        assert gone_after <= PROBE_PERIOD_S + PROPAGATION_S
        assert_at_most_calls_in_flight_failed(load, killed)
        assert result.by_pod[victim] > 0
        assert victim not in running
        assert set(grpcecho.who(target, 30)) == running


def test_scaling_3_to_30_to_3_under_load(platform: DevPlatform) -> None:
    kube = platform.kube()
    app = DeploymentApp("scale", "grpc", SAMPLE_PORT)
    with deployed(kube, app) as target:
        with PodWatch(kube, app.name) as watch, EchoLoad(target, clients=CLIENTS) as load:
            up = podtraffic.wait_settled(kube, podtraffic.scale(kube, app, 30))
            load.wait_answered(up)
            going_down = time.monotonic()
            left = podtraffic.wait_settled(kube, podtraffic.scale(kube, app, 3))
            time.sleep(1.0)
        result = load.result
        latency = ready_to_traffic_ms(watch, result)
        print(f"3 -> 30 -> 3: {result.ok} calls in {result.seconds:.1f} s, {result.failed} "
              f"failed: {dict(result.errors)}; Ready -> first answer of 27 new pods: max "
              f"{max(latency.values()):.0f} ms")  # fmt: skip
        assert not load.cut_short
        assert set(result.first_answer) == up
        assert len(latency) == 27
        assert result.failed_since(going_down) == 0, result.errors
        assert result.failed == 0, result.errors
        assert len(left) == 3
        assert set(grpcecho.who(target, 30)) == left


def test_a_crashed_server_fails_at_most_its_calls_in_flight_and_comes_back(
    platform: DevPlatform, envoy: EnvoyProxy
) -> None:
    """The pod stays and its container restarts: the readiness probe takes the endpoint out
    meanwhile, and new calls that reach the dead server are refused, so retried elsewhere."""
    kube = platform.kube()
    app = DeploymentApp("crash", "grpc", SAMPLE_PORT)
    cluster = podtraffic.listener(app)
    with deployed(kube, app) as target:
        victim, victim_ip = sorted(podtraffic.pods(kube, app).items())[0]
        host = f"{victim_ip}:{grpcecho.PORT}"
        with EchoLoad(target, clients=CLIENTS) as load:
            time.sleep(1.0)
            crashed = time.monotonic()
            podtraffic.crash(victim)
            gone_after = gone_from_envoy(envoy, cluster, host)
            wait_until(lambda: host in envoy_hosts(envoy, cluster), 60,
                       f"{host} back in Envoy", interval=0.1)  # fmt: skip
            back = time.monotonic()
            wait_until(lambda: load.result.last_answer.get(victim, 0) > back, 30,
                       f"{victim} answering again", interval=0.05)  # fmt: skip
        result = load.result
        print(f"{victim}'s server crashed: gone from Envoy after {gone_after * 1000:.0f} ms, "
              f"back after {(back - crashed):.1f} s; {result.ok} calls, {result.failed} failed: "
              f"{dict(result.errors)}")  # fmt: skip
        assert gone_after <= PROBE_PERIOD_S + PROPAGATION_S
        assert_at_most_calls_in_flight_failed(load, crashed)
        assert set(podtraffic.pods(kube, app)) >= {victim}


def test_a_tcp_vip_on_the_lab_vms_ipvs_reaches_the_pods_and_follows_a_scale(
    platform: DevPlatform,
) -> None:
    """The L4 tier reaches the cluster's pods: IPVS in the lab VM forwards (NAT) to pod IPs
    on the host's pod bridge, and only to the ready ones as the Deployment scales."""
    kube, node = platform.kube(), platform.lab_node()
    app = DeploymentApp("tcp", "tcp", POD_PORT, node_group=LAB_GROUP)

    def who(target: str, connections: int) -> list[str]:
        return node.tcp(target, count=connections)

    with deployed(kube, app, who=who) as target:
        for replicas in (1, 3):
            app = podtraffic.scale(kube, app, replicas)
            running = podtraffic.wait_settled(kube, app)

            def only_running(answers: list[str], want: set[str] = running) -> bool:
                return set(answers) == want

            answers = demo.eventually(lambda: who(target, 12), only_running, 60)
            print(f"{replicas} replica(s): {target} answered by {sorted(set(answers))}")
            assert set(answers) == running
