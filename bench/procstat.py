"""What a process costs, from /proc: CPU seconds and resident memory, for the benchmarks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of these processes so far (children they waited for included);
    a process gone meanwhile counts nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process, KiB: VmRSS and VmHWM."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
