"""Throwaway certificates and keys for the tests and the demo, made on the spot.

`self_signed` for a server that only needs some certificate; `chain` for a leaf issued
through an intermediate by a root, as a real CA issues it (upload checks, TLS clients that
verify). Every certificate comes from the product's one generator, `slb.pki.certificate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from slb.pki import certificate, new_key, pem, private_pem


@dataclass(frozen=True)
class Pair:
    chain_pem: str
    key_pem: str


@dataclass(frozen=True)
class Chain:
    leaf_pem: str
    intermediate_pem: str
    root_pem: str
    key_pem: str

    @property
    def chain_pem(self) -> str:
        """Leaf first, then its issuer: the order a TLS server sends."""
        return self.leaf_pem + self.intermediate_pem


def key_pem() -> str:
    """A fresh private key, PEM (PKCS#8)."""
    return private_pem(new_key())


def self_signed(*dns_names: str, days: int = 30) -> Pair:
    """A self-signed certificate for `dns_names` (the first is also the common name)."""
    key = new_key()
    cert = certificate(dns_names[0], key, None, ca=False, days=days, sans=dns_names)
    return Pair(chain_pem=pem(cert), key_pem=private_pem(key))


def chain(*sans: str, days: float = 90, starts_in_days: float = 0) -> Chain:
    """A leaf for `sans` (default shop.example.test) valid `days` from now, via an intermediate."""
    sans = sans or ("shop.example.test",)
    root_key, mid_key, leaf_key = new_key(), new_key(), new_key()
    root = certificate("Test Root", root_key, None, ca=True, days=3650)
    mid = certificate("Test Intermediate", mid_key, (root, root_key), ca=True, days=1825)
    leaf = certificate(
        sans[0], leaf_key, (mid, mid_key),
        ca=False, days=days, sans=sans, starts_in_days=starts_in_days,
    )  # fmt: skip
    return Chain(pem(leaf), pem(mid), pem(root), private_pem(leaf_key))
