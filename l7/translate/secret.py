"""Secrets (SDS): a certificate chain with its private key, and the names it serves.

The key comes from `slb.storage.secrets`, passed in by the caller; this module never reads or
logs it. Certificates reach Envoy over SDS so that a renewed certificate changes one
secret, not every listener that uses it.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from slb.model import Certificate


def secret(certificate: Certificate, key_pem: str) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name=certificate.name)
    s.tls_certificate.certificate_chain.inline_string = certificate.chain_pem
    s.tls_certificate.private_key.inline_string = key_pem
    return s


@functools.lru_cache(maxsize=4096)
def server_names(chain_pem: str) -> tuple[str, ...]:
    """The DNS names the chain's leaf certificate is valid for (SANs, else its common name)."""
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(a.value).lower() for a in common]
    return tuple(dict.fromkeys(names))
