"""Field types shared by the model's objects, with their validators: DNS-label names,
ports by number or name, IP addresses and networks, host names.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, TypeAlias

from pydantic import AfterValidator, Field, PlainValidator

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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


Name = Annotated[str, AfterValidator(_dns_label)]
PortRef = Annotated[int | str, PlainValidator(_port_ref, json_schema_input_type=int | str)]
Port = Annotated[int, Field(ge=1, le=65535)]
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


_HOST = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def _host(value: str) -> str:
    if len(value) > 253 or not _HOST.match(value):
        raise ValueError(
            f"{value!r} is not a host name: lowercase DNS labels joined by '.', "
            "optionally starting with '*.' to match every subdomain"
        )
    return value


Host = Annotated[str, AfterValidator(_host)]
