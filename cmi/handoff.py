"""Handing work on: every new revision becomes "bring X to revision R" tasks.

The contract with the tiers, whoever wrote the revision (cmi, the console, `slb`):
`openslb.l4.apply(node, revision, force=False)` on queue `l4.<node>`, for every node of
every node group: that node's l4 agent brings its IPVS to at least `revision`. (The L7 tier
needs no task: `slb xds` follows the change stream itself and pushes each revision to its
Envoys; see slb/pipeline.py.)
A task never carries a diff: the worker reads the desired state itself. Tasks for a
revision older than what a node already serves do nothing, and a burst of revisions read
in one batch from the change stream is announced once, for the newest. A node's queue holds
at most one task: while one waits, announcements only raise the revision it will take
(`slb.storage.announce`), so an offline node's queue does not grow.
"""

from __future__ import annotations

import threading
from functools import partial

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from slb.model import NodeGroup
from slb.pipeline import L4_APPLY, l4_queue
from slb.storage import connect
from slb.storage.announce import Announcements
from slb.storage.follow import Follower
from slb.storage.store import Store

OUTAGES = (redis.RedisError, OperationalError)
"""What a broker or store outage raises: waited out, never fatal to the handoff."""


class Handoff:
    def __init__(self, store: Store, app: Celery) -> None:
        self.store = store
        self.app = app
        self.announced = 0
        """The newest revision announced."""
        self.announcements = Announcements(store)

    def announce(self, revision: int, *, force: bool = False) -> list[str]:
        """Announce `revision` to every node; send an apply task to each node whose queue
        holds none (one that waits takes the newest announcement when it runs); return the
        queues tasks went to."""
        queues = []
        for group in self.store.all(NodeGroup).values():
            for node in group.obj.nodes:
                queue = l4_queue(node.name)
                if not self.announcements.record(node.name, queue, revision, force=force):
                    continue
                self.app.send_task(
                    L4_APPLY,
                    kwargs={"node": node.name, "revision": revision, "force": force},
                    queue=queue,
                )
                queues.append(queue)
        self.announced = max(self.announced, revision)
        return queues

    def run(self, stop: threading.Event) -> None:
        """Announce the current revision, then the newest of each batch of changes, until
        `stop` (trimmed past: the store's revision as it is then). A Redis outage (store or
        broker) is waited out, and what it held up is announced once Redis is back."""
        for step in Follower(self.store, kinds=()).follow(stop):
            if not step.quiet:
                connect.until_done(stop, partial(self.announce, step.revision), outages=OUTAGES)
