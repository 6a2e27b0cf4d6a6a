"""The results file every benchmark writes: bench/results/AREA.json."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} x {cpu}, {memory_gib:.0f} GiB, {platform.platform()}"
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of the values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def metric(value: float, unit: str, target: float | None = None) -> dict[str, Any]:
    """One entry of a results file's `metrics`."""
    return {"value": round(value, 3), "unit": unit, "target": target}


def write(area: str, metrics: dict[str, dict[str, Any]], **extra: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{area}.json"
    document = {
        "command": _command(area),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "metrics": metrics,
        **extra,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write_size(
    area: str, metrics: dict[str, dict[str, Any]], setup_name: str, setup: dict[str, Any]
) -> Path:
    """AREA.json for a run at one size, keeping what runs at other sizes wrote: their
    metrics (each size's names carry its suffix, as `_10k`) and their `setup*` entries."""
    previous = RESULTS / f"{area}.json"
    document = json.loads(previous.read_text()) if previous.exists() else {}
    setups = {k: v for k, v in document.items() if k.startswith("setup")}
    setups[setup_name] = {"command": _command(area), **setup}
    return write(area, {**document.get("metrics", {}), **metrics}, **setups)


def size_suffix(size: int) -> str:
    """A metric name's suffix for a run's size: `_1k`, `_10k`, or `_N`."""
    return f"_{size // 1000}k" if size and size % 1000 == 0 else f"_{size}"


def _command(area: str) -> str:
    return " ".join([Path(sys.executable).name, "-m", f"bench.{area}", *sys.argv[1:]])
