"""The Gateway API through the whole platform (`slb dev up`'s, without the lab VM): how soon
a new HTTPRoute carries traffic, and whether adding routes one by one fails any request on
the routes already there.

- A Gateway (`bench`, one HTTP listener) of openslb's class, and a Deployment of 2 pods of
  the HTTP sample app behind a Service no label exposes; route `base` sends `/base` to it.
- HTTPRoute -> traffic: each trial applies a new HTTPRoute for a path of its own and times
  from just before the apply until a request to that path is first answered by a pod
  through Envoy (a new connection every 5 ms, each GET with a 1 s timeout). Everything in
  between is real: the API server's watch, cmi's hold-off, build and Redis write, the xDS
  server's translation and push, Envoy's apply.
- Churn: while a client sends GETs to `/base` back to back (a new connection each, at most
  RATE_CAP a second, for as long as the churn lasts), `--churn` HTTPRoutes are applied one
  by one; every answer but a 200 from a pod counts as failed. Then how long until the last
  route answers, and cmi's and `slb xds`'s CPU seconds and RSS at the end.
- Conformance: the Gateway API conformance suite v1.6.3, profiles GATEWAY-HTTP and
  GATEWAY-GRPC, with the features openslb claims (`devbed.conformance`); its report is copied to
  docs/conformance/. The platform's cmi takes hand-made EndpointSlices in the suite's
  namespace (`cmi.endpoint_slices_from`), as its HTTPRouteServiceTypes test needs.

    .venv/bin/python -m bench.gateway [--trials 50] [--churn 500] [--no-conformance]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench import results_file
from bench.procstat import cpu_seconds
from devbed import conformance, demo
from devbed.kube import GATEWAY_API_VERSION
from devbed.platform import DevPlatform
from devbed.process import wait_until

VIP_CIDR, SAMPLE_CIDR = "198.18.72.0/24", "198.18.73.0/24"
PORT = 8090
APP = "gateway-bench"
POD_PREFIX = f"{APP}-"
"""Its pods' names, which they answer with."""
REPORT = Path(__file__).resolve().parent.parent / "docs" / "conformance"
RATE_CAP = 500
"""Requests a second the churn's client sends at most (a bounded load)."""


def log(message: str) -> None:
    print(f"[bench.gateway] {message}", flush=True)


def answered(target: str, path: str) -> bool:
    try:
        status, body = demo.http_get(target, path, timeout=1.0)
    except OSError:
        return False
    return status == 200 and body.startswith(POD_PREFIX)


def route(name: str, path: str, backend: str) -> demo.GatewayApp:
    return demo.GatewayApp(name="bench", route=name, path=path, port=PORT, backend=backend)


def to_traffic(platform: DevPlatform, target: str, backend: str, trials: int) -> list[float]:
    """Milliseconds from an HTTPRoute's apply to its first answer, per trial."""
    kube, latencies = platform.kube(), []
    for i in range(trials):
        new = route(f"trial-{i}", f"/trial-{i}", backend)
        began = time.monotonic()
        demo.apply_objects(kube, [new.route_manifest()])
        wait_until(partial(answered, target, f"{new.path}/x"), 30, f"route {new.route}",
                   interval=0.005)  # fmt: skip
        latencies.append((time.monotonic() - began) * 1000)
        time.sleep(0.2)  # apart: each trial a change of its own
    return latencies


class Load:
    """GETs to one path, back to back, until stopped: how many, how many failed."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.path = target, path
        self.sent = self.failed = 0
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                status, body = demo.http_get(self.target, self.path, timeout=2.0)
                ok = status == 200 and body.startswith(POD_PREFIX)
                error = None if ok else f"status {status}"
            except OSError as exc:
                error = type(exc).__name__
            self.sent += 1
            if error is not None:
                self.failed += 1
                self.errors[error] = self.errors.get(error, 0) + 1
            self._stop.wait(max(0.0, 1 / RATE_CAP - (time.monotonic() - began)))


def churn(platform: DevPlatform, target: str, backend: str, routes: int) -> dict[str, float]:
    kube = platform.kube()
    pids = {name: platform.components()[name].pids for name in ("cmi", "xds")}
    cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
    began = time.monotonic()
    with Load(target, "/base/x") as load:
        for i in range(routes):
            demo.apply_objects(kube, [route(f"churn-{i}", f"/churn-{i}", backend).route_manifest()])
        applied = time.monotonic() - began
        last = f"/churn-{routes - 1}/x"
        wait_until(lambda: answered(target, last), 120, "the last route", interval=0.01)
        live = time.monotonic() - began
    if load.errors:
        log(f"  failed requests by cause: {load.errors}")
    return {
        "requests": load.sent,
        "failed": load.failed,
        "applied_s": applied,
        "last_live_s": live,
        **{f"{n}_cpu_s": cpu_seconds(p) - cpu_before[n] for n, p in pids.items()},
        **{f"{n}_rss_mb": _rss_mb(p) for n, p in pids.items()},
    }


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--churn", type=int, default=500)
    parser.add_argument("--no-conformance", dest="conformance", action="store_false")
    args = parser.parse_args()
    suite: conformance.Run | None = None
    with tempfile.TemporaryDirectory(prefix="bench-gateway.") as tmp:
        trusted = f"{demo.NAMESPACE},{conformance.SUITE_NAMESPACE}"
        platform = DevPlatform(
            Path(tmp) / "platform", vip_cidr=VIP_CIDR, sample_cidr=SAMPLE_CIDR, lab=False,
            tuning={"cmi": {"endpoint_slices_from": trusted}},
        )  # fmt: skip
        try:
            log("bringing the platform up (no lab VM)")
            platform.up(lambda m: log(f"  {m}"))
            kube = platform.kube()
            app = demo.DeploymentApp(APP, "http", 80, replicas=2, expose=None)
            base = route("base", "/base", app.name)
            demo.apply(kube, [app, base])
            demo.wait_rolled_out(kube, app, 180)
            target = base.wait_address(kube, 60)
            wait_until(lambda: answered(target, "/base/x"), 60, "route base")
            log(f"Gateway demo/bench at {target}; HTTPRoute -> traffic, {args.trials} trials")
            latencies = to_traffic(platform, target, app.name, args.trials)
            log(f"  p50 {results_file.median(latencies):.1f} ms, "
                f"p99 {results_file.percentile(latencies, 99):.1f} ms")  # fmt: skip
            log(f"churn: {args.churn} HTTPRoutes one by one under load on /base")
            churned = churn(platform, target, app.name, args.churn)
            log(f"  {churned}")
            if args.conformance:
                log(f"the Gateway API conformance suite, profiles {conformance.PROFILES}")
                work = Path(tempfile.mkdtemp(prefix="gateway-conformance."))
                log(f"  its log: {work / 'suite.log'}")
                suite = conformance.run(
                    platform.cluster.kubeconfig, work, progress=lambda m: log(f"  {m}")
                )
                log(f"  failed: {suite.named('FAIL')}")
                for line in suite.errors():
                    log(f"    {line}")
        finally:
            platform.down(lambda m: log(f"  {m}"))
    metrics = {
        "httproute_to_traffic_p50_ms": results_file.metric(results_file.median(latencies), "ms"),
        "httproute_to_traffic_p99_ms": results_file.metric(
            results_file.percentile(latencies, 99), "ms", 100.0
        ),
        "route_churn_failed_requests": results_file.metric(churned["failed"], "requests", 0),
        "route_churn_requests": results_file.metric(churned["requests"], "requests"),
        f"routes_{args.churn}_last_live_s": results_file.metric(churned["last_live_s"], "s"),
        f"routes_{args.churn}_cmi_cpu_s": results_file.metric(churned["cmi_cpu_s"], "s"),
        f"routes_{args.churn}_xds_cpu_s": results_file.metric(churned["xds_cpu_s"], "s"),
        f"routes_{args.churn}_cmi_rss_mb": results_file.metric(churned["cmi_rss_mb"], "MiB"),
    }
    setup_conformance: dict[str, Any] = {}
    if suite is not None:
        setup_conformance = {"conformance_failed": suite.named("FAIL"),
                             "conformance_passed": suite.named("PASS")}  # fmt: skip
        try:
            metrics.update(_conformance_metrics(suite))
        except RuntimeError as exc:  # the other figures are kept; the run says why
            log(str(exc))
            setup_conformance["conformance_error"] = str(exc)[-2000:]
    path = results_file.write("gateway", metrics, setup={
        **setup_conformance,
        "trials": args.trials, "churn_routes": args.churn, "load_rate_cap": RATE_CAP,
        "latencies_ms": [round(v, 1) for v in latencies],
        "churn": {k: round(v, 2) for k, v in churned.items()},
    })  # fmt: skip
    log(f"wrote {path}")


def _conformance_metrics(suite: conformance.Run) -> dict[str, dict[str, Any]]:
    """Per profile, the core tests passed and run, and the extended passed; the report
    copied to docs/conformance/."""
    if suite.report is None or not suite.report.exists():
        raise RuntimeError(f"the suite wrote no report:\n{suite.output[-3000:]}")
    REPORT.mkdir(parents=True, exist_ok=True)
    kept = REPORT / f"openslb-gateway-api-{GATEWAY_API_VERSION}-report.yaml"
    shutil.copyfile(suite.report, kept)
    report = yaml.safe_load(suite.report.read_text())
    metrics = {}
    for profile in report.get("profiles") or []:
        suffix = profile["name"].lower().replace("-", "_")
        core = profile["core"]["statistics"]
        extended = (profile.get("extended") or {}).get("statistics") or {}
        metrics[f"conformance_core_passed_{suffix}"] = results_file.metric(
            core.get("Passed", 0), "tests",
            core.get("Passed", 0) + core.get("Failed", 0) + core.get("Skipped", 0),
        )  # fmt: skip
        metrics[f"conformance_core_total_{suffix}"] = results_file.metric(
            core.get("Passed", 0) + core.get("Failed", 0) + core.get("Skipped", 0), "tests"
        )
        metrics[f"conformance_extended_passed_{suffix}"] = results_file.metric(
            extended.get("Passed", 0), "tests"
        )
    return metrics


if __name__ == "__main__":
    main()
