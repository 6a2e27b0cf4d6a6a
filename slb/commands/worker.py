"""`slb worker`: a Celery worker of the pipeline, for an LB node or for openslb itself.

The L7 tier has no worker: `slb xds` follows the change stream itself (see slb/pipeline.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from slb import config


@click.command("worker")
@click.option("--node", help="Program this LB node: consume l4.NODE with its l4 agent inside.")
@click.option("--control", is_flag=True, help="Consume openslb's own queue (drift re-assertion).")
@click.option("--beat", is_flag=True, help="Also run Celery beat, the re-assertion's clock.")
@click.option("--metrics-listen", default="", help="Serve Prometheus metrics on HOST:PORT.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_obj
def worker_cmd(
    settings: config.Settings,
    /,
    *,
    node: str | None,
    control: bool,
    beat: bool,
    metrics_listen: str,
    log_level: str,
) -> None:
    """Run a Celery worker that brings an LB node to the desired revision, or openslb's own.

    One task at a time (the solo pool): an LB node applies one revision after another,
    never two at once; the agent's lock guards against a second worker for the same node.
    """
    from slb.pipeline import CONTROL_QUEUE, l4_queue, make_app  # noqa: PLC0415

    queues = [q for q, wanted in ((l4_queue(node or ""), node), (CONTROL_QUEUE, control or beat))
              if wanted]  # fmt: skip
    if not queues:
        raise click.UsageError("say what to work for: --node NAME or --control")
    app = make_app(settings)
    app.conf.update(openslb_node=node)
    if metrics_listen:
        from prometheus_client import REGISTRY, start_http_server  # noqa: PLC0415

        from slb.storage.store import Store  # noqa: PLC0415
        from slb.taskmetrics import QueueDepth  # noqa: PLC0415

        if control or beat:
            REGISTRY.register(QueueDepth(Store.connect(settings.redis)))
        host, port = config.host_port(metrics_listen, "--metrics-listen")
        start_http_server(port, addr=host)
    role = node or "control"
    argv = ["worker", "--queues", ",".join(queues), "--pool", "solo", "--concurrency", "1",
            "--hostname", f"{role}@%h", "--loglevel", log_level, "--without-mingle",
            "--without-gossip"]  # fmt: skip
    if beat:
        schedule = Path(settings.dev.state_dir) / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(schedule)]
    app.worker_main(argv)
