"""The console in a real browser: Debian's chromium, headless, driven by Playwright.

The app is served by waitress on a loopback port against real Redis. Most tests play an
L4 node and an Envoy reporting through the real interface the tiers use
(`StatusBoard.report`); the listener page's charts are drawn from real gRPC traffic
through a real Envoy programmed by `slb xds` and sampled by `l7.stats` (no chart is fed
made-up points). Screenshots of the main pages are saved under tests/artifacts/screenshots/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from devbed.l7harness import (
    Bed,
    TestNet,
    background_load,
)
from devbed.pki import chain
from devbed.redis import RedisServer
from l7.stats import EnvoyStats, admin_reader
from slb.model import Listener, Service
from slb.operations import Operations
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.l7.test_envoy_stats import echo_listener
from tests.web.conftest import PASSWORD
from tests.web.serve import ServedApp

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: run deploy/testbed/install.sh"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(15_000)
        yield context
        context.close()


@pytest.fixture
def console(app: Flask) -> Iterator[str]:
    with ServedApp(app) as served:
        yield served.url


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(context: BrowserContext, console: str, user: str) -> Page:
    page = context.new_page()
    # Scripts that fail or that the Content-Security-Policy refuses fail the test (a 4xx
    # page is logged as an error too, and some are expected: those are not counted).
    refused: list[str] = []
    page.on(
        "console",
        lambda m: (
            refused.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text
            else None
        ),
    )
    page.on("pageerror", lambda e: refused.append(str(e)))
    setattr(page, "refused", refused)  # noqa: B010 - read back by the tests
    page.goto(f"{console}/listeners")
    expect(page).to_have_url(f"{console}/login?next=/listeners")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{console}/listeners")
    expect(page.locator("#whoami")).to_contain_text(user)
    return page


def seed_services(store: Store) -> None:
    for name, labels, ready in (
        ("cart", {"app": "shop", "tier": "api"}, 3),
        ("ui", {"app": "shop", "tier": "web"}, 2),
        ("ledger", {"app": "billing"}, 1),
    ):
        backends = [{"address": f"198.18.20.{i + 1}", "port": 8080} for i in range(ready)]
        store.put(Service.model_validate(
            {"namespace": "shop", "name": name, "labels": labels, "load_balancer": "public",
             "ports": [{"name": "http", "port": 80}], "backends": {"http": backends}}
        ))  # fmt: skip


def test_wrong_password_is_refused_visibly(browser: BrowserContext, console: str) -> None:
    page = browser.new_page()
    page.goto(f"{console}/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    shot(page, "login")


def test_create_a_listener_and_watch_it_come_alive(
    browser: BrowserContext, console: str, ops: Operations, store: Store
) -> None:
    seed_services(store)
    page = login(browser, console, "alice")
    page.click("#new-listener")
    page.fill("input[name=name]", "shop-web")
    page.select_option("select[name=protocol]", "HTTP")
    page.fill("input[name=port]", "8080")
    page.fill("input[name=target_port]", "http")
    # Typed as an operator types: the preview follows each keystroke.
    page.locator("#selector").press_sequentially("app=shop", delay=20)
    preview = page.locator("#preview")
    expect(preview.locator("[data-service]")).to_have_count(2)
    expect(preview.locator('[data-service="shop/cart"]')).to_contain_text("3/3 ready")
    expect(preview.locator('[data-service="shop/ui"]')).to_contain_text("2/2 ready")
    expect(preview).to_contain_text("5 ready endpoints")
    # Another tenant's look-alike is not picked, and the preview says so.
    expect(preview.locator("[data-outside]")).to_have_count(0)
    store.put(Service.model_validate(
        {"namespace": "intruder", "name": "cart", "labels": {"app": "shop"},
         "load_balancer": "public", "ports": [{"name": "http", "port": 80}],
         "backends": {"http": [{"address": "198.18.66.1", "port": 8080}]}}
    ))  # fmt: skip
    page.locator("#selector").press_sequentially(" ", delay=20)
    expect(preview.locator("[data-outside]")).to_contain_text("1 more matches in namespaces")
    expect(preview.locator("[data-service]")).to_have_count(2)
    page.locator("#selector").press_sequentially(",tier=api", delay=20)
    expect(preview.locator("[data-service]")).to_have_count(1)
    expect(preview.locator('[data-service="shop/cart"]')).to_be_visible()
    page.select_option("select[name=hc_type]", "http")
    page.fill("input[name=hc_path]", "/healthz")
    shot(page, "listener-form")
    page.click("#save")

    expect(page).to_have_url(f"{console}/listeners/shop-web")
    status = page.locator("#listener-status")
    expect(status.locator(".status-line [data-state]")).to_have_attribute("data-state", "pending")
    expect(page.locator("#backends tbody tr")).to_have_count(3)
    stored = store.get(Listener, "shop-web")
    assert stored is not None
    revision = stored.revision

    # The data planes report: an Envoy NACKs first (red, with the reason), then both serve.
    board = StatusBoard(store)
    board.report("l4", "lb1", "default", revision)
    nack = "NACK: listener shop-web: unknown cluster"
    board.report("l7", "envoy-lb1", "default", revision - 1, error=nack, error_revision=revision)
    expect(status.locator(".status-line [data-state]")).to_have_attribute("data-state", "error")
    expect(status).to_contain_text("NACK: listener shop-web: unknown cluster")
    board.report("l7", "envoy-lb1", "default", revision)
    expect(status.locator(".status-line [data-state]")).to_have_attribute("data-state", "served")
    expect(status.locator('[data-node="envoy-lb1"] [data-state]')).to_have_text("served")

    page.goto(f"{console}/listeners")
    expect(page.locator('tr[data-listener="shop-web"] [data-state]')).to_have_text("served")
    shot(page, "listeners")
    page.goto(f"{console}/")
    expect(page.locator("#controller-state [data-state]")).to_have_attribute("data-state", "none")
    board.controller_beat("cmi-7f9c", 1, store.revision())  # a cmi takes the lead
    expect(page.locator("#controller-state [data-state]")).to_have_attribute(
        "data-state", "leading", timeout=10_000
    )  # htmx refreshes the panel every 3 s
    shot(page, "status")
    page.goto(f"{console}/audit")
    expect(page.locator("#audit")).to_contain_text("Listener shop-web")
    shot(page, "audit")
    page.goto(f"{console}/instances")
    shot(page, "instances")
    assert page.refused == []  # type: ignore[attr-defined]


def test_a_viewer_cannot_edit(
    browser: BrowserContext, console: str, ops: Operations, store: Store
) -> None:
    ops.add_listener(
        {"name": "web", "load_balancer": "public", "protocol": "TCP", "port": 80,
         "selector": {"match_labels": {"app": "shop"}}, "target_port": "http"}
    )  # fmt: skip
    page = login(browser, console, "victor")
    expect(page.locator('tr[data-listener="web"]')).to_be_visible()
    expect(page.locator("#new-listener")).to_have_count(0)
    page.click('tr[data-listener="web"] a')
    expect(page.locator("h1")).to_contain_text("Listener web")
    expect(page.locator("#edit")).to_have_count(0)
    response = page.goto(f"{console}/listeners/web/edit")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("alert")).to_contain_text("needs the operator role")
    page.goto(f"{console}/certificates")
    expect(page.locator("#upload")).to_have_count(0)


def test_an_expired_certificate_is_refused_with_a_visible_message(
    browser: BrowserContext, console: str, store: Store
) -> None:
    page = login(browser, console, "alice")
    good = chain("shop.example.test", "www.example.test", days=21)
    page.goto(f"{console}/certificates")
    page.fill("input[name=name]", "shop")
    page.fill("textarea[name=chain_pem]", good.chain_pem)
    page.fill("textarea[name=key_pem]", good.key_pem)
    page.click("#upload button[type=submit]")
    expect(page.locator('[data-certificate="shop"]')).to_contain_text("CN=shop.example.test")
    expect(page.locator('[data-certificate="shop"]')).to_contain_text("www.example.test")
    expect(page.locator(".flash.warning")).to_contain_text("under 30 days")

    expired = chain("old.example.test", days=-3)
    page.fill("input[name=name]", "old")
    page.fill("textarea[name=chain_pem]", expired.chain_pem)
    page.fill("textarea[name=key_pem]", expired.key_pem)
    page.click("#upload button[type=submit]")
    error = page.locator("#upload-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("chain_pem: the certificate expired on")
    expect(page.locator('[data-certificate="old"]')).to_have_count(0)
    assert "PRIVATE KEY" not in page.content()
    shot(page, "certificates")

    # Deleting asks first (a script under the page's Content-Security-Policy).
    delete = page.locator('[data-certificate="shop"] button')
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    expect(page.locator('[data-certificate="shop"]')).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(page.locator(".flash")).to_contain_text("Certificate shop deleted")
    expect(page.locator('[data-certificate="shop"]')).to_have_count(0)
    assert page.refused == []  # type: ignore[attr-defined]


def test_a_grpc_listener_charts_real_traffic_and_envoys_view_of_its_backends(
    browser: BrowserContext, console: str, store: Store, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Three gRPC backends behind a real Envoy; steady calls, then more, sampled every 2 s."""
    net = TestNet().create()
    bed = Bed(tmp_path / "bed", net, redis_server.url, store.prefix)
    try:
        check = {"type": "grpc", "interval_s": 2, "timeout_s": 1,
                 "healthy_threshold": 2, "unhealthy_threshold": 2}  # fmt: skip
        target, _, envoy = echo_listener(
            store, bed, 1, ["b1", "b2", "b3"], node="envoy-lb1", health_check=check
        )
        stats = EnvoyStats(store, "envoy-lb1", admin_reader(f"127.0.0.1:{envoy.admin_port}"))
        stats.once()
        for connections, seconds in ((2, 14), (8, 16)):
            with background_load(target, connections=connections) as result:
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    time.sleep(2)
                    stats.once()
            assert result.failed == 0
            stats.once()

        page = login(browser, console, "alice")
        page.goto(f"{console}/listeners/echo")
        expect(page.locator(".charts")).to_have_attribute("data-loaded", "true")
        assert (
            int(page.locator("#chart-requests_per_second").get_attribute("data-points") or 0) >= 3
        )
        health = page.locator("#backends .envoy-health [data-state]")
        expect(health).to_have_count(3)
        for i in range(3):
            expect(health.nth(i)).to_have_attribute("data-state", "healthy")
        expect(page.locator("#listener-status .status-line [data-state]")).to_have_attribute(
            "data-state", "served"
        )
        shot(page, "listener-detail")
        assert page.refused == []  # type: ignore[attr-defined]
    finally:
        bed.close()
        net.delete()


def test_drag_a_rule_above_another_and_preview_a_new_rules_targets(
    browser: BrowserContext, console: str, ops: Operations, store: Store
) -> None:
    """Rules reordered by HTML5 drag and drop (rules.js posts the move), and the rule
    form's preview naming the Services each target line picks while it is typed."""
    seed_services(store)
    ops.add_listener(
        {"name": "shop-web", "load_balancer": "public", "protocol": "HTTP", "port": 80,
         "selector": {"match_labels": {"app": "shop"}}, "target_port": "http",
         "routes": [{"name": n, "path_prefix": f"/{n}/"} for n in ("a", "b", "c")]}
    )  # fmt: skip
    page = login(browser, console, "alice")
    page.goto(f"{console}/listeners/shop-web")
    rows = page.locator("#routes tbody tr[data-route]")
    expect(rows).to_have_count(3)
    page.locator('tr[data-route="c"] .drag-handle').drag_to(page.locator('tr[data-route="a"]'))
    expect(page.locator(".flash")).to_contain_text("Rule c moved to #1")
    expect(rows.nth(0)).to_have_attribute("data-route", "c")
    assert [r.name for r in store.get(Listener, "shop-web").obj.routes] == ["c", "a", "b"]
    # Without dragging: the arrows are plain forms.
    page.get_by_role("button", name="Move rule b up").click()
    expect(page.locator(".flash")).to_contain_text("Rule b moved to #2")
    assert [r.name for r in store.get(Listener, "shop-web").obj.routes] == ["c", "b", "a"]

    page.click("#add-rule")
    preview = page.locator("#rule-preview")
    expect(preview.locator("[data-service]")).to_have_count(2)  # no line: the listener's
    page.fill("input[name=name]", "api")
    page.fill("input[name=match_value]", "/api/")
    page.locator("#targets").press_sequentially("tier=api weight=3", delay=20)
    expect(preview.locator("[data-line]")).to_have_count(1)
    expect(preview.locator('[data-service="shop/cart"]')).to_contain_text("3/3 ready")
    expect(preview.locator("[data-service]")).to_have_count(1)
    page.locator("#targets").press("Enter")
    page.locator("#targets").press_sequentially("app=billing", delay=20)
    second = preview.locator('[data-line="2"]')
    expect(second.locator('[data-service="shop/ledger"]')).to_be_visible()
    expect(second).to_contain_text("25%")
    expect(page.locator('fieldset[data-for-action="redirect"]')).to_be_hidden()
    shot(page, "rule-form")
    page.click("#save-rule")

    expect(page).to_have_url(f"{console}/listeners/shop-web#rules")
    row = page.locator('tr[data-route="api"]')
    expect(row.locator('[data-service="shop/cart"]')).to_be_visible()
    expect(row.locator(".share").first).to_have_text("75%")
    shot(page, "listener-rules")
    assert page.refused == []  # type: ignore[attr-defined]
