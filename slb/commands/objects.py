"""`slb listener|lb|pool|node-group`: operators' objects from the command line.

Every write goes through `slb.operations`, so it is validated, conflict-checked and
audited exactly as the console's are. Errors name the field and exit with status 1.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from slb import config
from slb.model import (
    PATH_MATCHES,
    Limits,
    ModelError,
    Protocol,
    parse_value_matches,
    target_fields,
)
from slb.operations import Operations
from slb.selector import LabelSelector
from slb.storage.secrets import load_keyring
from slb.storage.store import ConflictError, Store


def _operations(settings: config.Settings) -> Operations:
    store = Store.connect(settings.redis)
    return Operations(store, actor=f"cli:{getpass.getuser()}",
                      keyring=load_keyring(settings.secrets),
                      instances_per_namespace=settings.cmi.instances_per_namespace)  # fmt: skip


@contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except ModelError as exc:
        for error in exc.errors:
            click.echo(f"error: {exc.kind} {error}", err=True)
        sys.exit(1)
    except (ConflictError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    if value is None or value == ():
        return
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


@click.group("listener")
def listener_group() -> None:
    """Operators' listeners: a protocol and port on an instance, forwarding to Services."""


def _listener_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--lb", "load_balancer", help="Instance (load balancer) name."),
        click.option("--protocol", type=click.Choice([p.value for p in Protocol])),
        click.option("--port", type=int),
        click.option("--selector", help="Which exposed Services, e.g. 'app=cart,env in (prod)'."),
        click.option("--target-port", help="The Services' port, by name or number."),
        click.option("--scheduler"),
        click.option("--forwarding", type=click.Choice(["nat", "dr", "tun"])),
        click.option("--health-check", "hc_type", help="tcp, http, grpc or none."),
        click.option("--hc-path"),
        click.option("--hc-interval", type=int),
        click.option("--hc-timeout", type=int),
        click.option("--healthy-threshold", type=int),
        click.option("--unhealthy-threshold", type=int),
        click.option("--persistence", type=click.Choice(["none", "source_ip", "cookie"])),
        click.option("--persistence-timeout", type=int),
        click.option("--idle-timeout", type=int, help="Seconds; HTTP, HTTPS, GRPC only."),
        click.option("--request-timeout", type=int, help="0: none; HTTP, HTTPS, GRPC only."),
        click.option(
            "--access-log/--no-access-log",
            default=None,
            help="Log every request on the Envoy (HTTP, HTTPS, GRPC only; costs CPU).",
        ),
        click.option("--certificate", "certificates", multiple=True),
        click.option("--backend-protocol", type=click.Choice(["http1", "h2c", "tls"])),
        click.option("--tls-policy", type=click.Choice(["tls12", "tls12_strict", "tls13"])),
        click.option("--client-ca", type=click.File(), help="HTTPS: CAs (PEM) client "
                     "certificates must chain to (mutual TLS); 'none' with --client-auth none."),
        click.option("--client-auth", type=click.Choice(["required", "optional", "none"])),
        click.option("--client-san", "client_sans", multiple=True,
                     help="A DNS name a client certificate may carry; repeat."),
        click.option("--backend-ca", type=click.File(),
                     help="Backend protocol tls: verify the backends against these CAs (PEM)."),
        click.option("--backend-sni", help="Backend protocol tls: the server name to send."),
        click.option("--max-connections", type=int,
                     help="Per Envoy; TCP/UDP: per LB node, over the backends (at most 10,000)."),
        click.option("--connections-per-second", type=int,
                     help="Per Envoy; TCP/UDP: per LB node."),
        click.option("--requests-per-second", type=int, help="L7, per Envoy; beyond: 429."),
        click.option("--request-bandwidth", "request_bandwidth_kib_s", type=int,
                     help="L7: each request's body and its response's, KiB a second."),
        click.option("--allow", "allowed_sources", multiple=True,
                     help="A client network (CIDR) that may connect; repeat; 'any': every one."),
        click.option("--deny", "denied_sources", multiple=True,
                     help="A client network refused, even if allowed; repeat; 'none': clear."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


_HEALTH_OPTIONS = (
    ("hc_path", "path"),
    ("hc_interval", "interval_s"),
    ("hc_timeout", "timeout_s"),
    ("healthy_threshold", "healthy_threshold"),
    ("unhealthy_threshold", "unhealthy_threshold"),
)


def _listener_fields(options: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in ("load_balancer", "protocol", "port", "scheduler", "forwarding", "backend_protocol"):
        _set(data, key, options[key])
    if options["selector"] is not None:
        selector = LabelSelector.parse(options["selector"])
        data["selector"] = selector.model_dump(mode="json")
    target = options["target_port"]
    if target is not None:
        data["target_port"] = int(target) if target.isdigit() else target
    if options["hc_type"] == "none":
        data["health_check"] = None
    else:
        _set(data, "health_check.type", options["hc_type"])
        for option, field in _HEALTH_OPTIONS:
            _set(data, f"health_check.{field}", options[option])
    _set(data, "persistence.mode", options["persistence"])
    _set(data, "persistence.timeout_s", options["persistence_timeout"])
    _set(data, "idle_timeout_s", options["idle_timeout"])
    _set(data, "request_timeout_s", options["request_timeout"])
    _set(data, "access_log", options["access_log"])
    _set(data, "certificates", list(options["certificates"]) or None)
    data.update(_tls_fields(options))
    for limit in Limits.model_fields:
        _set(data, f"limits.{limit}", options[limit] or None)  # 0: no limit
        if options[limit] == 0:
            data.setdefault("limits", {})[limit] = None
    for field, clear in (("allowed_sources", "any"), ("denied_sources", "none")):
        given = list(options[field])
        if given == [clear]:
            data[field] = []
        elif given:
            data[field] = given
    return data


def _tls_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The TLS settings given, both ways: the policy, client certificates, backends'."""
    data: dict[str, Any] = {}
    _set(data, "tls_policy", options["tls_policy"])
    if options["client_auth"] == "none":
        data["client_certificates"] = None
    elif options["client_ca"] is not None or options["client_auth"] or options["client_sans"]:
        clients = data["client_certificates"] = {}
        _set(clients, "ca_pem", options["client_ca"].read() if options["client_ca"] else None)
        _set(clients, "mode", options["client_auth"])
        _set(clients, "subject_alt_names", list(options["client_sans"]) or None)
    if options["backend_ca"] is not None or options["backend_sni"]:
        backend = data["backend_tls"] = {}
        _set(backend, "ca_pem", options["backend_ca"].read() if options["backend_ca"] else None)
        _set(backend, "sni", options["backend_sni"])
    return data


@listener_group.command("add")
@click.argument("name")
@_listener_options
@click.pass_obj
def listener_add(settings: config.Settings, /, name: str, **options: Any) -> None:
    """Create listener NAME."""
    with _reported():
        stored = _operations(settings).add_listener({"name": name, **_listener_fields(options)})
    click.echo(f"listener {name} created at revision {stored.revision}")


@listener_group.command("set")
@click.argument("name")
@_listener_options
@click.pass_obj
def listener_set(settings: config.Settings, /, name: str, **options: Any) -> None:
    """Change fields of listener NAME."""
    with _reported():
        stored = _operations(settings).update_listener(name, _listener_fields(options))
    click.echo(f"listener {name} updated at revision {stored.revision}")


@listener_group.command("rm")
@click.argument("name")
@click.pass_obj
def listener_rm(settings: config.Settings, name: str) -> None:
    """Delete listener NAME (listeners made from a Service change with the Service)."""
    with _reported():
        revision = _operations(settings).remove_listener(name)
    click.echo(f"listener {name} deleted at revision {revision}")


@listener_group.command("list")
@click.pass_obj
def listener_list(settings: config.Settings) -> None:
    """Every listener, its owner and whether it is served."""
    rows = _operations(settings).listeners()
    click.echo(f"{'NAME':40} {'LB':24} {'PROTO':6} {'PORT':>5}  {'OWNER':30} STATUS")
    for row in rows:
        li = row.listener
        owner = f"{li.owner.kind.value}:{li.owner.name}"
        status = click.style(row.status, fg="green" if row.status == "served" else "yellow")
        proto = li.protocol.value
        click.echo(
            f"{li.name:40} {li.load_balancer:24} {proto:6} {li.port:>5}  {owner:30} {status}"
        )


@listener_group.command("show")
@click.argument("name")
@click.pass_obj
def listener_show(settings: config.Settings, name: str) -> None:
    """Listener NAME as JSON, with its revision and status."""
    for row in _operations(settings).listeners():
        if row.listener.name == name:
            document = row.listener.model_dump(mode="json")
            click.echo(
                json.dumps({**document, "revision": row.revision, "status": row.status}, indent=2)
            )
            return
    click.echo(f"error: no listener named {name!r}", err=True)
    sys.exit(1)


@listener_group.group("rule")
def rule_group() -> None:
    """Forwarding rules of an HTTP, HTTPS or GRPC listener, tried in order.

    \b
    slb listener rule add web api --path-prefix /api/ --to app=api
    slb listener rule add web canary --header x-canary --to app=api --to app=api-v2 \\
        --weights 90,10
    slb listener rule add web to-https --https-redirect --position 0
    slb listener rule add web down --path-exact /maintenance --respond 503 --body 'back soon'
    """


def _pairs(values: tuple[str, ...], option: str) -> list[dict[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r}: NAME=VALUE", param_hint=option)
        out.append({"name": name, "value": rest})
    return out


def _rule_fields(name: str, o: dict[str, Any]) -> dict[str, Any]:
    if o["file"] is not None:
        given = json.load(o["file"])
        if not isinstance(given, dict):
            raise click.BadParameter("must hold one rule, a JSON object", param_hint="--file")
        return {**given, "name": name}
    rule: dict[str, Any] = {"name": name}
    for key in (*PATH_MATCHES, "grpc_method", "method", "timeout_s", "backend_protocol"):
        _set(rule, key, o[key])
    if o["grpc_only"]:
        rule["grpc_only"] = True
    _set(rule, "hosts", list(o["hosts"]) or None)
    _set(rule, "headers", parse_value_matches(o["headers"]) or None)
    _set(rule, "query_params", parse_value_matches(o["query"]) or None)
    weights = [int(w) for w in o["weights"].split(",")] if o["weights"] else []
    if weights and len(weights) != len(o["to"]):
        raise click.BadParameter("one weight per --to", param_hint="--weights")
    targets = []
    for i, picks in enumerate(o["to"]):
        target = target_fields(picks)
        _set(target, "target_port", _port(o["to_port"]))
        _set(target, "weight", weights[i] if weights else None)
        targets.append(target)
    if not targets and o["to_port"] is not None:
        targets = [{"target_port": _port(o["to_port"])}]
    _set(rule, "forward_to", targets or None)
    if o["https_redirect"]:
        rule["redirect"] = {"scheme": "https", "code": 301}
    for field in ("scheme", "host", "port", "path", "code"):
        _set(rule, f"redirect.{field}", o[f"redirect_{field}"])
    _set(rule, "redirect.path_prefix", o["redirect_prefix"])
    if o["respond"] is not None:
        rule["fixed_response"] = {"status": o["respond"]}
    _set(rule, "fixed_response.body", o["body"])
    _set(rule, "fixed_response.content_type", o["content_type"])
    _set(rule, "rewrite.path_prefix", o["rewrite_prefix"])
    _set(rule, "rewrite.path", o["rewrite_path"])
    _set(rule, "rewrite.host", o["rewrite_host"])
    for side in ("request", "response"):
        prefix = "" if side == "request" else "response_"
        _set(rule, f"{side}_headers.set", _pairs(o[f"set_{prefix}header"], "--set-header") or None)
        _set(rule, f"{side}_headers.add", _pairs(o[f"add_{prefix}header"], "--add-header") or None)
        _set(rule, f"{side}_headers.remove", list(o[f"remove_{prefix}header"]) or None)
    _set(rule, "retry.attempts", o["retries"])
    _set(rule, "retry.retry_on", o["retry_on"].split(",") if o["retry_on"] else None)
    _set(rule, "retry.per_try_timeout_s", o["per_try_timeout"])
    return rule


def _port(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


@rule_group.command("add")
@click.argument("listener")
@click.argument("name")
@click.option("--position", type=int, help="0: first. Default: last, or where a rule of this "
              "name already stands (it is replaced).")  # fmt: skip
@click.option("--file", type=click.File(), help="The whole rule as JSON (the REST API's form).")
@click.option("--host", "hosts", multiple=True, help="Exact or '*.'-wildcard; none: any host.")
@click.option("--path-prefix", help="Any path that starts so (/api matches /apix).")
@click.option("--path-segments", help="Whole segments: /api matches /api and /api/x, not /apix.")
@click.option("--path-exact")
@click.option("--path-regex", help="RE2, matched against the whole path.")
@click.option("--grpc-service")
@click.option("--grpc-method")
@click.option("--header", "headers", multiple=True, help="NAME, NAME=VALUE or NAME~REGEX.")
@click.option("--query", multiple=True, help="NAME, NAME=VALUE or NAME~REGEX.")
@click.option("--method")
@click.option("--grpc-only", is_flag=True, help="Only gRPC calls (content-type application/grpc).")
@click.option(
    "--to",
    multiple=True,
    help="A label selector, 'service NAMESPACE/NAME', or 'listener': its Services.",
)
@click.option("--to-port", help="The targets' port, by name or number (default: the listener's).")
@click.option("--weights", help="Comma-separated, one per --to.")
@click.option(
    "--backend-protocol",
    type=click.Choice(["http1", "h2c", "tls"]),
    help="How the targets are reached (default: the listener's; h2c for --grpc-only).",
)
@click.option("--https-redirect", is_flag=True, help="Redirect to https:// on port 443 (301).")
@click.option("--redirect-scheme", type=click.Choice(["http", "https"]))
@click.option("--redirect-host")
@click.option("--redirect-port", type=int)
@click.option("--redirect-path")
@click.option("--redirect-prefix", help="Replaces the matched --path-prefix.")
@click.option("--redirect-code", type=click.Choice(["301", "302", "303", "307", "308"]))
@click.option("--respond", type=int, help="Answer with this status (a fixed response).")
@click.option("--body")
@click.option("--content-type")
@click.option("--rewrite-prefix", help="Replaces the matched --path-prefix before forwarding.")
@click.option("--rewrite-path", help="Replaces the whole path (the query is kept).")
@click.option("--rewrite-host")
@click.option("--set-header", multiple=True, help="NAME=VALUE on the forwarded request.")
@click.option("--add-header", multiple=True)
@click.option("--remove-header", multiple=True)
@click.option("--set-response-header", multiple=True, help="NAME=VALUE on the answer.")
@click.option("--add-response-header", multiple=True)
@click.option("--remove-response-header", multiple=True)
@click.option("--timeout", "timeout_s", type=int, help="Seconds; 0: none.")
@click.option("--retries", type=int)
@click.option("--retry-on", help="Comma-separated: 5xx, gateway-error, reset, ...")
@click.option("--per-try-timeout", type=float)
@click.pass_obj
def rule_add(settings: config.Settings, /, listener: str, name: str, **options: Any) -> None:
    """Add rule NAME to LISTENER, or replace it."""
    if options["redirect_code"] is not None:
        options["redirect_code"] = int(options["redirect_code"])
    with _reported():
        rule = _rule_fields(name, options)
        stored = _operations(settings).put_rule(listener, rule, options["position"])
    at = [r.name for r in stored.obj.routes].index(name)
    click.echo(f"rule {name} is #{at + 1} of listener {listener}, revision {stored.revision}")


@rule_group.command("rm")
@click.argument("listener")
@click.argument("name")
@click.pass_obj
def rule_rm(settings: config.Settings, listener: str, name: str) -> None:
    """Remove rule NAME from LISTENER."""
    with _reported():
        stored = _operations(settings).remove_rule(listener, name)
    click.echo(f"rule {name} removed from listener {listener}, revision {stored.revision}")


@rule_group.command("move")
@click.argument("listener")
@click.argument("name")
@click.argument("position", type=int)
@click.pass_obj
def rule_move(settings: config.Settings, listener: str, name: str, position: int) -> None:
    """Put rule NAME of LISTENER at POSITION (0: first)."""
    with _reported():
        stored = _operations(settings).move_rule(listener, name, position)
    order = ", ".join(r.name for r in stored.obj.routes)
    click.echo(f"rules of listener {listener}: {order} (revision {stored.revision})")


@rule_group.command("list")
@click.argument("listener")
@click.pass_obj
def rule_list(settings: config.Settings, listener: str) -> None:
    """LISTENER's rules in the order they are tried, each as one JSON line."""
    for row in _operations(settings).listeners():
        if row.listener.name == listener:
            for rule in row.listener.routes:
                click.echo(json.dumps(rule.model_dump(mode="json", exclude_defaults=True)))
            return
    click.echo(f"error: no listener named {listener!r}", err=True)
    sys.exit(1)


@click.group("lb")
def lb_group() -> None:
    """Load balancer instances: a VIP on a node group."""


@lb_group.command("add")
@click.argument("name")
@click.option("--vip", help="A fixed VIP (else one is allocated from --pool).")
@click.option("--pool", help="Address pool to allocate the VIP from.")
@click.option("--node-group", default="default", show_default=True)
@click.option("--namespace", help="The tenant it is for (default: the cluster's).")
@click.option(
    "--allow", "allowed", multiple=True,
    help="A namespace whose Services may join it too (repeatable; '*': every one).",
)  # fmt: skip
@click.option(
    "--allow-selector", "allowed_selector",
    help="Namespaces whose labels match may join it too, e.g. 'team=shop,env in (prod)'.",
)  # fmt: skip
@click.pass_obj
def lb_add(  # noqa: PLR0917 - click passes options as arguments
    settings: config.Settings,
    name: str,
    vip: str | None,
    pool: str | None,
    node_group: str,
    namespace: str | None,
    allowed: tuple[str, ...],
    allowed_selector: str | None,
) -> None:
    """Create instance NAME. Services join it with `openslb.io/expose=NAME`: those of its
    namespace, of the --allow ones, and of those --allow-selector matches."""
    with _reported():
        stored = _operations(settings).add_load_balancer(
            {"name": name, "vip": vip, "pool": pool, "node_group": node_group,
             "namespace": namespace, "allowed_namespaces": list(allowed),
             "allowed_namespace_selector": allowed_selector}
        )  # fmt: skip
    click.echo(f"instance {name} created at revision {stored.revision}")


@lb_group.command("rm")
@click.argument("name")
@click.pass_obj
def lb_rm(settings: config.Settings, name: str) -> None:
    """Delete instance NAME (refused while it has listeners)."""
    with _reported():
        revision = _operations(settings).remove_load_balancer(name)
    click.echo(f"instance {name} deleted at revision {revision}")


@lb_group.command("list")
@click.pass_obj
def lb_list(settings: config.Settings) -> None:
    """Every instance with its VIP."""
    from slb.model import LoadBalancer  # noqa: PLC0415

    click.echo(f"{'NAME':40} {'VIP':20} {'POOL':12} {'NODE GROUP':12} OWNER")
    for name, stored in sorted(_operations(settings).store.all(LoadBalancer).items()):
        lb = stored.obj
        vip = str(lb.vip) if lb.vip else "(pending)"
        owner = f"{lb.owner.kind.value}:{lb.owner.name}"
        click.echo(f"{name:40} {vip:20} {lb.pool or '-':12} {lb.node_group:12} {owner}")


@click.group("pool")
def pool_group() -> None:
    """Address pools that VIPs are allocated from."""


@pool_group.command("set")
@click.argument("name")
@click.argument("cidrs", nargs=-1, required=True)
@click.option("--no-auto-assign", is_flag=True, help="Only explicitly requested VIPs come from it.")
@click.pass_obj
def pool_set(
    settings: config.Settings, name: str, cidrs: tuple[str, ...], no_auto_assign: bool
) -> None:
    """Create or replace pool NAME with CIDRS."""
    with _reported():
        stored = _operations(settings).put_pool(
            {"name": name, "cidrs": list(cidrs), "auto_assign": not no_auto_assign}
        )
    click.echo(f"pool {name} written at revision {stored.revision}")


@pool_group.command("rm")
@click.argument("name")
@click.pass_obj
def pool_rm(settings: config.Settings, name: str) -> None:
    """Delete pool NAME (refused while instances use it)."""
    with _reported():
        revision = _operations(settings).remove_pool(name)
    click.echo(f"pool {name} deleted at revision {revision}")


@pool_group.command("list")
@click.pass_obj
def pool_list(settings: config.Settings) -> None:
    """Every address pool."""
    from slb.model import AddressPool  # noqa: PLC0415

    for name, stored in sorted(_operations(settings).store.all(AddressPool).items()):
        click.echo(f"{name:20} {', '.join(str(c) for c in stored.obj.cidrs)}")


@click.group("node-group")
def node_group_group() -> None:
    """LB node groups: the nodes that run IPVS and Envoy for a set of instances."""


@node_group_group.command("set")
@click.argument("name")
@click.argument("nodes", nargs=-1, required=True)
@click.option(
    "--envoy-ready-port", type=int, default=0, show_default=True,
    help="Check each node's Envoy at http://ADDRESS:PORT/ready (the bootstrap's stats "
    "listener, reachable from the other nodes) every second; a node failing twice gets no "
    "new L7 flows. 0: no check.",
)  # fmt: skip
@click.pass_obj
def node_group_set(
    settings: config.Settings, name: str, nodes: tuple[str, ...], envoy_ready_port: int
) -> None:
    """Create or replace group NAME with NODES given as NAME=ADDRESS."""
    with _reported():
        members = []
        for node in nodes:
            node_name, _, address = node.partition("=")
            members.append({"name": node_name, "address": address})
        group: dict[str, object] = {"name": name, "nodes": members}
        if envoy_ready_port:
            group["envoy_check"] = {
                "type": "http", "path": "/ready", "port": envoy_ready_port, "interval_s": 1,
                "timeout_s": 1, "healthy_threshold": 2, "unhealthy_threshold": 2,
            }  # fmt: skip
        stored = _operations(settings).put_node_group(group)
    click.echo(f"node group {name} written at revision {stored.revision}")
