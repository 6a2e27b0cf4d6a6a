"""The `nft` tool: how the agent loads the VIP guard's nftables table (`l4.firewall`).

`nft -f -` reads a whole script as one transaction: the kernel takes all of it or
nothing, so a refused script leaves the table as it was.
"""

from __future__ import annotations

import subprocess

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
        try:
            result = subprocess.run(
                [self.binary, "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
                check=False,
                timeout=TIMEOUT_S,
            )
        except FileNotFoundError:
            raise NftError(f"{self.binary} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{self.binary} -f -: no answer in {TIMEOUT_S:.0f} s") from None
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            raise NftError(f"{self.binary} -f -: {detail}")
