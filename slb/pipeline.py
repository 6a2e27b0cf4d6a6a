"""The one Celery configuration every openslb worker shares (broker and results: Redis).

Tasks live next to what they drive (`l4/tasks.py`, `cmi/tasks.py`) and are named
`openslb.<tier>.<verb>`; this module knows them only by name, so the ground floor imports no
wing. The pipeline, honestly:
- L4: each new revision becomes one `openslb.l4.apply` task per LB node (cmi's handoff); the
  node's worker hosts its l4 agent, and Celery gives the task back if the worker dies.
- L7: no task. `slb xds` follows the change stream itself, translates each revision and
  pushes it to every connected Envoy; each Envoy's ACK or NACK lands on the status board.
  (A task here once only waited for the xDS server to publish, holding a worker while it
  polled: measured without it, label -> first call through Envoy is no slower; BENCHMARKS.md.)
- Drift: Celery beat sends `openslb.reassert` every `celery.reassert_s` (cmi/tasks.py).

The settings that make a task survive a crash, as Celery's docs advise:
- `acks_late`: a task is acknowledged after it ran, so one whose worker dies is still
  unacknowledged (`reject_on_worker_lost` hands it back at once where a pool survives the
  death of its child; a node's solo worker killed outright leaves it to the next point);
- the Redis visibility timeout (`celery.visibility_timeout_s`): an unacknowledged task older
  than this is delivered again (kombu looks when a worker starts, then every few minutes),
  so it must exceed the slowest apply (tests/l4/test_worker.py kills a worker mid-apply);
- `worker_prefetch_multiplier = 1`: a worker holds one unacknowledged task at a time.
"""

from __future__ import annotations

from celery import Celery

from slb import config
from slb.config import Settings
from slb.storage import connect

TASK_MODULES = ("cmi.tasks", "l4.tasks")
L4_APPLY = "openslb.l4.apply"
REASSERT = "openslb.reassert"
CONTROL_QUEUE = "openslb"


def l4_queue(node: str) -> str:
    """Each LB node's agent consumes its own queue: one apply per node at a time."""
    return f"l4.{node}"


def make_app(settings: Settings, *, include_tasks: bool = True) -> Celery:
    app = Celery(
        "openslb",
        broker=settings.redis.url,
        backend=settings.redis.url,
        include=list(TASK_MODULES) if include_tasks else [],
    )
    # The ACL user and password go to the broker and the result backend in memory, never
    # in a URL that could be printed (Celery masks passwords and censors *PASS* settings).
    auth = connect.credentials(settings.redis)
    app.conf.update(
        broker_user=auth.get("username"),
        broker_password=auth.get("password"),
        redis_username=auth.get("username"),
        redis_password=auth.get("password"),
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CONTROL_QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.celery.visibility_timeout_s,
            "global_keyprefix": f"{settings.redis.prefix}:celery:",
            # One list per queue (no priorities): an LB node's Redis user may touch its own
            # queue's key and no other (`slb.storage.acl`).
            "priority_steps": [0],
            "socket_timeout": settings.redis.timeout_s,  # bounded waits, as `slb.storage.connect`
            "socket_connect_timeout": settings.redis.timeout_s,
        },
        redis_socket_timeout=settings.redis.timeout_s,
        redis_socket_connect_timeout=settings.redis.timeout_s,
        result_backend_transport_options={
            "global_keyprefix": f"{settings.redis.prefix}:celery:",
        },
        beat_schedule={
            "reassert-every-node": {
                "task": REASSERT,
                "schedule": float(settings.celery.reassert_s),
                "options": {"queue": CONTROL_QUEUE, "expires": settings.celery.reassert_s},
            }
        },
        worker_hijack_root_logger=False,
        # No remote control: any client of the broker (an LB node's worker user among them)
        # could otherwise shut every worker down, or change their queues, by a broadcast.
        worker_enable_remote_control=False,
    )
    app.conf.openslb_settings = settings
    return app


def settings_of(app: Celery) -> Settings:
    """The settings the app was made with: tasks read their configuration here."""
    settings = app.conf.openslb_settings
    assert isinstance(settings, Settings)
    return settings


def __getattr__(name: str) -> Celery:
    """`celery -A slb.pipeline:app flower` (or `inspect`, `events`): the app made from
    the settings in force ($OPENSLB_CONFIG), so its broker and key prefix are openslb's."""
    if name == "app":
        return make_app(config.load(), include_tasks=False)
    raise AttributeError(name)
