"""The pipeline's `openslb.l7.apply` task: it waits for the xDS server to publish."""

from __future__ import annotations

from dataclasses import replace

import pytest
from celery.exceptions import Retry

from devbed.l7harness import load_balancer
from devbed.redis import RedisServer
from l7 import tasks
from l7.published import published_revision
from slb import config
from slb.pipeline import L7_APPLY, make_app
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.l7.test_server import ServerThread


def test_the_task_returns_once_the_server_published_the_revision(
    store: Store, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = config.load(environ={})
    settings = replace(
        settings, redis=replace(settings.redis, url=redis_server.url, prefix=store.prefix)
    )
    app = make_app(settings, include_tasks=False)
    task = app.tasks[L7_APPLY]
    revision = store.put(load_balancer("lb", "198.18.0.1"))
    monkeypatch.setattr(tasks, "WAIT_S", 0.3)
    with pytest.raises(Retry):  # no xDS server has published it: try again later
        task.apply(kwargs={"revision": revision}, throw=True)
    StatusBoard(store).report("l7", "n1", "default", revision)
    with ServerThread(store):
        result = task.apply(kwargs={"revision": revision, "force": True}, throw=True).get()
    assert published_revision(store) == revision
    assert result == {
        "revision": revision,
        "published": revision,
        "envoys": {"n1": {"group": "default", "revision": revision, "error": None}},
    }
