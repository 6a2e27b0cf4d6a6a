"""The netlink codec against pyroute2's own IPVS message definitions, both ways.

pyroute2 is the reference here: what l4 encodes, pyroute2 must decode to the same
fields; what pyroute2 encodes (as the kernel would answer), l4 must decode. The kernel
itself is exercised in the lab VM.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pyroute2.netlink.generic import ipvs as reference

from l4.drivers import netlink as nl
from l4.ipvs import Dest, ServiceKey, VirtualService

SERVICES = [
    VirtualService(ServiceKey("TCP", "198.18.0.10", 80), "rr"),
    VirtualService(ServiceKey("UDP", "198.18.0.53", 53), "sh", ("sh-fallback", "sh-port"), 300),
    VirtualService(ServiceKey("TCP", "2001:2::10", 443), "mh", ("mh-fallback",), 0),
]
DESTS = [
    Dest("198.18.1.1", 8080, 3, "nat"),
    Dest("198.18.1.2", 53, 0, "dr", upper=250),
    Dest("2001:2::1:1", 443, 65535, "tun"),
]


def decoded(message: bytes) -> dict[str, Any]:
    msg = reference.ipvsmsg(message)
    msg.decode()
    return {
        "cmd": msg["cmd"],
        "service": dict(msg.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"]),
        "dest": dict((msg.get_attr("IPVS_CMD_ATTR_DEST") or {"attrs": []})["attrs"]),
    }


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_a_service_request_decodes_to_its_fields(service: VirtualService) -> None:
    request = nl.Request(nl.CMD_NEW_SERVICE, nl.service_attr(nl.service_attrs(service)))
    got = decoded(nl.encode(42, request, seq=7, flags=nl.NLM_F_REQUEST | nl.NLM_F_ACK))
    fields = got["service"]
    assert got["cmd"] == reference.IPVS_CMD_NEW_SERVICE
    family = socket.AF_INET6 if service.key.family == 6 else socket.AF_INET
    assert fields["IPVS_SVC_ATTR_AF"] == family
    assert fields["IPVS_SVC_ATTR_PROTOCOL"] == {"TCP": 6, "UDP": 17}[service.key.protocol]
    assert fields["IPVS_SVC_ATTR_ADDR"] == service.key.address
    assert fields["IPVS_SVC_ATTR_PORT"] == service.key.port
    assert fields["IPVS_SVC_ATTR_SCHED_NAME"] == service.scheduler
    assert fields["IPVS_SVC_ATTR_TIMEOUT"] == service.timeout
    flags = fields["IPVS_SVC_ATTR_FLAGS"]
    assert flags["mask"] == 0xFFFFFFFF
    assert bool(flags["flags"] & nl.F_PERSISTENT) == bool(service.timeout)
    assert nl.flag_names(service.scheduler, flags["flags"]) == service.flags


@pytest.mark.parametrize("dest", DESTS, ids=str)
def test_a_real_server_request_decodes_to_its_fields(dest: Dest) -> None:
    key = ServiceKey("TCP", "2001:2::10" if ":" in dest.address else "198.18.0.10", 80)
    attrs = nl.service_attr(nl.service_key_attrs(key)) + nl.dest_attr(dest)
    got = decoded(nl.encode(42, nl.Request(nl.CMD_SET_DEST, attrs), seq=1, flags=1))
    assert got["cmd"] == reference.IPVS_CMD_SET_DEST
    assert got["service"]["IPVS_SVC_ATTR_ADDR"] == key.address
    fields = got["dest"]
    assert fields["IPVS_DEST_ATTR_ADDR"] == dest.address
    assert fields["IPVS_DEST_ATTR_PORT"] == dest.port
    assert fields["IPVS_DEST_ATTR_WEIGHT"] == dest.weight
    assert fields["IPVS_DEST_ATTR_FWD_METHOD"] == nl.FWD_METHODS[dest.forwarding]
    assert fields["IPVS_DEST_ATTR_U_THRESH"] == dest.upper
    assert fields["IPVS_DEST_ATTR_L_THRESH"] == 0  # IPVS's own: three quarters of the upper


def test_deleting_a_real_server_names_it_only() -> None:
    attrs = nl.dest_attr(DESTS[0], full=False)
    key = SERVICES[0].key
    got = decoded(
        nl.encode(
            1, nl.Request(nl.CMD_DEL_DEST, nl.service_attr(nl.service_key_attrs(key)) + attrs), 1, 1
        )
    )
    assert set(got["dest"]) == {
        "IPVS_DEST_ATTR_ADDR",
        "IPVS_DEST_ATTR_PORT",
        "IPVS_DEST_ATTR_ADDR_FAMILY",
    }


def kernel_style_reply(cmd: int, attrs: list[tuple[str, Any]]) -> bytes:
    """A message as the kernel sends it in a dump, encoded by pyroute2."""
    msg = reference.ipvsmsg()
    msg["cmd"] = cmd
    msg["version"] = 1
    msg["attrs"] = attrs
    msg["header"]["type"] = 42
    msg.encode()
    return bytes(msg.data)


def test_a_dumped_service_with_stats_decodes() -> None:
    stats = [(f"IPVS_STATS_ATTR_{n}", i + 1) for i, n in enumerate(
        ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS", "INBPS",
         "OUTBPS"])]  # fmt: skip
    raw = kernel_style_reply(
        reference.IPVS_CMD_NEW_SERVICE,
        [
            (
                "IPVS_CMD_ATTR_SERVICE",
                {
                    "attrs": [
                        ("IPVS_SVC_ATTR_AF", socket.AF_INET),
                        ("IPVS_SVC_ATTR_PROTOCOL", 17),
                        ("IPVS_SVC_ATTR_ADDR", "198.18.0.53"),
                        ("IPVS_SVC_ATTR_PORT", 53),
                        ("IPVS_SVC_ATTR_SCHED_NAME", "sh"),
                        ("IPVS_SVC_ATTR_FLAGS", {"flags": 0x1 | 0x2 | 0x8, "mask": 0xFFFFFFFF}),
                        ("IPVS_SVC_ATTR_TIMEOUT", 120),
                        ("IPVS_SVC_ATTR_STATS64", {"attrs": stats}),
                    ]
                },
            )
        ],
    )
    span = nl.message_attr(raw, nl.ATTR_SERVICE)
    assert span is not None
    service, got_stats = nl.decode_service(raw, span)
    assert service == VirtualService(
        ServiceKey("UDP", "198.18.0.53", 53), "sh", ("sh-fallback",), 120
    )
    assert list(got_stats) == list(range(1, 11))


def test_a_dumped_real_server_decodes_with_its_connection_counts() -> None:
    raw = kernel_style_reply(
        reference.IPVS_CMD_NEW_DEST,
        [
            (
                "IPVS_CMD_ATTR_DEST",
                {
                    "attrs": [
                        ("IPVS_DEST_ATTR_ADDR", "2001:2::1:1"),
                        ("IPVS_DEST_ATTR_PORT", 443),
                        ("IPVS_DEST_ATTR_FWD_METHOD", 2),
                        ("IPVS_DEST_ATTR_WEIGHT", 7),
                        ("IPVS_DEST_ATTR_ACTIVE_CONNS", 4),
                        ("IPVS_DEST_ATTR_INACT_CONNS", 5),
                        ("IPVS_DEST_ATTR_PERSIST_CONNS", 6),
                        ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET6),
                    ]
                },
            )
        ],
    )
    span = nl.message_attr(raw, nl.ATTR_DEST)
    assert span is not None
    dest, counters, _ = nl.decode_dest(raw, span, socket.AF_INET6)
    assert dest == Dest("2001:2::1:1", 443, 7, "tun")
    assert tuple(counters) == (4, 5, 6)


@pytest.mark.parametrize(
    ("scheduler", "flags"),
    [("sh", ("sh-fallback", "sh-port")), ("mh", ("mh-port",)), ("wrr", ("flag-1", "ops"))],
)
def test_flag_names_and_bits_round_trip(scheduler: str, flags: tuple[str, ...]) -> None:
    assert nl.flag_names(scheduler, nl.flag_bits(flags)) == flags
