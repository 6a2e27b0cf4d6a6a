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
from functools import partial
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

from slb import pki

log = logging.getLogger("openslb.console")


class RotatingSSLAdapter(BuiltinSSLAdapter):
    def __init__(self, cert: str, key: str) -> None:
        # Ours first: a pair that does not load is named by its settings, not by ssl.
        self.files = pki.RotatingFiles((cert, key), partial(server_context, cert, key), log)
        super().__init__(cert, key)
        self.context = self.files.current

    def wrap(self, sock: socket.socket) -> Any:
        if (context := self.files.changed()) is not None:
            self.context = context
        return super().wrap(sock)  # type: ignore[no-untyped-call]


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2 and up with the system's ciphers, from a pair first checked to load and
    belong together (so errors name the setting)."""
    pki.load_identity("console.tls_cert", cert, "console.tls_key", key)
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
