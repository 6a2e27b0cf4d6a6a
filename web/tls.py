"""The console's HTTPS: cheroot's TLS adapter, made to reread a rotated certificate.

`console.tls_cert` and `console.tls_key` are looked at on each new connection; when either
changed, a new TLS context is made from them and serves the connections after it, so a
certificate is renewed without a restart. A pair that does not load (half-written, a key
of another certificate) leaves the last good one serving, with a warning.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

from cmi import pki
from cmi.config import ConfigError

log = logging.getLogger("openslb.console")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2 and up with the system's ciphers, as the console serves it."""
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class RotatingSSLAdapter(BuiltinSSLAdapter):
    def __init__(self, cert: str, key: str) -> None:
        super().__init__(cert, key)
        self.context = server_context(cert, key)
        self._stamp = pki.files_stamp(cert, key)
        self._lock = threading.Lock()

    def wrap(self, sock: socket.socket) -> Any:
        self._reload_if_changed()
        return super().wrap(sock)  # type: ignore[no-untyped-call]

    def _reload_if_changed(self) -> None:
        cert, key = self.certificate, self.private_key
        stamp = pki.files_stamp(cert, key)
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp  # files that fail to load are not retried until they change
            try:
                pki.load_identity("console.tls_cert", cert, "console.tls_key", key)
                context = server_context(cert, key)
            except (ConfigError, ssl.SSLError, OSError) as exc:
                log.warning("TLS files changed but do not load (%s); serving the previous "
                            "certificate", exc)  # fmt: skip
                return
            self.context = context
            log.info("TLS files changed: serving the new certificate")
