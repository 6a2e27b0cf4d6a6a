"""A client of the Gateway API conformance echo server's gRPC Echo (image ECHO_BASIC): which
pod answered a call.

No generated stubs: the request is the empty EchoRequest (b"") and the reply is read with a
minimal protobuf wire decoder, down to EchoResponse.assertions(1).context(4).pod(4), which
the server fills from its POD_NAME environment variable.
"""

from __future__ import annotations

import grpc

SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
ECHO = f"/{SERVICE}/Echo"
PORT = 3000
"""Where echo-basic serves gRPC (its HTTP_PORT) with GRPC_ECHO_SERVER set."""
_POD_PATH = (1, 4, 4)  # EchoResponse.assertions -> Assertions.context -> Context.pod


def echo_who(channel_or_target: grpc.Channel | str, timeout: float = 5.0) -> str:
    """One Echo call: the name of the pod that answered. Raises grpc.RpcError on failure."""
    return who(channel_or_target, 1, timeout)[0]


def who(channel_or_target: grpc.Channel | str, calls: int, timeout: float = 5.0) -> list[str]:
    """`calls` Echo calls on one channel (one HTTP/2 connection if given a target): the pod
    that answered each, in order. Raises grpc.RpcError on the first failed call."""
    if isinstance(channel_or_target, str):
        with grpc.insecure_channel(channel_or_target) as channel:
            return who(channel, calls, timeout)
    echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel_or_target.unary_unary(ECHO)
    return [pod(echo(b"", timeout=timeout)) for _ in range(calls)]


def pod(reply: bytes) -> str:
    """The pod named in a serialized EchoResponse ("" if the server had no POD_NAME)."""
    message = reply
    for number in _POD_PATH:
        found = _field(message, number)
        if found is None:
            return ""
        message = found
    return message.decode()


def _field(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a protobuf message (proto3 merges the
    last one in), skipping fields of the other wire types."""
    found, offset = None, 0
    while offset < len(message):
        key, offset = _varint(message, offset)
        wire_type = key & 7
        if wire_type == 0:
            _, offset = _varint(message, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            length, offset = _varint(message, offset)
            if key >> 3 == number:
                found = message[offset : offset + length]
            offset += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if offset > len(message):
        raise ValueError("truncated protobuf message")
    return found


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """A base-128 varint at `offset`: its value and the offset after it (10 bytes at most)."""
    value = 0
    for shift in range(0, 70, 7):
        if offset >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise ValueError("protobuf varint longer than 10 bytes")
