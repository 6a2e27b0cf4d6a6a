"""`slb xds` decrypts the private keys it hands to Envoys with `secrets.key_file`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devbed.adsclient import AdsClient
from devbed.l7harness import listener, load_balancer, service
from devbed.pki import self_signed
from l7.server import XdsServer
from l7.translate.common import CLUSTER
from slb.model import Certificate
from slb.snapshot import Put
from slb.storage.secrets import Keyring, SecretStore, add_key
from slb.storage.store import Store
from tests.l7.test_server import ServerThread, names


def tls_world(store: Store, keyring: Keyring) -> int:
    """An HTTPS listener whose certificate's key is stored encrypted with `keyring`."""
    pair = self_signed("sealed.shop.test")
    SecretStore(store, keyring).put_key("sealed-1", pair.key_pem)
    return store.apply([
        Put(load_balancer("a", "198.18.0.1", group="blue")),
        Put(service("svc-a", [("198.18.1.1", 80)], lb="a")),
        Put(Certificate(name="sealed", chain_pem=pair.chain_pem, key_ref="sealed-1")),
        Put(listener("tls", "HTTPS", 443, lb="a", app="svc-a", certificates=["sealed"])),
    ])  # fmt: skip


def serving(store: Store, keyring: Keyring | None) -> ServerThread:
    thread = ServerThread(store)
    thread.server = XdsServer(store, bind="127.0.0.1:0", block_ms=100, keyring=keyring)
    return thread


def test_the_xds_server_serves_a_key_it_decrypts(store: Store, tmp_path: Path) -> None:
    keyring = add_key(tmp_path / "secrets.keys", "a")
    revision = tls_world(store, keyring)
    with serving(store, keyring) as server:
        server.wait_revision(revision)
        client = AdsClient(server.target, "n1", "blue")
        try:
            client.subscribe(CLUSTER)
            assert names(client.receive()) == ["tls"]
        finally:
            client.close()


def test_without_the_key_it_holds_the_revision_back(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key it cannot decrypt (no key file, or not the key) is logged naming the ref, and
    Envoys keep what they were given (here: nothing yet)."""
    revision = tls_world(store, add_key(tmp_path / "secrets.keys", "a"))
    with serving(store, None) as server:
        time.sleep(1)
        assert server.server.hub.revision < revision
    assert "key_ref 'sealed-1': encrypted with key 'a', but secrets.key_file is not set" in (
        caplog.text
    )
    assert "PRIVATE KEY" not in caplog.text
