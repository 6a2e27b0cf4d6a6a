"""The Gateway API conformance suite (v1.6.3, built by deploy/testbed/build-kube-binaries.sh)
against the local platform's cluster, with GatewayClass `openslb`.

The suite applies its own namespaces, echo servers (the images `devbed.images` imports
under the names its manifests use) and Gateways, sends its requests to the Gateways'
addresses from this host, and writes a report (`--report-output`). Each test's result is
read from `go test -v`'s lines.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmi.k8s.client import KubeClient
from devbed import demo
from devbed.kube import BUILD_SCRIPT, GATEWAY_API_VERSION, cache_dir
from devbed.process import StartError

CLASS_NAME = "openslb"
SUITE_NAMESPACE = "gateway-conformance-infra"
"""Where the suite's hand-made EndpointSlices are (`cmi.endpoint_slices_from` must name it)."""
CORE = ("Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "ReferenceGrant")
PROFILES = "GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS"
CORE_HTTP_TESTS = (
    "GatewayClassObservedGenerationBump", "GatewayInvalidRouteKind",
    "GatewayInvalidTLSConfiguration", "GatewayListenerUnsupportedProtocol",
    "GatewayModifyListeners", "GatewayObservedGenerationBump", "GatewayWithAttachedRoutes",
    "GatewaySecretInvalidReferenceGrant", "GatewaySecretMissingReferenceGrant",
    "GatewaySecretReferenceGrantAllInNamespace", "GatewaySecretReferenceGrantSpecific",
    "HTTPRouteCrossNamespace", "HTTPRouteExactPathMatching", "HTTPRouteHTTPSListener",
    "HTTPRouteHeaderMatching", "HTTPRouteHostnameIntersection",
    "HTTPRouteInvalidBackendRefUnknownKind", "HTTPRouteInvalidCrossNamespaceBackendRef",
    "HTTPRouteInvalidCrossNamespaceParentRef", "HTTPRouteInvalidNonExistentBackendRef",
    "HTTPRouteInvalidParentRefNotMatchingSectionName", "HTTPRouteInvalidReferenceGrant",
    "HTTPRouteListenerHostnameMatching", "HTTPRouteMatching", "HTTPRouteMatchingAcrossRoutes",
    "HTTPRouteMultipleGateways", "HTTPRouteNoBackendRefs", "HTTPRouteObservedGenerationBump",
    "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant", "HTTPRoutePathMatchOrder",
    "HTTPRouteRedirectHostAndStatus", "HTTPRouteReferenceGrant", "HTTPRouteServiceTypes",
    "HTTPRouteRequestHeaderModifier",
    "HTTPRouteSimpleSameNamespace", "HTTPRouteWeight",
)  # fmt: skip
"""The core tests of profile GATEWAY-HTTP (v1.6.3), as its report counts them (36)."""
CORE_GRPC_TESTS = (
    "GRPCExactMethodMatching", "GRPCRouteHeaderMatching", "GRPCRouteListenerHostnameMatching",
    "GRPCRouteWeight",
)  # fmt: skip
"""The core tests of profile GATEWAY-GRPC (v1.6.3) that are not GATEWAY-HTTP's too (its
other 10 are the Gateway tests of CORE_HTTP_TESTS)."""
CORE_TLS_TESTS = (
    "HTTPRouteDisallowedKind", "TLSRouteHostnameIntersection",
    "TLSRouteInvalidBackendRefNonexistent", "TLSRouteInvalidBackendRefUnknownKind",
    "TLSRouteInvalidNoMatchingListener", "TLSRouteInvalidNoMatchingListenerHostname",
    "TLSRouteInvalidReferenceGrant", "TLSRouteListenerPassthroughSupportedKinds",
    "TLSRouteListenerTerminateNotSupported", "TLSRouteSimpleSameNamespace",
)  # fmt: skip
"""The core tests of profile GATEWAY-TLS (v1.6.3) that are not GATEWAY-HTTP's too: TLS
passthrough listeners and TLSRoutes."""
EXTENDED = (
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteHostRewrite",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePortRedirect",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "GatewayPort8080",
    "GatewayHTTPListenerIsolation",
    "HTTPRoutePathRewrite",
    "HTTPRoutePathRedirect",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "TLSRouteModeTerminate",
)
"""The extended features of GATEWAY-HTTP, GATEWAY-GRPC and GATEWAY-TLS that openslb claims
(README, "The Gateway API")."""
_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): TestConformance/(\S+)")


def binary() -> Path:
    path = cache_dir() / "bin" / f"gateway-conformance-{GATEWAY_API_VERSION}"
    if not path.exists():
        raise StartError(f"not built yet: {path}; run {BUILD_SCRIPT}")
    return path


@dataclass
class Run:
    """One run's results by test name, its report and its output."""

    results: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    output: str = ""
    returncode: int = 0

    def named(self, state: str) -> list[str]:
        return sorted(name for name, s in self.results.items() if s == state)

    def errors(self, limit: int = 80) -> list[str]:
        """The lines of the output that say why a test failed."""
        keep = [line.rstrip() for line in self.output.splitlines()
                if "Error:" in line or "expected" in line or "Error Trace" in line]  # fmt: skip
        return keep[:limit]


def run(
    kubeconfig: Path,
    work: Path,
    *,
    tests: Sequence[str] = (),
    profiles: str = PROFILES,
    features: Sequence[str] = (*CORE, *EXTENDED),
    timeout_s: float = 3600,
    progress: Callable[[str], None] = lambda _: None,
) -> Run:
    """The suite (or only `tests`, by name) against the cluster of `kubeconfig`, with
    GatewayClass `openslb` (made if missing: the suite expects it)."""
    work.mkdir(parents=True, exist_ok=True)
    class_ = demo.GatewayApp(class_name=CLASS_NAME).manifests()[0]
    demo.apply_objects(KubeClient.from_kubeconfig(str(kubeconfig)), [class_])
    report = work / "conformance-report.yaml"
    args = [
        str(binary()), "-test.run", "^TestConformance$", "-test.v",
        "-test.timeout", f"{int(timeout_s)}s",
        f"--gateway-class={CLASS_NAME}", f"--supported-features={','.join(features)}",
        f"--report-output={report}", "--organization=openslb", "--project=openslb",
        "--url=https://github.com/openslb/openslb", "--version=main",
        "--contact=https://github.com/openslb/openslb/issues",
        "--cleanup-base-resources=true",
    ]  # fmt: skip
    if tests:
        args.append(f"--skip-tests={','.join(_all_tests_but(tests))}")
    else:
        args.append(f"--conformance-profiles={profiles}")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = Run(report=report)
    lines = []
    with subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if match := _RESULT.match(line):
                result.results[match[2]] = match[1]
                progress(f"{match[1]} {match[2]}")
        result.returncode = process.wait(timeout=timeout_s)
    result.output = "".join(lines)
    (work / "suite.log").write_text(result.output)
    return result


def _all_tests_but(wanted: Sequence[str]) -> list[str]:
    """Every test the suite holds except `wanted` (it runs one, or all but those skipped)."""
    return [name for name in _suite_test_names() if name not in wanted]


def _suite_test_names() -> list[str]:
    """The short names of the suite's tests, from its sources in the Go module cache."""
    root = Path(os.environ.get("GOMODCACHE", Path.home() / "go" / "pkg" / "mod"))
    tests = root / "sigs.k8s.io" / "gateway-api" / f"conformance@{GATEWAY_API_VERSION}" / "tests"
    names = set()
    for source in tests.glob("*.go"):
        names.update(re.findall(r'ShortName:\s+"([^"]+)"', source.read_text()))
    return sorted(names)
