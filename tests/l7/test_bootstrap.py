"""`slb envoy-bootstrap` writes a bootstrap real Envoy accepts; `slb xds` runs."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.json_format import ParseDict

from devbed.envoy import EnvoyProxy, envoy_binary
from devbed.process import free_port
from l7.bootstrap import bootstrap
from slb.cli import main
from slb.storage.store import Store
from tests.l7.test_server import ServerThread

# The messages the bootstrap packs in Any fields, so that ParseDict can find them.
PACKED = (router_pb2, http_connection_manager_pb2, downstream_connections_pb2,
          http_protocol_options_pb2)  # fmt: skip


def validate(config: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "--config-path", str(path),
         "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, delta: bool) -> None:
    config = bootstrap("edge", "lb1", "xds.openslb.test:18000", delta=delta)
    ParseDict(config, bootstrap_pb2.Bootstrap())  # every field name and type is Envoy's
    result = validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert config["node"] == {"id": "lb1", "cluster": "edge"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # No flush timer: a flush walks every statistic on the thread that applies xDS.
    assert config["stats_flush_on_admin"] is True
    assert "stats_flush_interval" not in config
    patterns = config["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"suffix": ".upstream_rq_time"} in patterns  # charted, so kept
    every = bootstrap("edge", "lb1", "xds.openslb.test:18000", delta=delta, all_stats=True)
    assert "stats_config" not in every
    assert validate(every, tmp_path).returncode == 0


def test_the_command_writes_a_file_and_names_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "envoy.json"
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["envoy-bootstrap", "--node-group", "edge", "--node-id", "lb1", "--sotw",
         "--xds", "198.18.0.5:18000", "--stats-port", "0", "--all-stats", "--out", str(out)],
        env={"OPENSLB_CONFIG": ""},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text())
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert "stats_config" not in config  # --all-stats
    assert "listeners" not in config["static_resources"]
    xds = config["static_resources"]["clusters"][0]
    assert xds["type"] == "STATIC"
    bad = runner.invoke(main, ["envoy-bootstrap", "--node-id", "n", "--xds", "nowhere"])
    assert bad.exit_code == 2
    assert "xds: expected HOST:PORT" in bad.output


def test_slb_xds_explains_itself() -> None:
    result = CliRunner().invoke(main, ["xds", "--help"])
    assert result.exit_code == 0
    assert "ADS" in result.output


def test_an_envoy_from_the_bootstrap_serves_prometheus_stats_but_not_its_admin_api(
    store: Store, envoy_factory: Callable[..., EnvoyProxy]
) -> None:
    with ServerThread(store) as server:
        admin, stats = free_port(), free_port()
        config = bootstrap("default", "n1", server.target, admin_port=admin, stats_port=stats)
        envoy_factory(config, admin_port=admin)
        with urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats/prometheus") as resp:
            text = resp.read().decode()
        assert re.search(r"^envoy_server_live\{?\}? 1$", text, re.MULTILINE), text[-500:]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{stats}/config_dump")
        assert refused.value.code == 404
