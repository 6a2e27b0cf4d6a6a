"""A real Kubernetes API: kube-apiserver and etcd on free loopback ports.

As envtest does, only the API server and its etcd run: no kubelet, scheduler or
controller manager. Tests create Services and EndpointSlices directly, exactly how a
selector-less Service with hand-managed endpoints works in a real cluster.

RBAC is on. The harness itself authenticates as a `system:masters` member through a
static token; the product runs under its own ServiceAccount with a token from the
TokenRequest API, so the least-privilege role in deploy/ is tested for real.

Given a `NodePKI`, the same API server serves a real node (devbed/cluster.py): it trusts
the PKI's CA for client certificates, calls kubelets with its own client certificate, and
authorizes with Node,RBAC and the NodeRestriction admission plugin, as a cluster does.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes.client import (
    ApiClient,
    ApiextensionsV1Api,
    AuthenticationV1TokenRequest,
    CoreV1Api,
    V1Namespace,
    V1ObjectMeta,
    V1ServiceAccount,
    V1TokenRequestSpec,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from devbed.kubepki import NodePKI
from devbed.process import Process, StartError, free_port, wait_until

KUBE_VERSION = os.environ.get("OPENSLB_KUBE_VERSION", "v1.37.2")
ETCD_VERSION = os.environ.get("OPENSLB_ETCD_VERSION", "v3.6.16")
GATEWAY_API_VERSION = os.environ.get("OPENSLB_GATEWAY_API_VERSION", "v1.6.3")
SERVICE_CIDR = "198.19.0.0/16"
"""ClusterIPs come from the benchmarking range, like every address the tests use."""

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "deploy" / "testbed" / "build-kube-binaries.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("OPENSLB_CACHE", Path.home() / ".cache" / "openslb"))


@dataclass(frozen=True)
class KubeBinaries:
    apiserver: Path
    etcd: Path

    @classmethod
    def cached(cls) -> KubeBinaries:
        """The binaries built by deploy/testbed/build-kube-binaries.sh, or a clear error."""
        binaries = cls(
            apiserver=cache_dir() / "bin" / f"kube-apiserver-{KUBE_VERSION}",
            etcd=cache_dir() / "bin" / f"etcd-{ETCD_VERSION}",
        )
        missing = [str(p) for p in (binaries.apiserver, binaries.etcd) if not p.exists()]
        if missing:
            raise StartError(f"not built yet: {', '.join(missing)}; run {BUILD_SCRIPT}")
        return binaries


class KubeAPI:
    """etcd + kube-apiserver with their state under `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        binaries: KubeBinaries | None = None,
        extra_args: tuple[str, ...] = (),
        node_pki: NodePKI | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.extra_args = extra_args
        self.node_pki = node_pki
        self.binaries = binaries or KubeBinaries.cached()
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.admin_token = secrets.token_urlsafe(32)
        self.kubeconfig = state_dir / "kubeconfig"
        self.ca_file = node_pki.ca.cert if node_pki else state_dir / "certs" / "apiserver.crt"
        self.etcd: Process | None = None
        self.apiserver: Process | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> KubeAPI:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._start_etcd(timeout)
        self._start_apiserver(timeout)
        self.write_kubeconfig(self.kubeconfig, self.admin_token, "admin")
        return self

    def stop(self) -> None:
        for process in (self.apiserver, self.etcd):
            if process is not None:
                process.stop()

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = Process(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name", "devbed",
                "--data-dir", str(self.state_dir / "etcd"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"devbed={peer}",
                "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync",  # a throwaway test etcd: durability is not the point
                "--log-level", "warn",
            ],
            self.state_dir,
        ).start()  # fmt: skip
        etcd = self.etcd

        def healthy() -> bool:
            etcd.check_alive()
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:  # noqa: S310
                return b'"health":"true"' in resp.read()

        wait_until(healthy, timeout, "etcd")

    def _start_apiserver(self, timeout: float) -> None:
        sa_key, sa_pub = self._service_account_keys()
        tokens = self.state_dir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        tokens.chmod(0o600)
        self.apiserver = Process(
            "kube-apiserver",
            [
                str(self.binaries.apiserver),
                "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--secure-port", str(self.port),
                *self._tls_args(),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--token-auth-file", str(tokens),
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(sa_pub),
                "--service-account-signing-key-file", str(sa_key),
                "--endpoint-reconciler-type", "none",
                "--allow-privileged=false",
                "--profiling=false",
                "--v", "1",
                *self.extra_args,
            ],
            self.state_dir,
        ).start()  # fmt: skip
        apiserver = self.apiserver

        def ready() -> bool:
            apiserver.check_alive()
            if not self.ca_file.exists():
                return False
            context = ssl.create_default_context(cafile=str(self.ca_file))
            request = urllib.request.Request(  # noqa: S310 - our own loopback server
                f"{self.server}/readyz",
                headers={"Authorization": f"Bearer {self.admin_token}"},
            )
            with urllib.request.urlopen(request, timeout=5, context=context) as resp:  # noqa: S310
                body: bytes = resp.read()
                return resp.status == 200 and body == b"ok"

        try:
            wait_until(ready, timeout, "kube-apiserver", interval=0.2)
        except TimeoutError as exc:
            raise StartError(f"{exc}; last log lines:\n{apiserver.log_tail()}") from None

    def _tls_args(self) -> list[str]:
        """Serving certificate, client authentication and authorization: the API-only
        default, or a node's (client CA, kubelet client certificate, Node,RBAC)."""
        pki = self.node_pki
        if pki is None:
            return ["--cert-dir", str(self.state_dir / "certs"), "--authorization-mode", "RBAC"]
        return [
            "--tls-cert-file", str(pki.apiserver.cert),
            "--tls-private-key-file", str(pki.apiserver.key),
            "--client-ca-file", str(pki.ca.cert),
            "--kubelet-client-certificate", str(pki.apiserver_kubelet_client.cert),
            "--kubelet-client-key", str(pki.apiserver_kubelet_client.key),
            "--kubelet-certificate-authority", str(pki.ca.cert),
            "--kubelet-preferred-address-types", "InternalIP",
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
        ]  # fmt: skip

    def _service_account_keys(self) -> tuple[Path, Path]:
        if self.node_pki is not None:
            return self.node_pki.service_account_key, self.node_pki.service_account_pub
        key_path, pub_path = self.state_dir / "sa.key", self.state_dir / "sa.pub"
        if not key_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)
            pub_path.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return key_path, pub_path

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, so older resourceVersions answer 410 Gone."""
        base = f"http://127.0.0.1:{self.etcd_port}/v3/kv"

        def post(path: str, body: dict[str, object]) -> dict[str, Any]:
            request = urllib.request.Request(  # noqa: S310 - our own loopback etcd
                f"{base}/{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                result: dict[str, Any] = json.loads(resp.read())
                return result

        revision = int(post("range", {"key": "AA=="})["header"]["revision"])
        post("compaction", {"revision": str(revision), "physical": True})
        return revision

    def write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        """A kubeconfig for this server that authenticates with a bearer token."""
        return self._write_kubeconfig(path, user, f"token: {token}")

    def write_cert_kubeconfig(self, path: Path, cert: Path, key: Path, user: str) -> Path:
        """A kubeconfig for this server that authenticates with a client certificate."""
        return self._write_kubeconfig(
            path, user, f"client-certificate: {cert}\n    client-key: {key}"
        )

    def _write_kubeconfig(self, path: Path, user: str, credentials: str) -> Path:
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: devbed
  cluster:
    server: {self.server}
    certificate-authority: {self.ca_file}
users:
- name: {user}
  user:
    {credentials}
contexts:
- name: {user}@devbed
  context: {{cluster: devbed, user: {user}}}
current-context: {user}@devbed
"""
        )
        path.chmod(0o600)
        return path

    def client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A `kubernetes` API client, as admin unless another kubeconfig is given."""
        client: ApiClient = new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
        return client

    def cmi_kubeconfig(self, hours: int = 24) -> Path:
        """A kubeconfig for cmi's ServiceAccount, bound to the role cmi ships with
        (deploy/k8s/cmi-rbac.yaml): cmi runs with no more than a deployment grants it."""
        self.apply_manifest(REPO / "deploy" / "k8s" / "cmi-rbac.yaml")
        return self.service_account_kubeconfig("openslb-system", "openslb-cmi", hours=hours)

    def service_account_kubeconfig(self, namespace: str, name: str, hours: int = 24) -> Path:
        """Create the ServiceAccount if needed and a kubeconfig with a token for it.

        The token comes from the TokenRequest API, as a kubelet would mount it into a pod,
        so requests made with it are authorised by RBAC exactly as in a cluster.
        """
        with self.client() as api:
            core = CoreV1Api(api)
            try:
                core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=namespace)))
            except ApiException as exc:
                if exc.status != 409:
                    raise
            try:
                core.create_namespaced_service_account(
                    namespace, V1ServiceAccount(metadata=V1ObjectMeta(name=name))
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
            request = AuthenticationV1TokenRequest(
                spec=V1TokenRequestSpec(audiences=[], expiration_seconds=hours * 3600)
            )
            token = core.create_namespaced_service_account_token(name, namespace, request)
        if token.status is None or not token.status.token:
            raise StartError(f"the API server issued no token for {namespace}/{name}")
        path = self.state_dir / f"kubeconfig-{namespace}-{name}"
        return self.write_kubeconfig(
            path, token.status.token, f"system:serviceaccount:{namespace}:{name}"
        )

    def install_gateway_api(
        self, channel: str = "standard", timeout: float = 60.0, leave_out: Collection[str] = ()
    ) -> None:
        """The Gateway API's CRDs of one channel (copied by the build script), established;
        but those of the resources `leave_out` names (`tcproutes`: a cluster that installs
        one kind later)."""
        crds = cache_dir() / f"gateway-api-{GATEWAY_API_VERSION}" / channel
        files = sorted(p for p in crds.glob("*_*.yaml") if "_vap_" not in p.name
                       and p.stem.split("_", 1)[1] not in leave_out)  # fmt: skip
        if not files:
            raise StartError(f"no Gateway API CRDs in {crds}; run {BUILD_SCRIPT}")
        for path in files:
            self.apply_manifest(path)
        names = [f"{p.stem.split('_', 1)[1]}.{p.stem.split('_', 1)[0]}" for p in files]

        def established() -> bool:
            with self.client() as api:
                ext = ApiextensionsV1Api(api)
                statuses = [ext.read_custom_resource_definition(n).status for n in names]
                return all(
                    any(c.type == "Established" and c.status == "True"
                        for c in (status.conditions if status else None) or [])
                    for status in statuses
                )  # fmt: skip

        wait_until(established, timeout, "the Gateway API's CRDs to be established")

    def apply_manifest(self, path: Path) -> None:
        """Create every object in a YAML manifest as admin; objects that exist are left alone."""
        from kubernetes.utils import FailToCreateError, create_from_yaml  # noqa: PLC0415

        with self.client() as api:
            try:
                create_from_yaml(api, str(path))  # type: ignore[no-untyped-call]
            except FailToCreateError as exc:
                if any(e.status != 409 for e in exc.api_exceptions):
                    raise
