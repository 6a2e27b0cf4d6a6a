"""The L4 tier's Celery task: bring this LB node's IPVS to revision R.

A node's worker (`slb worker --node NAME`) hosts the node's agent: started when the
worker is ready (taking the node's lock), kept busy between tasks by its housekeeping
(drains, health, stats), stopped with the worker. A worker restarted after a crash finds
the dead one's lock until it expires (`LOCK_TTL_S`): it keeps trying to start its agent
meanwhile, and a task that comes first is retried until the agent runs, never dropped.
A second live worker for the node never gets the lock and says so in its log and its
tasks' failures. The task only says "at least revision R"; the agent reads the desired
state itself, and an older revision than it serves costs nothing, so a burst of revisions
ends in a few applies. A failed apply is retried with backoff, up to a cap; the periodic
re-assertion (`force`) repairs whatever a retry could not.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from l4.agent import L4Agent
from l4.assembly import build_agent
from l4.ownership import LOCK_TTL_S, NodeTakenError
from slb.pipeline import L4_APPLY, settings_of
from slb.storage.announce import Announcements
from slb.taskmetrics import count_apply

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """The node could not be brought to the revision; Celery retries with backoff."""


LOCK_RETRY_S = 5.0
"""How often a worker whose node is locked (by a dead worker, until it expires) tries again."""
LOCKED_RETRIES = int(2 * LOCK_TTL_S / LOCK_RETRY_S)
"""A task waits this many times for the node's lock: twice a dead worker's lock's life."""


class _Hosted:
    built: L4Agent | None = None
    agent: L4Agent | None = None
    """The built agent once it started (holds the node's lock)."""
    stop = threading.Event()
    starting = threading.Lock()
    """The ready handler's thread and a task may both try to start the agent."""


def _start(app: Any) -> L4Agent | None:
    """The worker's agent, started if it is not yet (NodeTakenError: the node is locked)."""
    node = app.conf.get("openslb_node")
    with _Hosted.starting:
        if not node or _Hosted.agent is not None:
            return _Hosted.agent
        if _Hosted.built is None:
            _Hosted.built = build_agent(settings_of(app), node)
        agent = _Hosted.agent = _Hosted.built.start()
    threading.Thread(target=agent.keep_house, args=(_Hosted.stop,), daemon=True).start()
    agent.sync_to(0, force=True)  # repair anything a crash left before the first task
    log.info("l4 agent of %s started in this worker", node)
    return agent


def _start_when_free(app: Any) -> None:
    """Start the agent as soon as the node's lock is free; a dead worker's lasts until it
    expires."""
    while not _Hosted.stop.is_set():
        try:
            _start(app)
            return
        except NodeTakenError as exc:
            log.warning("%s; trying again every %.0f s (a dead worker's lock expires within "
                        "%.0f s)", exc, LOCK_RETRY_S, LOCK_TTL_S)  # fmt: skip
        except Exception:
            log.exception("the l4 agent did not start; trying again in %.0f s", LOCK_RETRY_S)
        _Hosted.stop.wait(LOCK_RETRY_S)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _Hosted.stop.clear()
        threading.Thread(target=_start_when_free, args=(sender.app,), daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _Hosted.stop.set()
    if _Hosted.agent is not None:
        _Hosted.agent.stop()
        _Hosted.agent = _Hosted.built = None


@shared_task(
    name=L4_APPLY,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(ApplyError,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def apply(self: Task[Any, Any], node: str, revision: int, force: bool = False) -> dict[str, Any]:
    """Bring LB node `node` to at least `revision` (`force`: compare with the kernel anyway)."""
    try:
        agent = _start(self.app)
    except NodeTakenError as exc:  # until a dead worker's lock expires; a live one's: failed
        raise self.retry(exc=exc, countdown=LOCK_RETRY_S, max_retries=LOCKED_RETRIES) from exc
    if agent is None or agent.node != node:
        raise Reject(f"this worker does not program node {node!r}", requeue=False)
    announced = Announcements(agent.store).take(node)  # newer ones, while this one waited
    began = time.monotonic()
    report = agent.sync_to(max(revision, announced.revision))
    if force or announced.force:  # the drift check runs beside the next tasks, not before
        agent.request_repair()
    if not report.already:
        count_apply("l4", node, agent.store, time.monotonic() - began, ok=not report.errors)
    if report.errors:
        raise ApplyError("; ".join(report.errors[:5]))
    summary = report.as_dict()
    summary["operations"] = len(report.operations)
    return summary
