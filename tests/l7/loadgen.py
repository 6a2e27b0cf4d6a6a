"""Steady gRPC load until SIGINT, then a JSON summary: `python -m tests.l7.loadgen TARGET OUT
CONNECTIONS WINDOW`. Calls in flight when the signal arrives finish and are counted."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
import time
from pathlib import Path

import grpc

from devbed.l7harness import ECHO, RAW, aio_channel


async def run(target: str, out: Path, connections: int, window: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    ok, failed = 0, 0
    by_backend: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    channels = [aio_channel(target) for _ in range(connections)]
    await asyncio.gather(*(c.channel_ready() for c in channels))
    started = time.monotonic()
    out.with_suffix(".started").touch()

    async def worker(chan: grpc.aio.Channel) -> None:
        nonlocal ok, failed
        call = chan.unary_unary(ECHO + "Who", **RAW)
        while not stop.is_set():
            try:
                reply = await call(b"", timeout=10)
                ok += 1
                by_backend[reply.decode()] += 1
            except grpc.aio.AioRpcError as exc:
                failed += 1
                errors[f"{exc.code().name}: {exc.details()}"] += 1
            await asyncio.sleep(0.002)

    await asyncio.gather(*(worker(c) for c in channels for _ in range(window)))
    seconds = time.monotonic() - started
    await asyncio.gather(*(c.close() for c in channels))
    summary = {
        "ok": ok,
        "failed": failed,
        "by_backend": by_backend,
        "errors": errors,
        "seconds": seconds,
    }
    out.write_text(json.dumps(summary))


if __name__ == "__main__":
    target, out, connections, window = sys.argv[1:5]
    asyncio.run(run(target, Path(out), int(connections), int(window)))
