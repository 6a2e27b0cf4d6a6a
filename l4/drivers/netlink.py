"""IPVS generic-netlink messages, encoded and decoded with `struct`, sent in batches.

Why not pyroute2's own message classes: encoding one IPVS message with them costs about
0.6 ms of Python on the development host and ~10x that under the lab VM's emulation, so
11,000 rules took 130 s where `ipvsadm-restore` took 5.4 s. The IPVS netlink ABI is small
and stable (include/uapi/linux/ip_vs.h), so this module writes the bytes itself and packs
many requests into one `sendmsg`: the kernel runs every message of a batch in that one
call (netlink_rcv_skb), and only failures and the batch's last message are answered.
pyroute2 still resolves the IPVS family id; tests check these encodings against its
decoder, attribute by attribute.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from l4.ipvs import (
    Counters,
    Dest,
    Forwarding,
    ServiceKey,
    Stats,
    Transport,
    VirtualService,
)

# netlink (include/uapi/linux/netlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
SOL_NETLINK = 270
NETLINK_GENERIC = 16
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33

# IPVS commands (include/uapi/linux/ip_vs.h)
GENL_VERSION = 1
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8

# IPVS_CMD_ATTR_*
ATTR_SERVICE = 1
ATTR_DEST = 2

# IPVS_SVC_ATTR_*
SVC_AF = 1
SVC_PROTOCOL = 2
SVC_ADDR = 3
SVC_PORT = 4
SVC_FWMARK = 5
SVC_SCHED_NAME = 6
SVC_FLAGS = 7
SVC_TIMEOUT = 8
SVC_NETMASK = 9
SVC_STATS = 10
SVC_STATS64 = 12

# IPVS_DEST_ATTR_*
DEST_ADDR = 1
DEST_PORT = 2
DEST_FWD_METHOD = 3
DEST_WEIGHT = 4
DEST_U_THRESH = 5
DEST_L_THRESH = 6
DEST_ACTIVE_CONNS = 7
DEST_INACT_CONNS = 8
DEST_PERSIST_CONNS = 9
DEST_STATS = 10
DEST_ADDR_FAMILY = 11
DEST_STATS64 = 12

# IP_VS_SVC_F_*
F_PERSISTENT = 0x1
F_HASHED = 0x2  # the kernel sets it on every service; flag_names leaves it out
F_ONEPACKET = 0x4
F_SCHED1 = 0x8
F_SCHED2 = 0x10
F_SCHED3 = 0x20

# IP_VS_CONN_F_* forwarding methods
FWD_METHODS: dict[Forwarding, int] = {"nat": 0, "tun": 2, "dr": 3}
FWD_NAMES: dict[int, Forwarding] = {v: k for k, v in FWD_METHODS.items()}

PROTOCOLS: dict[str, int] = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTOCOL_NAMES: dict[int, Transport] = {6: "TCP", 17: "UDP", 132: "SCTP"}
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}

_NLMSGHDR = struct.Struct("=IHHII")
_HEADERS = struct.Struct("=IHHIIBBH")
"""nlmsghdr and genlmsghdr together."""
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct(">H")
_U32 = struct.Struct("=I")
_FLAGS = struct.Struct("=II")
_ERR = struct.Struct("=i")

# Whole attribute runs in one struct each: the hot path packs one real server per call.
# Ports are sent in network order (htons), attributes padded to 4 bytes.
_SVC_KEY: dict[int, struct.Struct] = {
    af: struct.Struct(f"=HHH2xHHH2xHH{n}sHHH2x")
    for af, n in ((socket.AF_INET, 4), (socket.AF_INET6, 16))
}
_DEST_KEY: dict[int, struct.Struct] = {
    af: struct.Struct(f"=HHHH{n}sHHH2xHHH2x")
    for af, n in ((socket.AF_INET, 4), (socket.AF_INET6, 16))
}
_DEST_SETTINGS = struct.Struct("=HHIHHIHHIHHI")
"""Forwarding method, weight, upper and lower connection thresholds."""

_SCHED_FLAG_BITS = {"fallback": F_SCHED1, "port": F_SCHED2}


def flag_bits(flags: Sequence[str]) -> int:
    """ipvsadm's flag names -> IP_VS_SVC_F_* bits (sh- and mh- flags share SCHED1/2)."""
    bits = 0
    for name in flags:
        if name == "ops":
            bits |= F_ONEPACKET
        elif name.startswith("flag-"):
            bits |= F_SCHED1 << (int(name.removeprefix("flag-")) - 1)
        else:
            bits |= _SCHED_FLAG_BITS[name.split("-", 1)[1]]
    return bits


def flag_names(scheduler: str, bits: int) -> tuple[str, ...]:
    """The inverse of `flag_bits`, named as ipvsadm names them for this scheduler."""
    names = []
    if bits & F_ONEPACKET:
        names.append("ops")
    for index, bit in enumerate((F_SCHED1, F_SCHED2, F_SCHED3)):
        if bits & bit:
            if scheduler in ("sh", "mh") and index < 2:
                names.append(f"{scheduler}-{('fallback', 'port')[index]}")
            else:
                names.append(f"flag-{index + 1}")
    return tuple(sorted(names))


def _attr(kind: int, payload: bytes) -> bytes:
    header = _NLA.pack(_NLA.size + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def service_key_attrs(key: ServiceKey) -> bytes:
    """The attributes that name a service: enough for delete and for real-server commands."""
    family = FAMILIES[key.family]
    if key.protocol == "FWM":
        return _attr(SVC_AF, _U16.pack(family)) + _attr(SVC_FWMARK, _U32.pack(key.port))
    packed = socket.inet_pton(family, key.address)
    return _SVC_KEY[family].pack(
        6, SVC_AF, family,
        6, SVC_PROTOCOL, PROTOCOLS[key.protocol],
        4 + len(packed), SVC_ADDR, packed,
        6, SVC_PORT, socket.htons(key.port),
    )  # fmt: skip


def service_attrs(service: VirtualService) -> bytes:
    """Every attribute the kernel requires to add or change a service."""
    bits = flag_bits(service.flags)
    if service.timeout:
        bits |= F_PERSISTENT
    netmask = 128 if service.key.family == 6 else 0xFFFFFFFF
    return (
        service_key_attrs(service.key)
        + _attr(SVC_SCHED_NAME, service.scheduler.encode() + b"\0")
        + _attr(SVC_FLAGS, _FLAGS.pack(bits, 0xFFFFFFFF))
        + _attr(SVC_TIMEOUT, _U32.pack(service.timeout))
        + _attr(SVC_NETMASK, _U32.pack(netmask))
    )


def dest_attr(dest: Dest, full: bool = True) -> bytes:
    """IPVS_CMD_ATTR_DEST for a real server; `full` adds forwarding, weight and thresholds,
    which add and set need and delete does not."""
    family = _family(dest.address)
    packed = socket.inet_pton(family, dest.address)
    settings = b""
    if full:
        settings = _DEST_SETTINGS.pack(
            8, DEST_FWD_METHOD, FWD_METHODS[dest.forwarding],
            8, DEST_WEIGHT, dest.weight,
            8, DEST_U_THRESH, dest.upper,
            8, DEST_L_THRESH, 0,
        )  # fmt: skip
    layout = _DEST_KEY[family]
    return layout.pack(
        layout.size + len(settings), ATTR_DEST,
        4 + len(packed), DEST_ADDR, packed,
        6, DEST_PORT, socket.htons(dest.port),
        6, DEST_ADDR_FAMILY, family,
    ) + settings  # fmt: skip


class Request(NamedTuple):
    """One IPVS command: its number and its top-level attributes, already encoded."""

    cmd: int
    attrs: bytes = b""


def service_attr(attrs: bytes) -> bytes:
    """Wrap service attributes as IPVS_CMD_ATTR_SERVICE (computed once per service)."""
    return _attr(ATTR_SERVICE, attrs)


def encode(family_id: int, request: Request, seq: int, flags: int) -> bytes:
    length = _HEADERS.size + len(request.attrs)
    return _HEADERS.pack(length, family_id, flags, seq, 0, request.cmd, GENL_VERSION, 0) + (
        request.attrs
    )


# -- decoding --------------------------------------------------------------------------------

Buffer = bytes | memoryview


def attr_offsets(data: Buffer, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Where each attribute's payload lies in `data[start:end]`, by type (nested flag off).

    Offsets rather than copies: a dump of 10,000 real servers decodes each attribute once,
    straight from the received datagram.
    """
    offsets: dict[int, tuple[int, int]] = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4:
            break
        offsets[kind & 0x3FFF] = (start + 4, start + length)
        start += (length + 3) & ~3
    return offsets


def message_attr(message: Buffer, kind: int) -> tuple[int, int] | None:
    """A top-level attribute of one generic-netlink message, as (start, end) offsets."""
    return attr_offsets(message, _HEADERS.size, len(message)).get(kind)


def _address(data: Buffer, span: tuple[int, int], family: int) -> str:
    start = span[0]
    size = 16 if family == socket.AF_INET6 else 4
    return sys.intern(socket.inet_ntop(family, bytes(data[start : start + size])))


def _u32(data: Buffer, offsets: dict[int, tuple[int, int]], kind: int) -> int:
    span = offsets.get(kind)
    return _U32.unpack_from(data, span[0])[0] if span else 0


def decode_stats(data: Buffer, offsets: dict[int, tuple[int, int]], s64: int, s32: int) -> Stats:
    """STATS64 when the kernel sends it (3.16+), else the older STATS."""
    span = offsets.get(s64) or offsets.get(s32)
    if span is None:
        return Stats()
    nested = attr_offsets(data, *span)
    values = []
    for i in range(1, len(Stats._fields) + 1):
        field = nested.get(i)
        if field is None:
            values.append(0)
        else:
            values.append(int.from_bytes(data[field[0] : field[1]], sys.byteorder))
    return Stats(*values)


def decode_service(data: Buffer, span: tuple[int, int]) -> tuple[VirtualService, Stats]:
    """An IPVS_CMD_ATTR_SERVICE -> the service (without real servers) and its stats."""
    attrs = attr_offsets(data, *span)
    family = _U16.unpack_from(data, attrs[SVC_AF][0])[0]
    name_span = attrs.get(SVC_SCHED_NAME, (0, 0))
    scheduler = bytes(data[name_span[0] : name_span[1]]).rstrip(b"\0").decode()
    if SVC_ADDR not in attrs:
        any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - a label
        key = ServiceKey("FWM", any_address, _u32(data, attrs, SVC_FWMARK))
    else:
        protocol = PROTOCOL_NAMES.get(_U16.unpack_from(data, attrs[SVC_PROTOCOL][0])[0], "TCP")
        port = _BE16.unpack_from(data, attrs[SVC_PORT][0])[0]
        key = ServiceKey(protocol, _address(data, attrs[SVC_ADDR], family), port)
    bits = _u32(data, attrs, SVC_FLAGS)
    timeout = _u32(data, attrs, SVC_TIMEOUT) if bits & F_PERSISTENT else 0
    service = VirtualService(key, scheduler, flag_names(scheduler, bits), timeout)
    return service, decode_stats(data, attrs, SVC_STATS64, SVC_STATS)


def decode_dest(
    data: Buffer, span: tuple[int, int], service_family: int, stats: bool = False
) -> tuple[Dest, Counters, Stats]:
    """An IPVS_CMD_ATTR_DEST -> the real server, its connection counts and (if asked) stats."""
    attrs = attr_offsets(data, *span)
    family_span = attrs.get(DEST_ADDR_FAMILY)
    family = _U16.unpack_from(data, family_span[0])[0] if family_span else service_family
    dest = Dest(
        _address(data, attrs[DEST_ADDR], family),
        _BE16.unpack_from(data, attrs[DEST_PORT][0])[0],
        _u32(data, attrs, DEST_WEIGHT),
        FWD_NAMES.get(_u32(data, attrs, DEST_FWD_METHOD) & 0x7, "nat"),
        _u32(data, attrs, DEST_U_THRESH),
    )
    counters = Counters(
        _u32(data, attrs, DEST_ACTIVE_CONNS),
        _u32(data, attrs, DEST_INACT_CONNS),
        _u32(data, attrs, DEST_PERSIST_CONNS),
    )
    return dest, counters, decode_stats(data, attrs, DEST_STATS64, DEST_STATS) if stats else Stats()


# -- the socket ------------------------------------------------------------------------------


class NetlinkError(OSError):
    """The kernel refused one request; errno and the request's position are kept."""

    def __init__(self, code: int, index: int | None = None) -> None:
        self.index = index
        super().__init__(code, os.strerror(code))


class BatchSocket:
    """A generic-netlink socket that sends many requests per system call.

    Only the last request of each batch asks for an acknowledgement; the kernel answers
    failures whether asked or not, so reading up to that one acknowledgement collects
    every outcome of the batch.
    """

    BATCH_BYTES = 16 * 1024
    """Per sendmsg; small enough that a batch of failures cannot fill the receive buffer."""

    def __init__(self, family_id: int) -> None:
        self.family_id = family_id
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._buffer = bytearray(256 * 1024)
        self._seq = 0
        self.changes = 0
        """Change requests (add, set, delete) sent since the socket opened."""
        self.queries = 0
        """Read requests (get, dump) sent since the socket opened."""

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def execute(self, requests: Sequence[Request]) -> list[NetlinkError]:
        """Run every request in order; return the failures, each with its request's index."""
        failures: list[NetlinkError] = []
        start = 0
        while start < len(requests):
            chunk, seqs, last_offset = bytearray(), list[int](), 0
            while start + len(seqs) < len(requests) and len(chunk) < self.BATCH_BYTES:
                seq = self._next_seq()
                last_offset = len(chunk)
                chunk += encode(self.family_id, requests[start + len(seqs)], seq, NLM_F_REQUEST)
                seqs.append(seq)
            _U16.pack_into(chunk, last_offset + 6, NLM_F_REQUEST | NLM_F_ACK)
            self.sock.send(chunk)
            self.changes += len(seqs)
            pending = set(seqs)
            done = False
            while not done:
                for kind, seq, message in self._receive():
                    if kind != NLMSG_ERROR or seq not in pending:
                        continue
                    code = -_ERR.unpack_from(message, _NLMSGHDR.size)[0]
                    if code:
                        failures.append(NetlinkError(code, start + seqs.index(seq)))
                    done = seq == seqs[-1]
            start += len(seqs)
        return failures

    def dump(self, request: Request) -> list[memoryview]:
        """A dump request's reply messages, until the kernel says done."""
        seq = self._send_one(request, NLM_F_REQUEST | NLM_F_DUMP)
        replies: list[memoryview] = []
        while True:
            for kind, reply_seq, message in self._receive():
                if reply_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    code = -_ERR.unpack_from(message, _NLMSGHDR.size)[0]
                    if code:
                        raise NetlinkError(code)
                    return replies
                replies.append(message)

    def get(self, request: Request) -> memoryview | None:
        """A single-object request's reply; None if the kernel has no such object."""
        seq = self._send_one(request, NLM_F_REQUEST)
        while True:
            for kind, reply_seq, message in self._receive():
                if reply_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -_ERR.unpack_from(message, _NLMSGHDR.size)[0]
                    if code in (errno.ESRCH, errno.ENOENT):
                        return None
                    raise NetlinkError(code)
                return message

    def _send_one(self, request: Request, flags: int) -> int:
        seq = self._next_seq()
        self.sock.send(encode(self.family_id, request, seq, flags))
        self.queries += 1
        return seq

    def _receive(self) -> Iterator[tuple[int, int, memoryview]]:
        """(type, seq, message) for each message of the next datagram."""
        try:
            size = self.sock.recv_into(self._buffer)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise NetlinkError(errno.ENOBUFS) from None
            raise
        data = memoryview(bytes(self._buffer[:size]))
        offset = 0
        while offset + _NLMSGHDR.size <= size:
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                return
            yield kind, seq, data[offset : offset + length]
            offset += (length + 3) & ~3
