"""cmi's own Celery task: the periodic re-assertion that repairs drift.

Celery beat sends `openslb.reassert` every `celery.reassert_s`; it tells every node to
bring itself to the current revision with `force`, which makes the l4 agent compare the
kernel with the plan even when it believes it is up to date. A rule deleted by hand with
ipvsadm is back within one period.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from cmi.handoff import Handoff
from slb.pipeline import settings_of
from slb.storage.store import Store


@shared_task(name="openslb.reassert", bind=True, ignore_result=True)
def reassert(self: Any) -> list[str]:
    settings = settings_of(self.app)
    store = Store.connect(settings.redis)
    return Handoff(store, self.app).announce(store.revision(), force=True)
