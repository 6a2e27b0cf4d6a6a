"""The `nft` tool: how the agent loads the VIP guard's nftables table (`l4.firewall`).

`nft -f -` reads a whole script as one transaction: the kernel takes all of it or
nothing, so a refused script leaves the table as it was.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from l4.drivers import DriverError

NFT = "nft"
TIMEOUT_S = 30.0


class NftError(DriverError):
    """nft refused a script, or could not be run; the kernel's table is unchanged."""


class NftDriver:
    name = "nft"

    def __init__(self, binary: str = NFT) -> None:
        self.binary = binary
        self._scripts = 0

    @property
    def operations(self) -> int:
        """Scripts run so far."""
        return self._scripts

    def run(self, script: str) -> None:
        """Feed `script` to `nft -f -`; NftError says why it was refused."""
        self._scripts += 1
        self._nft("-f", "-", script=script)

    def list_json(self, *what: str) -> dict[str, Any]:
        """`nft -j list WHAT...`, parsed: ("chain", "inet openslb_guard", "connection_rates")."""
        listing: dict[str, Any] = json.loads(self._nft("-j", "list", *what))
        return listing

    def _nft(self, *args: str, script: str | None = None) -> str:
        command = " ".join((self.binary, *args))
        try:
            result = subprocess.run(
                [self.binary, *args],
                input=script,
                capture_output=True,
                text=True,
                check=False,
                timeout=TIMEOUT_S,
            )
        except FileNotFoundError:
            raise NftError(f"{self.binary} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{command}: no answer in {TIMEOUT_S:.0f} s") from None
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            raise NftError(f"{command}: {detail}")
        return result.stdout
