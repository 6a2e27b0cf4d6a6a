"""nftables, in process: how the agent loads the VIP guard's table (`l4.firewall`).

The agent calls libnftables (the library behind the `nft` tool, Debian's `libnftables1`,
which `nftables` depends on) through ctypes rather than running `nft`: on a busy or slow
node, starting a process per change cost more than everything else the change did (about
100 ms of 150 in the emulated lab VM). A buffer of commands is one transaction, as
`nft -f` makes it: the kernel takes all of it or nothing, so a refused script leaves the
table as it was.

Each call makes a context of its own in the calling thread, so its netlink socket is in
that thread's network namespace (tests run the agent in namespaces), and calls are made
one at a time: libnftables keeps state that is not documented as safe between threads.
So listings (the drift repair's whole table, the rates' counters: periodic, off the
change path, and most of a second for a big table in the emulated VM) run `nft -j` as a
process of their own, in the caller's namespace too, rather than hold up a change's
transaction.
"""

from __future__ import annotations

import ctypes
import json
import shlex
import subprocess
import threading
from typing import Any

from l4.drivers import DriverError

LIBRARY = "libnftables.so.1"
NFT = "nft"
TIMEOUT_S = 30.0

_calls = threading.Lock()


class NftError(DriverError):
    """nftables refused a script, or could not be reached; the kernel's table is unchanged."""


class NftDriver:
    name = "nft"

    def __init__(self, library: str = LIBRARY, binary: str = NFT) -> None:
        self.library, self.binary = library, binary
        self._lib: ctypes.CDLL | None = None
        self._scripts = 0

    @property
    def operations(self) -> int:
        """Scripts run so far."""
        return self._scripts

    def run(self, script: str) -> None:
        """Run `script` (nft's language) as one transaction; NftError says why it was
        refused."""
        self._scripts += 1
        self._nft(script)

    def list_json(self, *what: str) -> dict[str, Any]:
        """`nft -j list WHAT...`, parsed: ("chain", "inet openslb_guard", "connection_rates")."""
        command = [self.binary, "-j", "list", *what]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=TIMEOUT_S)  # fmt: skip
        except FileNotFoundError:
            raise NftError(f"{self.binary} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{shlex.join(command)}: no answer in {TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            detail = done.stderr.strip() or f"exit status {done.returncode}"
            raise NftError(f"{shlex.join(command)}: {detail}")
        listing: dict[str, Any] = json.loads(done.stdout)
        return listing

    def _nft(self, commands: str) -> str:
        lib = self._load()
        with _calls:
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftError("libnftables: cannot make a context")
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                failed = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
                output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
                error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            finally:
                lib.nft_ctx_free(ctx)
        if failed:
            first = commands.split("\n", 1)[0][:80]
            raise NftError(f"nft ({first} ...): {error.strip() or 'refused'}")
        return output

    def _load(self) -> ctypes.CDLL:
        """The library, loaded at the first call: a node without it reports each sync's
        failure (and serves IPVS all the same) instead of failing to start."""
        if self._lib is None:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError:
                raise NftError(f"{self.library} not found: install nftables") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).restype = ctypes.c_char_p
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            self._lib = lib
        return self._lib
