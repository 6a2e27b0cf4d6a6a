"""devbed.grpcecho against the real echo-basic binary, run on the host (no cluster needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devbed import grpcecho
from devbed.images import ECHO_BASIC
from devbed.process import Process, connects, free_port, wait_until


@pytest.fixture
def echo_basic(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {"GRPC_ECHO_SERVER": "1", "HTTP_PORT": str(port), "POD_NAME": "web-7d4b9-x2x5q",
           "NAMESPACE": "demo"}  # fmt: skip
    process = Process("echo-basic", [str(ECHO_BASIC.binary)], tmp_path, env=env).start()
    try:
        wait_until(lambda: process.check_alive() and connects("127.0.0.1", port), 10, "echo")
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def test_the_pod_name_is_read_from_the_reply(echo_basic: str) -> None:
    assert grpcecho.who(echo_basic, 3) == ["web-7d4b9-x2x5q"] * 3
    with grpc.insecure_channel(echo_basic) as channel:
        assert grpcecho.echo_who(channel) == "web-7d4b9-x2x5q"


def test_a_failed_call_raises() -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpcecho.echo_who(f"127.0.0.1:{free_port()}", timeout=2)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_decoder_skips_other_fields_and_rejects_truncation() -> None:
    context = b"\x0a\x04demo" + b"\x22\x03p-1"  # namespace=1, pod=4
    assertions = b"\x0a\x02/x" + b"\x10\x96\x01" + b"\x22" + bytes([len(context)]) + context
    reply = b"\x0a" + bytes([len(assertions)]) + assertions + b"\x12\x00"
    assert grpcecho.pod(reply) == "p-1"
    assert grpcecho.pod(b"\x12\x00") == ""
    with pytest.raises(ValueError, match="truncated"):
        grpcecho.pod(reply[:-5])
