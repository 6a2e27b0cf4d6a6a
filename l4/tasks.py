"""The L4 tier's Celery task: bring this LB node's IPVS to revision R.

A node's worker (`slb worker --node NAME`) hosts the node's agent: started when the
worker is ready (taking the node's lock, so a second worker for the node fails loudly),
kept busy between tasks by its housekeeping (drains, health, stats), stopped with the
worker. The task only says "at least revision R"; the agent reads the desired state
itself, and an older revision than it serves costs nothing, so a burst of revisions
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

from l4.agent import L4Agent, build_agent
from slb.pipeline import L4_APPLY, settings_of
from slb.taskmetrics import count_apply

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """The node could not be brought to the revision; Celery retries with backoff."""


class _Hosted:
    agent: L4Agent | None = None
    stop = threading.Event()


def _start(app: Any) -> L4Agent | None:
    node = app.conf.get("openslb_node")
    if not node or _Hosted.agent is not None:
        return _Hosted.agent
    settings = settings_of(app)
    agent = build_agent(settings, node).start()
    _Hosted.agent = agent
    _Hosted.stop.clear()
    threading.Thread(target=agent.keep_house, args=(_Hosted.stop,), daemon=True).start()
    agent.sync_to(0, force=True)  # repair anything a crash left before the first task
    log.info("l4 agent of %s started in this worker", node)
    return agent


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _start(sender.app)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _Hosted.agent is not None:
        _Hosted.stop.set()
        _Hosted.agent.stop()
        _Hosted.agent = None


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
    agent = _start(self.app)
    if agent is None or agent.node != node:
        raise Reject(f"this worker does not program node {node!r}", requeue=False)
    began = time.monotonic()
    report = agent.sync_to(revision, force=force)
    if not report.already:
        count_apply(
            "l4", node, settings_of(self.app), time.monotonic() - began, ok=not report.errors
        )
    if report.errors:
        raise ApplyError("; ".join(report.errors[:5]))
    summary = report.as_dict()
    summary["operations"] = len(report.operations)
    return summary
