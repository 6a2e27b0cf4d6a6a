"""Benchmarks measured inside the lab VM: the host half boots it, the guest half measures.

`python -m bench.AREA` boots the VM and runs itself there with `--guest`; the guest half
writes its figures as JSON to the job's output directory, the host half reads them back.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def measure_in_lab_vm(
    area: str, args: argparse.Namespace, guest: Callable[[argparse.Namespace], dict[str, Any]]
) -> tuple[dict[str, Any], float] | None:
    """In the guest: measure, write the figures, return None. On the host: boot the VM,
    run the guest half there, return its figures and the VM's boot time."""
    if args.guest:
        out = Path(os.environ["OPENSLB_LAB_OUT"]) / f"{area}.json"
        out.write_text(json.dumps(guest(args)))
        return None

    from devbed.labvm import LabVM  # noqa: PLC0415

    command = shlex.join([sys.executable, "-m", f"bench.{area}", "--guest", *sys.argv[1:]])
    result = LabVM(memory_mb=2048).run(command, cwd=REPO, timeout=3600, echo=True)
    if result.returncode != 0 or f"{area}.json" not in result.files:
        sys.exit(f"bench.{area} failed in the lab VM (exit {result.returncode})")
    return json.loads(result.files[f"{area}.json"]), result.boot_s
