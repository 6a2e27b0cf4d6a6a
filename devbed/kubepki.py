"""The certificates a Kubernetes cluster with a node needs, made on the spot.

The API-only fixture (`KubeAPI`) lets kube-apiserver make its own serving certificate and
authenticates everyone by token. A kubelet, a controller manager and a scheduler instead
authenticate with client certificates whose subject is their identity (`system:node:NAME`
in the group `system:nodes` is what the Node authorizer and NodeRestriction check), and
the API server calls the kubelet over TLS with a client certificate of its own. Keys are
EC P-256: RSA-2048 key generation cost seconds of every start.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slb.pki import general_name, new_key, pem, private_pem

SERVICE_DNS_NAMES = (
    "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)  # fmt: skip


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _issue(
    directory: Path,
    name: str,
    common_name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    organization: str | None = None,
    sans: tuple[str, ...] = (),
) -> tuple[CertPair, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate and key written to DIR/NAME.crt and DIR/NAME.key (0600).

    With SANs it serves and is a client too (the API server checks a kubelet's serving
    certificate); without, it is a client certificate only. No issuer: a CA.
    """
    key = new_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    subject = x509.Name(attributes)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=issuer is None,
                crl_sign=issuer is None,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if issuer is not None:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if sans:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([general_name(s) for s in sans]), critical=False
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_text(pem(cert))
    pair.key.touch(mode=0o600)
    pair.key.write_text(private_pem(key))
    return pair, cert, key


@dataclass(frozen=True)
class NodePKI:
    """One CA and every certificate of a one-node cluster, under `directory`."""

    directory: Path
    ca: CertPair
    apiserver: CertPair
    apiserver_kubelet_client: CertPair
    kubelet_client: CertPair
    kubelet_serving: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    service_account_key: Path
    service_account_pub: Path

    @classmethod
    def create(cls, directory: Path, node_name: str, node_ip: str, service_ip: str) -> NodePKI:
        """Everything fresh; `service_ip` is the `kubernetes` Service's ClusterIP."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_cert, ca_key = _issue(directory, "ca", "openslb-test-bed-ca", None)
        issuer = (ca_cert, ca_key)

        def issue(
            name: str, cn: str, org: str | None = None, sans: tuple[str, ...] = ()
        ) -> CertPair:
            return _issue(directory, name, cn, issuer, organization=org, sans=sans)[0]

        sa_key = new_key()
        sa_key_path, sa_pub_path = directory / "sa.key", directory / "sa.pub"
        sa_key_path.touch(mode=0o600)
        sa_key_path.write_text(private_pem(sa_key))  # signs ES256 service-account tokens
        sa_pub_path.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        ipaddress.ip_address(node_ip)  # a name here would make a DNS SAN the kubelet never has
        return cls(
            directory=directory,
            ca=ca,
            apiserver=issue(
                "apiserver",
                "kube-apiserver",
                sans=("127.0.0.1", node_ip, service_ip, *SERVICE_DNS_NAMES),
            ),
            apiserver_kubelet_client=issue(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
            ),
            kubelet_client=issue("kubelet", f"system:node:{node_name}", "system:nodes"),
            kubelet_serving=issue(
                "kubelet-serving", node_name, sans=(node_ip, "127.0.0.1", node_name)
            ),
            controller_manager=issue("controller-manager", "system:kube-controller-manager"),
            scheduler=issue("scheduler", "system:kube-scheduler"),
            service_account_key=sa_key_path,
            service_account_pub=sa_pub_path,
        )
