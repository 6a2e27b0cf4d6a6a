"""What the l4 agent says about its work: each sync's report and the node's findings.

`SyncReport` is what one sync did (the Celery task's result, `slb l4-agent --once`'s
output). The findings (foreign and blocked services, drains, failing and depooled real
servers, plan problems, last errors) are in `P:l4:NODE:report` as JSON, for the console.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from l4.health import Target
from l4.ipvs import ServiceKey, VirtualService
from l4.plan import IPVSPlan
from l4.reconcile import DrainKey

OPERATIONS_SHOWN = 100
"""A report lists this many operations at most: a full apply can make 11,000."""


@dataclass
class SyncReport:
    """What one sync did: JSON-able, for the Celery task's result and for logs."""

    node: str
    group: str | None
    revision: int
    """The revision this node now serves (unchanged if the apply failed)."""
    operations: list[str] = field(default_factory=list)
    """The operations applied, in order (the first OPERATIONS_SHOWN of them)."""
    operation_count: int = 0
    errors: list[str] = field(default_factory=list)
    vips_added: list[str] = field(default_factory=list)
    vips_removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    already: bool = False
    """True when the node was at the revision already and nothing was read or done."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def findings(
    revision: int,
    plan: IPVSPlan | None,
    desired: Mapping[ServiceKey, VirtualService],
    *,
    foreign: Iterable[ServiceKey],
    blocked: Iterable[ServiceKey],
    draining: Iterable[DrainKey],
    failing: Mapping[Target, str],
    errors: list[str],
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """The node's findings as `P:l4:NODE:report` holds them. `desired` is the plan with
    health applied: a real server it weighs 0 and the plan does not is depooled;
    `failing` maps each failing target to its last error; `problems` default to the
    plan's."""
    depooled = []
    planned_services = plan.services if plan else {}
    for key in plan.health_checks if plan else ():  # health weighs only checked services
        service, planned = desired.get(key), planned_services.get(key)
        if service is not None and planned is not None and planned.dests != service.dests:
            depooled += [f"{key} -> {d.address}:{d.port}" for d in service.dests if d.weight == 0]
    return {
        "revision": revision,
        "updated_at": time.time(),
        "foreign": sorted(str(k) for k in foreign),
        "blocked": sorted(str(k) for k in blocked),
        "draining": sorted(f"{key} -> {dest[0]}:{dest[1]}" for key, dest in draining),
        "failing": sorted(f"{target} ({error})" for target, error in failing.items()),
        "depooled": sorted(depooled),
        "problems": list(plan.problems if plan else ()) if problems is None else problems,
        "errors": errors,
    }
