"""The lab VM boots Debian's kernel over the host's root and runs a command with real IPVS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devbed.labvm import LabVM

REPO = Path(__file__).resolve().parents[2]


def test_ip_vs_loads_and_the_command_reports_back() -> None:
    result = LabVM().run(
        "modprobe ip_vs && cat /proc/net/ip_vs && uname -r && echo to-stderr >&2 && exit 3",
        timeout=300,
    )
    assert result.returncode == 3
    assert "IP Virtual Server version" in result.stdout
    assert result.stdout.splitlines()[-1] == LabVM().version
    assert result.stderr == "to-stderr\n"
    assert 0 < result.boot_s < result.total_s


def test_the_host_kernel_has_no_ipvs() -> None:
    """Why the VM exists: if this fails, the host grew IPVS and lab tests could run here."""
    assert not Path("/proc/net/ip_vs").exists()


def test_slb_lab_run_passes_the_exit_status_through(tmp_path: Path) -> None:
    marker = tmp_path / "from-host.txt"
    marker.write_text("shared root")
    proc = subprocess.run(
        [sys.executable, "-m", "slb.cli", "lab", "run", "--no-network", "--",
         "sh", "-c", f"cat {marker} && touch {marker}.guest && exit 5"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    assert "shared root" in proc.stdout
    assert "lab VM: command exited 5" in proc.stderr
    # The guest writes to an overlay: the host's files are never touched.
    assert not Path(f"{marker}.guest").exists()
