"""The console served by its production WSGI server (waitress) on a free loopback port."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from flask import Flask
from waitress.server import create_server


class ServedApp:
    """Serve `app` from a background thread while the `with` block runs."""

    def __init__(self, app: Flask, threads: int = 4, **options: Any) -> None:
        """`options`: waitress's, as `web.cli.waitress_options` gives them."""
        options.setdefault("threads", threads)
        self.server = create_server(app, host="127.0.0.1", port=0, **options)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.effective_port}"

    def __enter__(self) -> ServedApp:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        def close_all() -> None:
            # In the server's own thread: a socket closed under its select() from another
            # thread fails the loop (EBADF) instead of ending it.
            for channel in list(self.server._map.values()):
                channel.close()

        self.server.trigger.pull_trigger(close_all)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the console's server loop did not end"
        self.server.task_dispatcher.shutdown(timeout=5)
