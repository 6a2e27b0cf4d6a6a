"""Step: no namespace takes more than its share of what every tenant shares.

A namespace has at most `cmi.instances_per_namespace` instances (each a VIP from a pool
every tenant draws from: its Services' own, and those operators made for it), and its
Services own at most `cmi.listeners_per_namespace` listeners (each a port, health checks and
Envoy configuration on every LB node of its group). A Service that would pass either is
refused, told which setting, and keeps what it was served with: a quota never takes away
traffic already served.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cmi.build import Built, Previous, refused
from cmi.gateway import KEY_PREFIX
from cmi.mirror import Mirror
from slb.model import Listener, LoadBalancer

Build = tuple[str, Previous, Built]
"""A Service's key, what it owns now, and what the build step wants it to own."""


def within_quotas(
    builds: list[Build], mirror: Mirror, *, instances_limit: int, listeners_limit: int
) -> list[Build]:
    """The builds, those that would pass a quota (0: none) refused; the store is counted
    only when a build asks for more than its Service owns."""
    wants_instance = bool(instances_limit) and any(_new_instance(p, b) for _, p, b in builds)
    wants_listeners = bool(listeners_limit) and any(_growth(p, b) > 0 for _, p, b in builds)
    if not wants_instance and not wants_listeners:
        return builds
    instances = _per_namespace(b.namespace for b in mirror.of(LoadBalancer).values())
    listeners = _per_namespace(li.tenant for li in mirror.of(Listener).values())
    for key, previous, built in builds:  # what the batch gives back makes room in it
        listeners[_namespace(key)] += min(_growth(previous, built), 0)
    out = []
    for key, previous, built in builds:
        namespace = _namespace(key)
        new_instance, growth = _new_instance(previous, built), max(_growth(previous, built), 0)
        why = None
        if instances_limit and new_instance and instances[namespace] >= instances_limit:
            why = (f"namespace {namespace} owns {instances_limit} instances already "
                   "(cmi.instances_per_namespace)")  # fmt: skip
        elif listeners_limit and growth and listeners[namespace] + growth > listeners_limit:
            why = (f"its {len(built.listeners)} listener(s) would take namespace {namespace} "
                   f"past {listeners_limit} listeners (cmi.listeners_per_namespace)")  # fmt: skip
        if why is not None:
            out.append((key, previous, refused(key, previous, why)))
            continue
        instances[namespace] += int(new_instance)
        listeners[namespace] += growth
        out.append((key, previous, built))
    return out


def _namespace(key: str) -> str:
    """The namespace of a Service's key or a Gateway's."""
    return key.removeprefix(KEY_PREFIX).split("/", 1)[0]


def _per_namespace(namespaces: Iterable[str | None]) -> Counter[str]:
    return Counter(n for n in namespaces if n is not None)


def _new_instance(previous: Previous, built: Built) -> bool:
    """Does the Service ask for an instance of its own that it does not own yet?"""
    return built.dedicated is not None and previous.load_balancer is None


def _growth(previous: Previous, built: Built) -> int:
    """How many more listeners the Service would own than it does."""
    return len(built.listeners) - len(previous.listeners)
