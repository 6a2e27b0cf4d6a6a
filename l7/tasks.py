"""The L7 tier's Celery task: `openslb.l7.apply(revision, force=False)` on queue `l7`.

`slb xds` follows the change stream itself and pushes each revision to every Envoy, so
this task carries no configuration: it is the pipeline's check that the revision was
taken up. It waits, bounded, until an xDS server has published `revision` or a newer one
(retrying later if none is running or it is behind), then returns what every Envoy
reports on the status board. `force` changes nothing at L7: an Envoy cannot drift from
what it was sent, and one that restarts resyncs as soon as it reconnects.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task, shared_task

from l7.published import published_revision
from slb.pipeline import L7_APPLY, settings_of
from slb.storage.status import StatusBoard
from slb.storage.store import Store

WAIT_S = 30.0
RETRY_S = 5


def wait_published(store: Store, revision: int, timeout_s: float = WAIT_S) -> int:
    """The newest published revision once it is `revision` or newer, or when time is up."""
    deadline = time.monotonic() + timeout_s
    while (published := published_revision(store)) < revision and time.monotonic() < deadline:
        time.sleep(0.05)
    return published


@shared_task(name=L7_APPLY, bind=True, max_retries=None)
def apply(self: Task[Any, Any], revision: int, force: bool = False) -> dict[str, Any]:
    """Return once an xDS server has published `revision`; retry later if none has."""
    settings = settings_of(self.app)
    store = Store.connect(settings.redis)
    published = wait_published(store, revision, WAIT_S)
    if published < revision:
        raise self.retry(countdown=RETRY_S)
    envoys = StatusBoard(store).all("l7")
    return {
        "revision": revision,
        "published": published,
        "envoys": {
            node: {"group": s.group, "revision": s.revision, "error": s.error}
            for node, s in sorted(envoys.items())
        },
    }
