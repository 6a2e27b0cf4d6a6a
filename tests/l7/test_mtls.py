"""Mutual TLS between Envoy and `slb xds`: real Envoys, the real server, certificates from
`slb pki`. An Envoy with a client certificate of the right CA gets its configuration; one
without a certificate, with another CA's, speaking plaintext, or expecting another server
name never gets a stream: the server counts none for it and Envoy stays disconnected. Nor
does a valid client that claims another node's id or a node group it is not a node of, and
a node taken out of its group loses its stream."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf.json_format import ParseDict

from devbed.envoy import EnvoyProxy
from devbed.l7harness import (
    Bed,
    dynamic_resources,
    listener,
    load_balancer,
    service,
    wait_programmed,
)
from devbed.process import wait_until
from l7.bootstrap import XdsTls, bootstrap
from slb.cli import main
from slb.model import NodeGroup
from slb.snapshot import Put
from slb.storage.store import Store
from tests.l7.test_bootstrap import PACKED, validate

PACKED_MESSAGES = (*PACKED, tls_pb2)  # for ParseDict: tls_pb2 is the transport socket's
SERVER_NAME = "xds.openslb.test"
CONNECTED = "control_plane.connected_state"
ATTEMPTS = "cluster.openslb-xds.upstream_cx_total"


def slb(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env={"OPENSLB_CONFIG": "", **(env or {})})


def make_pki(directory: Path) -> dict[str, Path]:
    """Two CAs: ours (the xDS server, Envoy n1) and another (an Envoy it never issued)."""
    ours, other = directory / "ca", directory / "other-ca"
    for args in (
        ["init", "--dir", str(ours)],
        ["issue", "--dir", str(ours), "--name", "xds", "--kind", "server",
         "--san", SERVER_NAME, "--san", "127.0.0.1"],
        ["issue", "--dir", str(ours), "--name", "n1", "--kind", "client"],
        ["init", "--dir", str(other)],
        ["issue", "--dir", str(other), "--name", "rogue", "--kind", "client"],
    ):  # fmt: skip
        result = slb("pki", *args)
        assert result.exit_code == 0, result.output
    return {"ca": ours / "ca.crt", "dir": ours, "other": other}


def envoy_bootstrap(
    tmp_path: Path, node: str, xds: str, *options: str, node_id: str = ""
) -> dict[str, Any]:
    """The bootstrap `slb envoy-bootstrap` writes for an Envoy (of group default unless the
    options say otherwise) named `node`, with the node id `node_id` or `node`."""
    out = tmp_path / f"{node}.json"
    result = slb("envoy-bootstrap", "--node-id", node_id or node, "--xds", xds,
                 "--stats-port", "0", "--out", str(out), *options)  # fmt: skip
    assert result.exit_code == 0, result.output
    config: dict[str, Any] = json.loads(out.read_text())
    return config


def start(bed: Bed, node: str, config: dict[str, Any], *, live: bool) -> EnvoyProxy:
    proxy = EnvoyProxy(bed.directory / node, config, name=node)
    bed.envoys.append(proxy)
    return proxy.start(live=live)


def test_only_envoys_with_a_client_certificate_of_the_ca_get_configuration(
    store: Store, bed: Bed, tmp_path: Path
) -> None:
    files = make_pki(tmp_path / "pki")
    ours, other, ca = files["dir"], files["other"], str(files["ca"])
    vip = bed.net.address(2)
    revision = store.apply([
        Put(NodeGroup.model_validate({"name": "default", "nodes": [
            {"name": "n1", "address": bed.net.address(11)}]})),
        Put(load_balancer("lb", vip)),
        Put(service("web", [(bed.net.address(101), 8080)], port_name="http")),
        Put(listener("web", "HTTP", 8080, app="web", target_port="http")),
    ])  # fmt: skip
    bed.xds.env.update({
        "OPENSLB_XDS_TLS_CERT": str(ours / "xds.crt"),
        "OPENSLB_XDS_TLS_KEY": str(ours / "xds.key"),
        "OPENSLB_XDS_TLS_CLIENT_CA": ca,
    })  # fmt: skip
    bed.xds.start()
    assert "mutual TLS" in bed.xds.log()
    xds = bed.xds.address

    # Envoy n1 checks the server's certificate for xds.openslb.test (SAN and SNI).
    good = envoy_bootstrap(
        tmp_path, "n1", xds, "--tls-cert", str(ours / "n1.crt"), "--tls-key",
        str(ours / "n1.key"), "--tls-ca", ca, "--tls-server-name", SERVER_NAME,
    )  # fmt: skip
    n1 = start(bed, "n1", good, live=True)
    wait_programmed(store, ["n1"], revision)
    assert "web" in str(dynamic_resources(n1)["listeners"])
    stats = n1.stats("openslb-xds.ssl.handshake|control_plane.connected_state")
    assert stats[CONNECTED] == 1
    assert stats["cluster.openslb-xds.ssl.handshake"] >= 1

    no_cert = json.loads(json.dumps(good))
    socket = no_cert["static_resources"]["clusters"][0]["transport_socket"]
    del socket["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"]
    rogues = {
        "no-cert": no_cert,
        "other-ca": envoy_bootstrap(
            tmp_path, "other-ca", xds, "--tls-cert", str(other / "rogue.crt"),
            "--tls-key", str(other / "rogue.key"), "--tls-ca", ca,
            "--tls-server-name", SERVER_NAME,
        ),
        "plaintext": envoy_bootstrap(tmp_path, "plaintext", xds),
        # A valid client whose idea of the server's name the certificate does not carry.
        "wrong-name": envoy_bootstrap(
            tmp_path, "wrong-name", xds, "--tls-cert", str(ours / "n1.crt"),
            "--tls-key", str(ours / "n1.key"), "--tls-ca", ca,
            "--tls-server-name", "other.openslb.test",
        ),
    }  # fmt: skip
    proxies = {node: start(bed, node, config, live=False) for node, config in rogues.items()}
    for node, proxy in proxies.items():
        wait_until(
            lambda p=proxy: p.stats(ATTEMPTS).get(ATTEMPTS, 0) >= 3,  # type: ignore[misc]
            30,
            f"{node} trying the xDS server three times",
        )

    # n1's certificate is valid, but it is not n2's, nor is n1 a node of group "other".
    n1_cert = ("--tls-cert", str(ours / "n1.crt"), "--tls-key", str(ours / "n1.key"),
               "--tls-ca", ca, "--tls-server-name", SERVER_NAME)  # fmt: skip
    claims = {
        "impostor": envoy_bootstrap(tmp_path, "impostor", xds, *n1_cert, node_id="n2"),
        "outsider": envoy_bootstrap(tmp_path, "outsider", xds, *n1_cert,
                                    "--node-group", "other", node_id="n1"),
    }  # fmt: skip
    proxies |= {node: start(bed, node, config, live=False) for node, config in claims.items()}
    for reason in ("certificate", "group"):
        wait_until(
            lambda r=reason: (
                bed.xds.metric(f'openslb_xds_refused_streams_total{{reason="{r}"}}') >= 2
            ),  # type: ignore[misc]
            30,
            f"streams refused for the {reason}",
        )
    for node, proxy in proxies.items():
        assert proxy.stats(CONNECTED)[CONNECTED] == 0, node
        assert "listeners" not in dynamic_resources(proxy), node
    assert bed.xds.metric("openslb_xds_streams") == 1  # n1's only
    log = bed.xds.log()
    assert "n1 connected" in log
    assert "refused n2 (group default): node.id 'n2' is not a name of its client certificate" in log
    assert "refused n1 (group other): node 'n1' is not a node of node group 'other'" in log
    assert not any(f"{node} connected" in log for node in [*rogues, "n2"])
    assert log.count("n1 connected") == 1
    assert n1.stats(CONNECTED)[CONNECTED] == 1

    # Taken out of its group, n1 loses its stream and is refused when it comes back.
    store.put(NodeGroup.model_validate({"name": "default", "nodes": [
        {"name": "n9", "address": bed.net.address(19)}]}))  # fmt: skip
    wait_until(lambda: n1.stats(CONNECTED)[CONNECTED] == 0, 30, "n1 cut off")
    assert "n1 left node group default: closing its stream" in bed.xds.log()
    wait_until(
        lambda: (
            "refused n1 (group default): node 'n1' is not a node of node group 'default'"
            in bed.xds.log()
        ),
        30,
        "n1 refused when it tries again",
    )
    assert bed.xds.metric("openslb_xds_streams") == 0


def test_the_bootstrap_carries_the_client_certificate_and_checks_the_server(
    tmp_path: Path,
) -> None:
    files = make_pki(tmp_path / "pki")
    ours, ca = files["dir"], str(files["ca"])
    config = envoy_bootstrap(
        tmp_path, "lb1", "127.0.0.1:18000", "--tls-cert", str(ours / "n1.crt"),
        "--tls-key", str(ours / "n1.key"), "--tls-ca", ca,
    )  # fmt: skip
    ParseDict(config, bootstrap_pb2.Bootstrap())  # every field name and type is Envoy's
    result = validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    context = config["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert "sni" not in context  # an IP address is checked as an IP SAN, sent as no SNI
    common = context["common_tls_context"]
    # Certificate, key and CA come through file-based SDS, which Envoy watches.
    sds = {
        name: (tmp_path / f"lb1.{suffix}").resolve()
        for name, suffix in [("openslb-xds-client", "xds-cert.json"),
                             ("openslb-xds-server-ca", "xds-ca.json")]
    }  # fmt: skip
    assert common["tls_certificate_sds_secret_configs"] == [{
        "name": "openslb-xds-client",
        "sds_config": {"path_config_source": {"path": str(sds["openslb-xds-client"])},
                       "resource_api_version": "V3"},
    }]  # fmt: skip
    assert common["validation_context_sds_secret_config"]["sds_config"][
        "path_config_source"]["path"] == str(sds["openslb-xds-server-ca"])  # fmt: skip
    secrets = {}
    for name, path in sds.items():
        (resource,) = json.loads(path.read_text())["resources"]
        assert resource["@type"] == "type.googleapis.com/" + secret_pb2.Secret.DESCRIPTOR.full_name
        ParseDict({k: v for k, v in resource.items() if k != "@type"}, secret_pb2.Secret())
        assert resource["name"] == name
        secrets[name] = resource
        assert oct(path.stat().st_mode & 0o777) == "0o644"
    pki_dir = str(ours.resolve())
    assert secrets["openslb-xds-client"]["tls_certificate"] == {
        "certificate_chain": {"filename": f"{pki_dir}/n1.crt"},
        "private_key": {"filename": f"{pki_dir}/n1.key"},
        "watched_directory": {"path": pki_dir},  # a move in it reloads the pair
    }
    assert secrets["openslb-xds-server-ca"]["validation_context"] == {
        "trusted_ca": {"filename": f"{pki_dir}/ca.crt"},
        "match_typed_subject_alt_names": [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ],
        "watched_directory": {"path": pki_dir},
    }
    written = json.dumps(config) + "".join(path.read_text() for path in sds.values())
    assert "PRIVATE KEY" not in written  # Envoy reads the key file itself
    tls = XdsTls("/p/c", "/p/k", "/p/a", SERVER_NAME, "/etc/openslb/envoy")
    by_name = bootstrap("g", "n", "xds.openslb.test:18000", tls=tls)
    typed = by_name["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert typed["sni"] == SERVER_NAME
    assert sorted(tls.secret_files()) == [
        "/etc/openslb/envoy.xds-ca.json", "/etc/openslb/envoy.xds-cert.json"
    ]  # fmt: skip
    to_stdout = slb("envoy-bootstrap", "--node-id", "n", "--tls-cert", str(ours / "n1.crt"),
                    "--tls-key", str(ours / "n1.key"), "--tls-ca", ca)  # fmt: skip
    assert to_stdout.exit_code == 2
    assert "--out is needed with mutual TLS" in to_stdout.output


def test_incomplete_or_unusable_tls_settings_are_named(tmp_path: Path) -> None:
    files = make_pki(tmp_path / "pki")
    ours, ca = files["dir"], str(files["ca"])
    env = {
        "OPENSLB_XDS_TLS_CERT": str(ours / "xds.crt"),
        "OPENSLB_XDS_TLS_KEY": str(ours / "xds.key"),
        "OPENSLB_XDS_TLS_CLIENT_CA": ca,
    }
    for change, named in [
        ({"OPENSLB_XDS_TLS_CERT": str(tmp_path / "missing.crt")}, "xds.tls_cert: cannot read"),
        ({"OPENSLB_XDS_TLS_CLIENT_CA": ""}, "xds.tls_client_ca: required with xds.tls_cert"),
        ({"OPENSLB_XDS_TLS_KEY": str(ours / "n1.key")}, "xds.tls_key: "),
    ]:
        result = slb("xds", env={**env, **change})
        assert result.exit_code == 2, result.output
        assert named in result.output
        assert "PRIVATE KEY" not in result.output
    missing_ca = slb("envoy-bootstrap", "--node-id", "n", "--tls-cert", str(ours / "n1.crt"),
                     "--tls-key", str(ours / "n1.key"))  # fmt: skip
    assert missing_ca.exit_code == 2
    assert "--tls-ca (xds.server_ca): required with --tls-cert" in missing_ca.output
    from_settings = slb(
        "envoy-bootstrap", "--node-id", "n", "--xds", "127.0.0.1:1",
        env={"OPENSLB_XDS_CLIENT_CERT": str(ours / "n1.crt"),
             "OPENSLB_XDS_CLIENT_KEY": str(tmp_path / "gone.key"),
             "OPENSLB_XDS_SERVER_CA": ca},
    )  # fmt: skip
    assert from_settings.exit_code == 2
    assert "--tls-key (xds.client_key): cannot read" in from_settings.output


class RefusedError(Exception):
    """The server closed the connection right after the handshake: under TLS 1.3 that is
    how a client learns its certificate was refused."""


def server_serial(xds: str, pki_dir: Path, client: str = "n1", ca: Path | None = None) -> int:
    """Shake hands with the xDS server as `client` (a certificate in `pki_dir`); return the
    serial number of the certificate the server presented."""
    host, _, port = xds.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca or pki_dir / "ca.crt"))
    context.load_cert_chain(pki_dir / f"{client}.crt", pki_dir / f"{client}.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        if not tls.recv(9):  # gRPC's HTTP/2 SETTINGS, or EOF: the client was refused
            raise RefusedError(f"{client}: the server closed the connection after the handshake")
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_certificates_and_the_client_ca_rotate_without_a_restart(
    store: Store, bed: Bed, tmp_path: Path
) -> None:
    files = make_pki(tmp_path / "pki")
    ours, ca = files["dir"], str(files["ca"])
    client_ca = tmp_path / "client-ca.pem"  # the file the server trusts for Envoys
    client_ca.write_bytes(files["ca"].read_bytes())
    revision = store.apply([Put(NodeGroup.model_validate({"name": "default", "nodes": [
        {"name": "n1", "address": bed.net.address(11)}]}))])  # fmt: skip
    bed.xds.env.update({
        "OPENSLB_XDS_TLS_CERT": str(ours / "xds.crt"),
        "OPENSLB_XDS_TLS_KEY": str(ours / "xds.key"),
        "OPENSLB_XDS_TLS_CLIENT_CA": str(client_ca),
    })  # fmt: skip
    bed.xds.start()
    xds = bed.xds.address
    n1 = start(bed, "n1", envoy_bootstrap(
        tmp_path, "n1", xds, "--tls-cert", str(ours / "n1.crt"), "--tls-key",
        str(ours / "n1.key"), "--tls-ca", ca, "--tls-server-name", SERVER_NAME,
    ), live=True)  # fmt: skip
    wait_programmed(store, ["n1"], revision)
    first = server_serial(xds, ours)
    with pytest.raises(RefusedError):  # what the probe sees of a client of another CA
        server_serial(xds, files["other"], client="rogue", ca=files["ca"])

    # A new server certificate: new connections get it, n1's stream carries on.
    reissue = ["pki", "issue", "--dir", str(ours), "--name", "xds", "--kind", "server",
               "--san", SERVER_NAME, "--san", "127.0.0.1", "--force"]  # fmt: skip
    assert slb(*reissue).exit_code == 0
    second = server_serial(xds, ours)
    assert second != first
    assert "TLS files changed: serving the new certificate" in bed.xds.log()

    # A half-written certificate does not load: the last good one goes on serving.
    (ours / "xds.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    assert server_serial(xds, ours) == second
    assert "TLS files changed but do not load (xds.tls_cert:" in bed.xds.log()

    # A new CA for Envoys: a client of the old one is refused, one of the new gets in.
    assert slb(*reissue).exit_code == 0
    new_ca = tmp_path / "pki" / "ca2"
    assert slb("pki", "init", "--dir", str(new_ca)).exit_code == 0
    assert slb("pki", "issue", "--dir", str(new_ca), "--name", "n1", "--kind", "client",
               ).exit_code == 0  # fmt: skip
    client_ca.write_bytes((new_ca / "ca.crt").read_bytes())
    with pytest.raises(RefusedError):
        server_serial(xds, ours)
    assert server_serial(xds, new_ca, ca=files["ca"]) not in (first, second)

    assert n1.stats(CONNECTED)[CONNECTED] == 1
    assert bed.xds.log().count("n1 connected") == 1


def mount_secret(directory: Path, files: dict[str, Path], generation: int) -> None:
    """Publish `files` in `directory` the way Kubernetes updates a Secret volume: each name
    is a symlink into `..data`, itself a symlink swapped by one rename to a new directory."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..{generation}"
    version.mkdir()
    for name, source in files.items():
        (version / name).write_bytes(source.read_bytes())
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data_tmp").symlink_to(version.name)
    (directory / "..data_tmp").rename(directory / "..data")


def client_serial(envoy: EnvoyProxy) -> str:
    """The serial number of the client certificate Envoy holds for the xDS cluster."""
    certs = json.loads(envoy.admin("/certs"))["certificates"]
    (serial,) = {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}
    return str(serial)


def test_envoy_takes_a_renewed_certificate_and_ca_without_a_restart(
    store: Store, bed: Bed, tmp_path: Path
) -> None:
    """A CA rollover on both ends; Envoy's files change under it as on a Secret volume."""
    old, new = make_pki(tmp_path / "old")["dir"], tmp_path / "new"
    for args in (["init", "--dir", str(new)],
                 ["issue", "--dir", str(new), "--name", "xds", "--kind", "server",
                  "--san", SERVER_NAME, "--san", "127.0.0.1"],
                 ["issue", "--dir", str(new), "--name", "n1", "--kind", "client"]):  # fmt: skip
        assert slb("pki", *args).exit_code == 0
    revision = store.apply([Put(NodeGroup.model_validate({"name": "default", "nodes": [
        {"name": "n1", "address": bed.net.address(11)}]}))])  # fmt: skip

    def serve_with(pki_dir: Path) -> None:
        bed.xds.env.update({
            "OPENSLB_XDS_TLS_CERT": str(pki_dir / "xds.crt"),
            "OPENSLB_XDS_TLS_KEY": str(pki_dir / "xds.key"),
            "OPENSLB_XDS_TLS_CLIENT_CA": str(pki_dir / "ca.crt"),
        })  # fmt: skip
        bed.xds.start()

    def envoy_files(pki_dir: Path) -> dict[str, Path]:
        return {"tls.crt": pki_dir / "n1.crt", "tls.key": pki_dir / "n1.key",
                "ca.crt": pki_dir / "ca.crt"}  # fmt: skip

    mounted = tmp_path / "envoy-secret"
    mount_secret(mounted, envoy_files(old), 1)
    serve_with(old)
    n1 = start(bed, "n1", envoy_bootstrap(
        tmp_path, "n1", bed.xds.address, "--tls-cert", str(mounted / "tls.crt"),
        "--tls-key", str(mounted / "tls.key"), "--tls-ca", str(mounted / "ca.crt"),
        "--tls-server-name", SERVER_NAME,
    ), live=True)  # fmt: skip
    wait_programmed(store, ["n1"], revision)
    first, pid = client_serial(n1), n1.process.pid

    mount_secret(mounted, envoy_files(new), 2)
    wait_until(lambda: client_serial(n1) != first, 20, "Envoy holding its renewed certificate")
    renewed = x509.load_pem_x509_certificate((new / "n1.crt").read_bytes()).serial_number
    assert int(client_serial(n1), 16) == renewed
    assert n1.stats(CONNECTED)[CONNECTED] == 1  # the stream it has carries on

    # The server moves to the new CA: only an Envoy that took the new files gets back in.
    bed.xds.stop()
    serve_with(new)
    wait_until(lambda: "n1 connected" in bed.xds.log(), 30, "n1 connected to the new server")
    assert bed.xds.metric("openslb_xds_refused_streams_total") == 0
    assert n1.stats(CONNECTED)[CONNECTED] == 1
    assert n1.process.pid == pid  # the same Envoy, never restarted


def test_plaintext_on_a_public_bind_needs_an_explicit_flag(tmp_path: Path) -> None:
    """Without TLS, `slb xds` hands private keys to any client: not on a public address by
    mistake (#14)."""
    refused = CliRunner().invoke(main, ["xds", "--bind", "198.18.0.5:18000"])
    assert refused.exit_code == 2
    assert "--insecure-plaintext" in refused.output
    assert "198.18.0.5:18000 is not loopback" in refused.output
