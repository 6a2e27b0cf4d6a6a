"""Label -> first successful call, through the whole platform as `slb dev up` runs it.

Each trial creates a selector-less Service with its EndpointSlice, unlabelled, waits 0.3 s
(QUIET_S: the label is a change of its own, as an operator's would be), then sets
`openslb.io/expose` and times how long until a client first gets an answer through the
VIP. The trial Services share an operator's instance with a fixed VIP (the label names
it), so the client knows where to call before the status says so; each trial has a port
of its own. Everything in between is real: the API server's watch, cmi's hold-off and
Redis write, the Celery hand-off, the xDS push to Envoy or the l4 agent's netlink apply in
the lab VM.

- L7: a new channel per attempt (no reconnect backoff), `Who` with a 0.25 s deadline,
  every 5 ms, from the host to the Envoy of node group `default`.
- L4: the client in the VM's client namespace connects afresh every 0.2 s until answered
  (a socket per try: the VIP guard drops a SYN to a port not open yet, and one connection
  would wait a second for the kernel's retransmit); the host sees the answer through
  Redis (polled every 5 ms).
  The VM is emulated (TCG), so these figures are an upper bound for a real LB node.
- Then the L7 trials again with `--others` (1,000) more exposed gRPC Services, each with
  its own VIP and Envoy listener; and the L4 trials again with as many more TCP listeners
  on the lab node's instance (each a port of its own: IPVS services in the VM).
- Each L7 trial is split where the store's revision moves (polled every 3 ms): label ->
  the desired state in Redis (the API server's watch, cmi's hold-off and write), then Redis
  -> the first answer (`slb xds` follows the stream, translates, pushes; Envoy applies).
  The CPU seconds each component spends during the trials with others are kept too: on two
  cores, the slowest trials are the ones that wait for a core.
- And a burst: 1,000 revisions in a row for node lb1; how many applies it costs.

`--no-lab` (a size other than the default only) measures L7 alone, without the lab VM:
the emulated VM takes about one of this machine's two cores whatever it does, where a
real LB node is a machine of its own, and nothing on the L7 path goes through it.

    .venv/bin/python -m bench.pipeline [--trials 50] [--others 1000] [--no-lab]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from bench import results_file
from bench.procstat import cpu_seconds
from bench.stalls import StallWatch
from devbed import demo, scenarios
from devbed.platform import LAB_GROUP, LAB_NODE, SAMPLES, DevPlatform
from devbed.process import wait_until
from slb.model import parse
from slb.storage.status import StatusBoard

VIP_CIDR, SAMPLE_CIDR = "198.18.64.0/18", "198.18.48.0/24"
SAMPLE_ENDPOINTS = len(SAMPLES)
"""Each other Service's endpoints unless `--others-endpoints` says otherwise."""
"""16,382 VIPs: room for --others 10000, each with its own."""
DEFAULT_OTHERS = 1000
HEALTH_CHECK_ANNOTATION = "openslb.io/health-check-type"
OWNER = {"kind": "Operator", "name": "bench"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_grpc_answer(
    target: str, timeout: float = 30.0, timed_out: list[float] | None = None
) -> float:
    """Monotonic time of the first successful `Who` call to `target`. An attempt that ran
    to its 0.25 s deadline (a connection that was taken and not answered, unlike a refused
    one, which fails at once) adds its start to `timed_out`: it can hide up to 0.25 s of an
    answer that came meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            demo.grpc_who(target, 1, timeout=0.25)
            return time.monotonic()
        except grpc.RpcError as exc:
            if timed_out is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                timed_out.append(started)
            time.sleep(0.005)
    raise TimeoutError(f"{target} did not answer in {timeout:.0f} s")


class RevisionWatch:
    """When the store's revision first moves past where it was, and, given an l4 agent's
    report key, when that agent first reports serving that revision: a thread polling
    every 3 ms."""

    def __init__(self, platform: DevPlatform, report_key: str | None = None) -> None:
        self.store = platform.store()
        self.since = self.store.revision()
        self.report_key = report_key
        self.moved: float | None = None
        self.applied: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        revision = 0
        while not self._done.is_set() and self.applied is None:
            if self.moved is None:
                revision = self.store.revision()
                if revision > self.since:
                    self.moved = time.monotonic()
            elif self.report_key is None:
                return
            elif (
                json.loads(self.store.redis.get(self.report_key) or "{}").get("revision", 0)
                >= revision
            ):
                self.applied = time.monotonic()
            time.sleep(0.003)

    def stop(self) -> tuple[float | None, float | None]:
        """When the revision moved, and when the agent reported it served."""
        self._done.set()
        self._thread.join()
        return self.moved, self.applied


QUIET_S = 0.3
"""Between creating a trial's Service and labelling it: an operator labels a Service that
exists, not one cmi is still taking in, so the label is a change of its own (written at
once), not the tail of the creation's burst (held back for the hold-off)."""


def trials(
    platform: DevPlatform,
    kind: str,
    count: int,
    first_port: int,
    progress: str,
    *,
    splits: list[tuple[float, ...]] | None = None,
    diagnosis: list[dict[str, float]] | None = None,
    stalls: StallWatch | None = None,
) -> list[float]:
    """`count` label -> first answer latencies (ms) for new Services on instance bench-KIND;
    each trial's parts in ms are added to `splits`: for L7 label -> Redis and Redis ->
    answer, for L4 label -> Redis, Redis -> the lab node's agent reporting it served, and
    then -> answer; for L7 each trial's attempts that timed out, and how long Envoy's main
    thread was stalled (`stalls`) after Redis, to `diagnosis`."""
    kube = platform.kube()
    base = platform.apps()[0 if kind == "l7" else 1]  # grpc-echo; tcp-echo (the lab VM's)
    vip = _fixed_vip(platform, kind)
    latencies = []
    node = platform.lab_node()
    report_key = platform.store().key("l4", LAB_NODE, "report")
    for i in range(count):
        port = first_port + i
        app = replace(base, name=f"{progress}-{i}", port=port, target_port=base.port,
                      expose=None, node_group=None)  # fmt: skip
        demo.apply(kube, [app])
        time.sleep(QUIET_S)
        target = f"{vip}:{port}"
        if kind == "l7":
            watch = RevisionWatch(platform)
            began = time.monotonic()
            demo.label(kube, app.name, f"bench-{kind}")
            hung: list[float] = []
            answered = first_grpc_answer(target, timed_out=hung)
            stored = watch.stop()[0] or answered
            if diagnosis is not None:
                stalled = stalls.overlapping(stored, answered) if stalls else 0.0
                diagnosis.append({"attempts_timed_out": len(hung),
                                  "envoy_stalled_ms": round(stalled * 1000, 1)})  # fmt: skip
            parts: tuple[float, ...] = (stored - began, answered - stored)
        else:
            probe = node.ask_tcp(target, until_s=30)
            time.sleep(0.05)  # the guest has taken the probe and is trying
            watch = RevisionWatch(platform, report_key)
            began = time.monotonic()
            demo.label(kube, app.name, f"bench-{kind}")
            answered = _wait_answer(node.answer, probe)
            moved, applied = watch.stop()
            stored = moved or answered
            applied = min(applied or answered, answered)
            parts = (stored - began, applied - stored, answered - applied)
        if splits is not None:
            splits.append(tuple(part * 1000 for part in parts))
        latencies.append((answered - began) * 1000)
        if (i + 1) % 10 == 0:
            log(f"  {progress}: {i + 1}/{count}, median so far "
                f"{results_file.median(latencies):.0f} ms")  # fmt: skip
    return latencies


def _wait_answer(
    answer: Callable[[str], list[str] | None], probe: str, timeout: float = 60.0
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = answer(probe)
        if got is not None:
            if got[0].startswith("error"):
                raise RuntimeError(f"the VM's client got no answer: {got}")
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError("no answer from the lab VM")


def _fixed_vip(platform: DevPlatform, kind: str) -> str:
    """bench-l7 and bench-l4 live on the samples' network, made local like the pool."""
    network = ipaddress.ip_network(platform.sample_cidr)
    return str(network.network_address + (200 if kind == "l7" else 201))


def create_instances(platform: DevPlatform, lab: bool = True) -> None:
    store = platform.store()
    for kind, group in (("l7", "default"), ("l4", LAB_GROUP))[: 2 if lab else 1]:
        store.put(parse("LoadBalancer", {"name": f"bench-{kind}", "vip": _fixed_vip(platform, kind),
                                         "node_group": group, "owner": OWNER,
                                         "allowed_namespaces": [demo.NAMESPACE]}))  # fmt: skip


def create(platform: DevPlatform, apps: list[demo.SampleApp], what: str) -> None:
    """Create the sample `apps` in the cluster, one by one, saying so every 200."""
    kube = platform.kube()
    for i, app in enumerate(apps):
        demo.apply(kube, [app])
        if (i + 1) % 200 == 0:
            log(f"  {what}: {i + 1}/{len(apps)} created")


def expose_others(
    platform: DevPlatform, count: int, health_check: str | None = None, endpoints: int = 0
) -> None:
    """`count` more gRPC Services, each exposed with its own VIP; wait until Envoy serves all.

    `health_check` "none": the others' listeners check no endpoint (Envoy holds a health-check
    connection per listener and endpoint, and a listener socket each). `endpoints`: how many
    each has (0: the sample backends'; more: then addresses of the sample network no one
    answers on, from its 101st host: no trial calls the others)."""
    log(f"{count} other exposed Services")
    base = platform.apps()[0]
    if health_check:
        base = replace(base, annotations={HEALTH_CHECK_ANNOTATION: health_check})
    if endpoints:
        network = ipaddress.ip_network(SAMPLE_CIDR)
        silent = [str(network.network_address + 101 + i) for i in range(endpoints)]
        base = replace(base, endpoints=[*base.endpoints, *silent][:endpoints])
    began = time.monotonic()
    create(platform, [replace(base, name=f"other-{i}") for i in range(count)], "others")
    store = platform.store()

    def all_served() -> bool:
        listeners = store.snapshot(["Listener"]).objects.get("Listener", {})
        others = sum(1 for key in listeners if "other-" in key)
        envoys = StatusBoard(store).all("l7")
        return others >= count and all(s.revision >= store.revision() for s in envoys.values())

    wait_until(all_served, max(600, count * 0.2), f"{count} other Services on Envoy",
               interval=max(1.0, count / 2000))  # (a poll reads every listener)  # fmt: skip
    log(f"  others: {count} exposed and on Envoy in {time.monotonic() - began:.0f} s")


def expose_l4_others(platform: DevPlatform, count: int, first_port: int) -> None:
    """`count` more TCP Services on the lab node's instance (bench-l4), each a port of its
    own, so the l4 agent in the VM serves `count` more virtual services; wait until it has
    applied them all."""
    tcp_app = platform.apps()[1]
    began = time.monotonic()
    apps = [replace(tcp_app, name=f"l4other-{i}", port=first_port + i, target_port=tcp_app.port,
                    expose="bench-l4", node_group=None) for i in range(count)]  # fmt: skip
    create(platform, apps, "L4 others")
    store = platform.store()

    def all_applied() -> bool:
        listeners = store.snapshot(["Listener"]).objects.get("Listener", {})
        others = sum(1 for key in listeners if "l4other-" in key)
        node = StatusBoard(store).all("l4").get(LAB_NODE)
        return others >= count and node is not None and node.revision >= store.revision()

    wait_until(all_applied, 900, f"{count} other TCP listeners in the lab VM's IPVS", 1.0)
    log(f"  L4 others: {count} exposed and applied in {time.monotonic() - began:.0f} s")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--others", type=int, default=DEFAULT_OTHERS)
    parser.add_argument("--l4-others", type=int, default=None,
                        help="TCP listeners in the lab VM for the L4 crowd (default: --others; "
                        "0: none; the emulated VM takes about 90 s to program 1,000)")  # fmt: skip
    parser.add_argument("--others-health-check", choices=["none"], default=None,
                        help="the others' health check (default: the listener's, tcp); none "
                        "spares Envoy a connection per listener and endpoint, for 10,000 others "
                        "under this machine's 20,000 open files")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep every component's log after a good run too")  # fmt: skip
    parser.add_argument("--others-endpoints", type=int, default=0,
                        help="endpoints each other Service has (default: the 3 sample "
                        "backends'; more are addresses no one answers on, so give the others "
                        "no health check too)")  # fmt: skip
    parser.add_argument("--no-lab", action="store_true",
                        help="L7 alone, without the lab VM (not with the default --others, "
                        "whose run owns the L4 figures)")  # fmt: skip
    args = parser.parse_args()
    if args.no_lab and args.others == DEFAULT_OTHERS:
        parser.error(f"--no-lab leaves L4 out: only with --others other than {DEFAULT_OTHERS}")
    return args


def main() -> None:
    args = _arguments()
    lab = not args.no_lab
    l4_others = 0 if not lab else args.others if args.l4_others is None else args.l4_others
    with tempfile.TemporaryDirectory(prefix="openslb-bench-") as tmp:
        platform = DevPlatform(Path(tmp) / "platform", vip_cidr=VIP_CIDR, sample_cidr=SAMPLE_CIDR,
                               lab=lab)  # fmt: skip
        l4: list[float] = []
        burst: scenarios.Burst | None = None
        try:
            log(f"bringing the platform up ({'with' if lab else 'without'} the lab VM)")
            platform.up(lambda m: log(f"  {m}"))
            platform.show_traffic(lambda m: log(f"  {m}"))
            create_instances(platform, lab)
            log(f"label -> first call, L7, {args.trials} trials")
            splits: dict[str, list[tuple[float, ...]]] = {k: [] for k in SPLIT_PARTS}
            diagnosis: dict[str, list[dict[str, float]]] = {"l7": [], "l7_with_others": []}
            # While the others come, only stalls of 0.25 s or more (minutes of them).
            watches = {kind: StallWatch(f"127.0.0.1:{platform.ports()['envoy_admin']}",
                                        0.25 if kind == "exposing" else 0.05)
                       for kind in (*diagnosis, "exposing")}  # fmt: skip
            with watches["l7"] as stalls:
                l7 = trials(platform, "l7", args.trials, 51000, "l7", splits=splits["l7"],
                            diagnosis=diagnosis["l7"], stalls=stalls)  # fmt: skip
            if lab:
                log(f"label -> first connection, L4 (lab VM), {args.trials} trials")
                l4 = trials(platform, "l4", args.trials, 31000, "l4", splits=splits["l4"])
                log(f"burst: 1,000 revisions for {LAB_GROUP}")
                burst = scenarios.burst_of_revisions(platform, 1000)
                scenarios.remove_burst(platform)
                log(f"  {burst.applies} applies, lb1 at the last revision after "
                    f"{burst.seconds:.1f} s")  # fmt: skip
            with watches["exposing"]:
                expose_others(platform, args.others, args.others_health_check,
                              args.others_endpoints)  # fmt: skip
            log(f"label -> first call, L7 with {args.others} others, {args.trials} trials")
            cpu: dict[str, dict[str, float]] = {}
            with cpu_of(platform, cpu, "l7_with_others"), watches["l7_with_others"] as stalls:
                l7_crowd = trials(platform, "l7", args.trials, 52000, "l7crowd",
                                  splits=splits["l7_with_others"],
                                  diagnosis=diagnosis["l7_with_others"], stalls=stalls)  # fmt: skip
            l4_crowd: list[float] = []
            if l4_others:
                log(f"{l4_others} other TCP listeners on the lab node")
                expose_l4_others(platform, l4_others, 33000)
                log(f"label -> first connection, L4 with {l4_others} others, {args.trials} trials")
                with cpu_of(platform, cpu, "l4_with_others"):
                    l4_crowd = trials(platform, "l4", args.trials, 36000, "l4crowd",
                                      splits=splits["l4_with_others"])  # fmt: skip
        except BaseException:
            keep_logs(platform, "the run failed")
            raise
        else:
            if args.keep_logs:
                keep_logs(platform, "--keep-logs")
        finally:
            platform.down(lambda m: None)
    write_results(
        Sizes(args.trials, args.others, l4_others, args.others_endpoints or SAMPLE_ENDPOINTS),
        Runs(
            l7,
            l4,
            l7_crowd,
            l4_crowd,
            splits,
            diagnosis,
            {kind: watch.timeline() for kind, watch in watches.items()},
            cpu,
            burst,
        ),
    )


SPLIT_PARTS = {
    "l7": ("label_to_redis", "redis_to_answer"),
    "l4": ("label_to_redis", "redis_to_applied", "applied_to_answer"),
    "l7_with_others": ("label_to_redis", "redis_to_answer"),
    "l4_with_others": ("label_to_redis", "redis_to_applied", "applied_to_answer"),
}
"""The parts each kind of trial is split into (`trials`)."""


def keep_logs(platform: DevPlatform, why: str) -> None:
    """A run's logs (every component's, Envoy's and the cluster's among them) outlive its
    directory: a failed run's always, to find out why."""
    kept = Path(tempfile.mkdtemp(prefix="openslb-bench-logs-"))
    for path in platform.state_dir.rglob("*.log"):
        target = kept / path.relative_to(platform.state_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    log(f"{why}: the run's logs are kept in {kept}")


@contextmanager
def cpu_of(platform: DevPlatform, into: dict[str, dict[str, float]], name: str) -> Iterator[None]:
    """Each component's CPU seconds (the lab VM's qemu among them) during the block."""
    pids = {n: c.pids for n, c in platform.components().items() if c.pids}
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    yield
    into[name] = {n: round(cpu_seconds(p) - before[n], 1) for n, p in pids.items()}
    log(f"  CPU seconds during those trials: {into[name]}")


@dataclass(frozen=True)
class Sizes:
    trials: int
    others: int
    l4_others: int
    others_endpoints: int


@dataclass(frozen=True)
class Runs:
    """What `main` measured: each kind of trial's latencies (ms), the trials' parts (ms,
    `SPLIT_PARTS`), each L7 trial's diagnosis (`trials`), the CPU seconds during the
    trials with others, the burst (none without the lab VM)."""

    l7: list[float]
    l4: list[float]
    l7_crowd: list[float]
    l4_crowd: list[float]
    splits: dict[str, list[tuple[float, ...]]]
    diagnosis: dict[str, list[dict[str, float]]]
    stalls: dict[str, list[tuple[float, float]]]
    cpu: dict[str, dict[str, float]]
    burst: scenarios.Burst | None


def write_results(sizes: Sizes, runs: Runs) -> None:
    """bench/results/pipeline.json: the default run (1,000 others) owns the unsuffixed
    figures and `setup`; a run at another size adds its suffixed ones and `setup_SIZE`."""
    crowd, l4_crowd = (results_file.size_suffix(n) for n in (sizes.others, sizes.l4_others))
    figures = {  # targets: issue #18's
        "label_to_l7_p50_ms": (results_file.median(runs.l7), None),
        "label_to_l7_p99_ms": (results_file.percentile(runs.l7, 99), 100.0),
        **(
            {
                "label_to_l4_p50_ms": (results_file.median(runs.l4), None),
                "label_to_l4_p99_ms": (results_file.percentile(runs.l4, 99), 2000.0),
            }
            if runs.l4
            else {}
        ),
        f"label_to_l7_p50_ms{crowd}": (results_file.median(runs.l7_crowd), None),
        f"label_to_l7_p99_ms{crowd}": (
            results_file.percentile(runs.l7_crowd, 99),
            {1000: 300.0, 10000: 500.0}.get(sizes.others),
        ),
    }
    if runs.l4_crowd:
        figures[f"label_to_l4_p50_ms{l4_crowd}"] = (results_file.median(runs.l4_crowd), None)
        figures[f"label_to_l4_p99_ms{l4_crowd}"] = (
            results_file.percentile(runs.l4_crowd, 99),
            1000.0 if sizes.l4_others == 1000 else None,
        )
    metrics = {
        name: {"value": round(value, 1), "unit": "ms", "target": target}
        for name, (value, target) in figures.items()
    }
    if runs.burst is not None:
        metrics["burst_1000_applies"] = {"value": runs.burst.applies, "unit": "applies",
                                         "target": 50}  # fmt: skip
    for name, metric in metrics.items():
        log(f"{name}: {metric['value']} {metric['unit']} (target {metric['target']})")
    default = sizes.others == DEFAULT_OTHERS
    if not default:
        metrics = {k: v for k, v in metrics.items() if k.endswith((crowd, l4_crowd))}
    path = results_file.write_size("pipeline", metrics, "setup" if default else f"setup{crowd}", {
        "trials": sizes.trials,
        "others": sizes.others,
        "l4_others": sizes.l4_others,
        "others_endpoints": sizes.others_endpoints,
        "lab_vm": runs.burst is not None,
        "burst_seconds_to_last_revision": round(runs.burst.seconds, 1) if runs.burst else None,
        "l7_ms": [round(v, 1) for v in runs.l7],
        "l4_ms": [round(v, 1) for v in runs.l4],
        "l7_with_others_ms": [round(v, 1) for v in runs.l7_crowd],
        "l4_with_others_ms": [round(v, 1) for v in runs.l4_crowd],
        **{f"{kind}_split_ms": _split_summary(found, SPLIT_PARTS[kind])
           for kind, found in runs.splits.items() if found},
        **{f"{kind}_diagnosis": found for kind, found in runs.diagnosis.items()},
        **{f"{kind}_envoy_stalls_s_ms": found for kind, found in runs.stalls.items()},
        **{f"cpu_seconds_during_{kind}": seconds for kind, seconds in runs.cpu.items()},
    })  # fmt: skip
    log(f"wrote {path}")


def _split_summary(
    splits: list[tuple[float, ...]], names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Median and 99th percentile of each part of a kind of trial."""
    return {
        name: {"p50": round(results_file.median(values), 1),
               "p99": round(results_file.percentile(values, 99), 1)}
        for name, values in zip(names, map(list, zip(*splits, strict=True)), strict=True)
    }  # fmt: skip


if __name__ == "__main__":
    main()
