"""Field types shared by the model's objects, with their validators: DNS-label names,
ports by number or name, IP addresses and networks, host names.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, TypeAlias

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def is_dns_label(value: str) -> bool:
    return bool(_DNS_LABEL.match(value))


def _dns_label(value: str) -> str:
    if not is_dns_label(value):
        raise ValueError(
            f"{value!r} is not a DNS label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _port_ref(value: object) -> int | str:
    """A port by number (1-65535) or by name: a Service port's name is a DNS label (a
    container port's, an IANA service name, is one of at most 15 characters). A name of
    digits alone would read as a number, so it is not taken as a name."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a port number or a port name (got {value!r})")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is out of range 1-65535")
        return value
    if not is_dns_label(value) or value.isdigit():
        raise ValueError(
            f"{value!r} is neither a port number nor a port name (a DNS label: 1-63 lowercase "
            "letters, digits or '-', at least one letter)"
        )
    return value


Name = Annotated[str, AfterValidator(_dns_label), AfterValidator(sys.intern)]
"""Interned: a namespace's or an instance's name recurs in thousands of objects."""


def _namespace_ref(value: str) -> str:
    return value if value == "*" else _dns_label(value)


NamespaceRef = Annotated[str, AfterValidator(_namespace_ref)]
"""A namespace's name, or `*` for every namespace."""


def _service_key(value: str) -> str:
    namespace, slash, name = value.partition("/")
    if not slash or not is_dns_label(namespace) or not is_dns_label(name):
        raise ValueError(
            f"{value!r} is not a Service's key, NAMESPACE/NAME (each a DNS label: 1-63 "
            "lowercase letters, digits or '-')"
        )
    return value


ServiceKey = Annotated[str, AfterValidator(_service_key)]
"""One Service, `namespace/name`."""
PortRef = Annotated[int | str, PlainValidator(_port_ref, json_schema_input_type=int | str)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _plain_address(
    value: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """One spelling per address: no zone id (`%eth0`: it names an interface of one host, and
    breaks every tool it reaches), no IPv4 address in IPv6 clothing."""
    if isinstance(value, ipaddress.IPv6Address):
        if value.scope_id is not None:
            raise ValueError(f"{value}: a zone id (%{value.scope_id}) is not allowed")
        if value.ipv4_mapped is not None:
            raise ValueError(f"{value}: write the IPv4 address {value.ipv4_mapped} itself")
    return value


def _vip(
    value: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A VIP clients can reach: not an address that means "any", "this host", "this link"
    or "a group"."""
    unusable = (
        "unspecified" if value.is_unspecified
        else "loopback" if value.is_loopback
        else "link-local" if value.is_link_local
        else "multicast" if value.is_multicast
        else "broadcast" if value == ipaddress.IPv4Address("255.255.255.255")
        else None
    )  # fmt: skip
    if unusable:
        raise ValueError(f"{value} is a {unusable} address, not one a VIP can be")
    return value


IPAddress: TypeAlias = Annotated[
    ipaddress.IPv4Address | ipaddress.IPv6Address, AfterValidator(_plain_address)
]
VIPAddress: TypeAlias = Annotated[IPAddress, AfterValidator(_vip)]


def _network(value: object) -> object:
    """One clear error for a bad network, not one per IP family, and the network meant when
    host bits are set."""
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        try:
            meant = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network such as 198.18.0.0/24") from None
        raise ValueError(f"{value!r} has host bits set: the network is {meant}") from exc


IPNetwork: TypeAlias = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)
]


_HOST = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\Z"
)


def _host(value: str) -> str:
    if len(value) > 253 or not _HOST.match(value):
        raise ValueError(
            f"{value!r} is not a host name: lowercase DNS labels joined by '.', "
            "optionally starting with '*.' to match every subdomain"
        )
    return value


Host = Annotated[str, AfterValidator(_host)]


def host_covers(pattern: str, host: str) -> bool:
    """Does host `pattern` (a name, or `*.suffix`: every name under suffix, at any depth,
    not suffix itself) match every name `host` (a name or such a pattern) stands for?"""
    if pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        bare = host[2:] if host.startswith("*.") else host
        return bare.endswith(suffix) and len(bare) > len(suffix)
    return False


_PATH = re.compile(r"/[-A-Za-z0-9._~!$&'()*+,;=:@/%?]*")


def _http_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    if not _PATH.fullmatch(value):  # (`$` would let a final newline through)
        raise ValueError(
            "only the characters of a URL path and query (no space, quote, CR or LF: nothing "
            "that could end the request line)"
        )
    return value


HttpPath = Annotated[str, AfterValidator(_http_path)]
"""A URL path (and query) as sent on the wire."""


def _pem_certificates(value: str) -> str:
    """One or more PEM certificates (a chain, or a CA bundle), and no private key."""
    from cryptography import x509  # noqa: PLC0415 - only certificates need it

    if "PRIVATE KEY" in value:
        raise ValueError("contains a private key: never put keys here")
    try:
        certs = x509.load_pem_x509_certificates(value.encode())
    except ValueError as exc:
        raise ValueError(f"not PEM certificates: {exc}") from None
    if not certs:
        raise ValueError("no certificate found in the PEM text")
    return value


PemCertificates = Annotated[
    str, Field(min_length=1, max_length=256 * 1024), AfterValidator(_pem_certificates)
]
"""PEM certificates: a chain, or a bundle of CAs to trust."""
