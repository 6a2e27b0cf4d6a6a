"""Sample backends for the demo and the tests: servers that answer with their name.

`python -m cmi.devbed.samples tcp --listen ADDR:PORT --name NAME` accepts TCP
connections, sends `NAME\\n`, then echoes what it receives. Small and dependency-free, so
it starts fast even inside the emulated lab VM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


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


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.devbed.samples")
    sub = parser.add_subparsers(dest="kind", required=True)
    tcp = sub.add_parser("tcp", help="a TCP server that greets with its name, then echoes")
    tcp.add_argument("--listen", required=True)
    tcp.add_argument("--name", required=True)
    args = parser.parse_args()
    host, port = split(args.listen)
    asyncio.run(serve_tcp(host, port, args.name))


if __name__ == "__main__":
    main()
