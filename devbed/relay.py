"""A TCP relay on loopback that can black-hole a link: it stops forwarding in both
directions but keeps every connection open, as a dead link behind a firewall or NAT does
(no FIN, no RST). For tests of bounded waits."""

from __future__ import annotations

import select
import socket
import threading


class Relay:
    """Forwards 127.0.0.1:`port` to `target`; `blackhole()` stops it, `restore()` resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Relay:
        self._spawn(self._accept)
        return self

    def blackhole(self) -> None:
        self.flowing.clear()

    def restore(self) -> None:
        self.flowing.set()

    def stop(self) -> None:
        self._stop.set()
        self.flowing.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._spawn(self._pump, client, upstream)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Both directions of one connection; while black-holed, bytes wait unread."""
        with a, b:
            while not self._stop.is_set():
                if not self.flowing.wait(0.1):
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.1)
                for source in readable:
                    if not self.flowing.is_set():
                        break
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
