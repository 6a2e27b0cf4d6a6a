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
- Scale: likewise, more routes until the Gateway has `--routes`; then also the time to
  translate its listener (all its rules' routes and clusters) once, as `slb xds` does on
  each change of it.
- Conformance: the Gateway API conformance suite v1.6.3, profiles GATEWAY-HTTP,
  GATEWAY-GRPC and GATEWAY-TLS, with the features openslb claims (`devbed.conformance`);
  its report is copied to docs/conformance/. The platform's cmi takes hand-made
  EndpointSlices in the suite's namespace (`cmi.endpoint_slices_from`), as its
  HTTPRouteServiceTypes test needs.

    .venv/bin/python -m bench.gateway [--trials 50] [--churn 1000] [--routes 5000]
        [--no-conformance]
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
from l7.translate.cluster import serialized_clusters
from l7.translate.route import route_configuration
from slb.resolve import resolve

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


def churn(
    platform: DevPlatform, target: str, backend: str, start: int, stop: int
) -> dict[str, float]:
    """HTTPRoutes `churn-START` .. `churn-STOP-1` applied one by one under load on /base:
    the requests that failed, how long until the last route answered (from the first apply,
    and from the last), and the control plane's CPU seconds and RSS at the end."""
    kube = platform.kube()
    pids = {name: platform.components()[name].pids for name in ("cmi", "xds")}
    cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
    began = time.monotonic()
    with Load(target, "/base/x") as load:
        for i in range(start, stop):
            demo.apply_objects(kube, [route(f"churn-{i}", f"/churn-{i}", backend).route_manifest()])
            if (i + 1) % 500 == 0:
                log(f"  {i + 1} routes applied")
        applied = time.monotonic()
        last = f"/churn-{stop - 1}/x"
        wait_until(lambda: answered(target, last), 300, "the last route", interval=0.01)
        live = time.monotonic()
    if load.errors:
        log(f"  failed requests by cause: {load.errors}")
    return {
        "requests": load.sent,
        "failed": load.failed,
        "applied_s": applied - began,
        "last_live_s": live - began,
        "last_apply_to_live_s": live - applied,
        **{f"{n}_cpu_s": cpu_seconds(p) - cpu_before[n] for n, p in pids.items()},
        **{f"{n}_rss_mb": _rss_mb(p) for n, p in pids.items()},
    }


def run_suite(platform: DevPlatform) -> conformance.Run:
    log(f"the Gateway API conformance suite, profiles {conformance.PROFILES}")
    work = Path(tempfile.mkdtemp(prefix="gateway-conformance."))
    log(f"  its log: {work / 'suite.log'}")
    suite = conformance.run(platform.cluster.kubeconfig, work, progress=lambda m: log(f"  {m}"))
    log(f"  failed: {suite.named('FAIL')}")
    for line in suite.errors():
        log(f"    {line}")
    return suite


def translate_ms(platform: DevPlatform, gateway: str, trials: int = 5) -> tuple[float, int]:
    """The median time to translate the Gateway's listener (its RouteConfiguration and
    clusters, as `slb xds` does for each change of it), and how many rules it has."""
    state = resolve(platform.store().snapshot())
    (resolved,) = [r for r in state.listeners if r.listener.owner.name == gateway]
    times = []
    for _ in range(trials):
        began = time.perf_counter()
        route_configuration(resolved)
        serialized_clusters(resolved)
        times.append((time.perf_counter() - began) * 1000)
    return results_file.median(times), len(resolved.listener.routes)


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
    parser.add_argument("--churn", type=int, default=1000)
    parser.add_argument(
        "--routes",
        type=int,
        default=5000,
        help="then more routes, one by one, until the Gateway has this many",
    )
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
            if args.conformance:  # before the scale run leaves thousands of routes
                suite = run_suite(platform)
            log(f"churn: {args.churn} HTTPRoutes one by one under load on /base")
            churned = churn(platform, target, app.name, 0, args.churn)
            log(f"  {churned}")
            log(f"scale: to {args.routes} HTTPRoutes on the Gateway, under load on /base")
            scaled = churn(platform, target, app.name, args.churn, args.routes)
            scaled["translate_ms"], rules = translate_ms(platform, "demo/bench")
            log(f"  {scaled}; the Gateway's listener has {rules} rules")
        finally:
            platform.down(lambda m: log(f"  {m}"))
    metrics = {
        "httproute_to_traffic_p50_ms": results_file.metric(results_file.median(latencies), "ms"),
        "httproute_to_traffic_p99_ms": results_file.metric(
            results_file.percentile(latencies, 99), "ms", 100.0
        ),
        "route_churn_failed_requests": results_file.metric(churned["failed"], "requests", 0),
        "route_churn_requests": results_file.metric(churned["requests"], "requests"),
        # Envoy Gateway's own reports: its control plane takes 189-256 MiB at 1,000 routes
        **_scale_metrics(args.churn, churned, 256.0 if args.churn == 1000 else None),
        **_scale_metrics(args.routes, scaled),
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
        "trials": args.trials, "churn_routes": args.churn, "routes": args.routes,
        "load_rate_cap": RATE_CAP, "latencies_ms": [round(v, 1) for v in latencies],
        "churn": {k: round(v, 2) for k, v in churned.items()},
        "scale": {k: round(v, 2) for k, v in scaled.items()},
    })  # fmt: skip
    log(f"wrote {path}")


def _scale_metrics(
    routes: int, run: dict[str, float], rss_target: float | None = None
) -> dict[str, dict[str, Any]]:
    """A churn's figures as `routes_N_*`: the control plane (cmi and `slb xds`) with N
    HTTPRoutes on one Gateway."""
    out = {
        f"routes_{routes}_failed_requests": results_file.metric(run["failed"], "requests", 0),
        f"routes_{routes}_last_live_s": results_file.metric(run["last_live_s"], "s"),
        f"routes_{routes}_last_apply_to_live_ms": results_file.metric(
            run["last_apply_to_live_s"] * 1000, "ms"
        ),
        f"routes_{routes}_cmi_cpu_s": results_file.metric(run["cmi_cpu_s"], "s"),
        f"routes_{routes}_xds_cpu_s": results_file.metric(run["xds_cpu_s"], "s"),
        f"routes_{routes}_cmi_rss_mb": results_file.metric(run["cmi_rss_mb"], "MiB"),
        f"routes_{routes}_xds_rss_mb": results_file.metric(run["xds_rss_mb"], "MiB"),
        f"routes_{routes}_rss_mb": results_file.metric(
            run["cmi_rss_mb"] + run["xds_rss_mb"], "MiB", rss_target
        ),
    }
    if "translate_ms" in run:
        out[f"routes_{routes}_translate_ms"] = results_file.metric(run["translate_ms"], "ms")
    return out


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
