"""Sample backends for the demo and the tests: servers that answer with their name.

`python -m devbed.samples tcp --listen ADDR:PORT --name NAME` accepts TCP
connections, sends `NAME\\n`, then echoes what it receives. Small and dependency-free, so
it starts fast even inside the emulated lab VM.

`python -m devbed.samples grpc --name NAME --grpc ADDR:PORT [--http ADDR:PORT]` is a
real grpcio server. Its methods take and return raw bytes (no generated stubs), under
`/openslb.test.Echo/`:

- `Who`: answers the backend's name;
- `Hold`: waits the milliseconds given in the request, then answers the name (keeps a call
  in flight);
- `Stream`: request `COUNT,INTERVAL_MS`, answers COUNT messages `NAME I` that far apart.

It also serves the standard gRPC health protocol and, on HTTP/1.1, answers every GET with
its name, except `/healthz` (200, or 503 with `--unhealthy`, which also makes the gRPC
health service say NOT_SERVING). `--tls-port` serves the same gRPC methods over TLS with a
throwaway certificate. SIGTERM stops it gracefully: in-flight calls finish first.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from devbed.pki import self_signed
from slb.config import host_port


async def serve_tcp(host: str, port: int, name: str, ready: asyncio.Event | None = None) -> None:
    greeting = f"{name}\n".encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


SERVICE = "openslb.test.Echo"


class Echo(grpc.GenericRpcHandler):
    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = details.method
        if method == f"/{SERVICE}/Who":
            return grpc.unary_unary_rpc_method_handler(self.who)
        if method == f"/{SERVICE}/Hold":
            return grpc.unary_unary_rpc_method_handler(self.hold)
        if method == f"/{SERVICE}/Stream":
            return grpc.unary_stream_rpc_method_handler(self.stream)
        return None

    async def who(self, request: bytes, context: Any) -> bytes:
        return self.name

    async def hold(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(int(request or b"0") / 1000)
        return self.name

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, interval_ms = (int(x) for x in request.split(b","))
        for i in range(count):
            if i:
                await asyncio.sleep(interval_ms / 1000)
            yield self.name + f" {i}".encode()


BYTES_CAP = 16 << 20
"""The most `/bytes/N` answers with."""


def http_server(name: str, address: str, healthy: bool) -> http.server.ThreadingHTTPServer:
    named = name.encode()

    class Who(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            """Answers with its name, what it was asked (`x-seen`: the path, and every
            header as received) and `x-backend`; `/fail-on/NAME` fails on backend NAME;
            `/bytes/N` answers with N bytes (at most BYTES_CAP) instead of the name."""
            failing = self.path == "/healthz" and not healthy
            failing |= self.path == f"/fail-on/{name}"
            body = named
            size = self.path.removeprefix("/bytes/")
            if self.path.startswith("/bytes/") and size.isdigit():
                body = b"x" * min(int(size), BYTES_CAP)
            self.send_response(503 if failing else 200)
            seen = {"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/plain")
            self.send_header("X-Backend", name)
            self.send_header("X-Seen", json.dumps(seen))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815 - http.server's name

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(host_port(address, "--http"), Who)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def tls_credentials(name: str, cert_out: str | None = None) -> grpc.ServerCredentials:
    """A self-signed certificate for NAME.backend.test; its PEM is written to `cert_out`
    if given, for a client (or a load balancer) to trust."""
    pair = self_signed(f"{name}.backend.test")
    if cert_out:
        Path(cert_out).write_text(pair.chain_pem, encoding="ascii")
    return grpc.ssl_server_credentials([(pair.key_pem.encode(), pair.chain_pem.encode())])


async def serve_grpc(
    name: str,
    grpc_address: str,
    http_address: str | None,
    *,
    max_streams: int,
    healthy: bool,
    tls_port: int,
    tls_cert_out: str | None = None,
) -> None:
    options = [
        ("grpc.so_reuseport", 0),
        # grpc-core sheds load by cancelling calls the application has not picked up yet
        # (above 1,000 waiting, randomly); this Python server picks them up slowly in the
        # 5,000-stream burst, and the tests want Envoy's behaviour, not the backend's.
        ("grpc.server.max_pending_requests", 100_000),
        ("grpc.server.max_pending_requests_hard_limit", 100_000),
    ]
    if max_streams:
        options.append(("grpc.max_concurrent_streams", max_streams))
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Echo(name),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if healthy
        else (health_pb2.HealthCheckResponse.NOT_SERVING)
    )
    for service in ("", SERVICE):
        await health.set(service, status)
    if not server.add_insecure_port(grpc_address):
        raise SystemExit(f"cannot listen on {grpc_address}")
    if tls_port:
        host = host_port(grpc_address, "--grpc")[0]
        server.add_secure_port(f"{host}:{tls_port}", tls_credentials(name, tls_cert_out))
    await server.start()
    web = http_server(name, http_address, healthy) if http_address else None
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"ready {name}", flush=True)
    await stopped.wait()
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=30)
    if web is not None:
        web.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devbed.samples")
    sub = parser.add_subparsers(dest="kind", required=True)
    tcp = sub.add_parser("tcp", help="a TCP server that greets with its name, then echoes")
    tcp.add_argument("--listen", required=True)
    tcp.add_argument("--name", required=True)
    rpc = sub.add_parser("grpc", help="a gRPC (and HTTP/1.1) server that answers its name")
    rpc.add_argument("--name", required=True)
    rpc.add_argument("--grpc", required=True)
    rpc.add_argument("--http")
    rpc.add_argument("--max-streams", type=int, default=0)
    rpc.add_argument("--unhealthy", action="store_true")
    rpc.add_argument("--tls-port", type=int, default=0)
    rpc.add_argument("--tls-cert-out", help="Write the TLS port's certificate (PEM) here.")
    args = parser.parse_args()
    if args.kind == "tcp":
        host, port = host_port(args.listen, "--listen")
        asyncio.run(serve_tcp(host, port, args.name))
        return
    served = serve_grpc(
        args.name,
        args.grpc,
        args.http,
        max_streams=args.max_streams,
        healthy=not args.unhealthy,
        tls_port=args.tls_port,
        tls_cert_out=args.tls_cert_out,
    )
    asyncio.run(served)


if __name__ == "__main__":
    main()
