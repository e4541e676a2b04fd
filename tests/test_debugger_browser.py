"""The debugger page in a real browser: Debian's chromium driven by Playwright, in front of a real
`signalsmith serve` on the embedded defaults (every installed plugin: write keys, a tracking plan
that blocks, the chDB warehouse, the debugger), while analytics-python sends events.

The user's path: open the page, give the admin token once, watch events arrive with their
validation and delivery status, filter to a user and to violations, pause and resume, open an
event and read its timeline and properties. Every wait is on the page's DOM, never a sleep.
No browser is downloaded: `.ci/run` installs Debian's chromium when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import segment.analytics
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from signalsmith.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_EXPORT = ROOT / "plugins" / "contracts" / "tests" / "data" / "segment_shop.json"
SIGNALSMITH = (sys.executable, "-m", "signalsmith")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Long enough for a shared CI machine; every wait ends as soon as the page shows the condition.
WAIT_MS = 30_000

WORKSPACE = """\
version: 1
contracts:
  shop: {$include: plans/shop.json}
sources:
  dev:
    contract:
      plan: shop
      track: {violations: block, unplanned_events: block, unplanned_properties: omit}
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile of its own."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            yield context
        finally:
            context.close()


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SIGNALSMITH_")}


def rows(page: Page) -> Any:
    return page.locator("#events tbody tr")


def row(page: Page, message_id: str) -> Any:
    return page.locator(f'#events tbody tr[data-message-id="{message_id}"]')


def test_watch_filter_and_open_events_in_the_browser(
    embedded_workdir: Path, embedded_server: Callable[..., Any], browser: BrowserContext
) -> None:
    workdir = embedded_workdir
    imported = subprocess.run(
        [*SIGNALSMITH, "contracts", "import", str(SEGMENT_EXPORT), "-o", "plans/shop.json"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    (workdir / "signalsmith.yaml").write_text(WORKSPACE)
    port = free_port()
    server = embedded_server(workdir, port)
    admin_token = server.field("Admin token")
    write_key = server.field("Development write key")

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/debugger")

    # The page asks for the token once, then goes live.
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", admin_token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(page.locator("#who")).to_contain_text("every source")

    # sync_mode: each call is sent before it returns (and returns the message, with its id).
    client = segment.analytics.Client(write_key, host=server.url, sync_mode=True, max_retries=1)
    _, paid = client.track("ada", "Order Completed", {"order_id": "o-1", "currency": "EUR"})
    _, blocked = client.track("ada", "Order Completed", {"currency": "GBP"})  # two violations
    _, viewed = client.track("bob", "Product Viewed", {"product_id": 42})
    _, known = client.identify("bob", {"plan": "pro"})

    # They appear as they arrive; the warehouse write shows as it happens.
    expect(rows(page)).to_have_count(4, timeout=WAIT_MS)
    for message in (paid, viewed, known):
        expect(row(page, message["messageId"])).to_have_attribute(
            "data-status", "delivered", timeout=WAIT_MS
        )
    delivered = row(page, paid["messageId"]).locator('.badge[data-sink="clickhouse"]')
    expect(delivered).to_have_attribute("data-sink-status", "delivered")
    expect(row(page, blocked["messageId"])).to_have_attribute("data-status", "dropped")
    expect(row(page, blocked["messageId"])).to_contain_text("Order Completed")

    # The chart counts the source's events.
    expect(page.locator('#chart-sources figure[data-source="dev"]')).to_have_count(1)
    expect(page.locator('#chart-sources figure[data-source="dev"] .numbers')).to_contain_text(
        "events/s"
    )

    # Filter to one user: only bob's events.
    page.fill("#filter-user", "bob")
    page.click("#apply")
    expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    expect(row(page, viewed["messageId"])).to_be_visible()
    expect(row(page, known["messageId"])).to_be_visible()

    # To violations: the blocked event alone.
    page.click("#clear")
    page.select_option("#filter-status", "violated")
    expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    expect(row(page, blocked["messageId"])).to_be_visible()

    # Open it: why it was blocked, step by step, and what it held.
    row(page, blocked["messageId"]).click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-summary")).to_contain_text(
        "dropped at validate: blocked_by_contract", timeout=WAIT_MS
    )
    timeline = page.locator("#detail-timeline li")
    expect(timeline.first).to_have_attribute("data-stage", "normalise")
    expect(page.locator('#detail-timeline li[data-status="violation"]')).to_contain_text("validate")
    expect(page.locator('#detail-timeline li[data-status="dropped"]')).to_contain_text(
        "blocked_by_contract"
    )
    expect(page.locator("#detail-payloads .tree").first).to_contain_text('"GBP"')

    # Pause: new events are held, not shown; resume shows them.
    page.click("#clear")
    expect(rows(page)).to_have_count(4, timeout=WAIT_MS)
    page.click("#pause")
    _, later = client.track("carol", "Product Viewed", {"product_id": 7})
    expect(page.locator("#paused-notice")).to_contain_text("held", timeout=WAIT_MS)
    expect(row(page, later["messageId"])).to_have_count(0)
    page.click("#pause")
    expect(row(page, later["messageId"])).to_have_count(1, timeout=WAIT_MS)

    # The delivered event's whole path, down to the warehouse write.
    row(page, paid["messageId"]).click()
    expect(page.locator("#detail-summary")).to_contain_text(
        "written to warehouse 'clickhouse'", timeout=WAIT_MS
    )
    expect(page.locator('#detail-sinks li[data-sink="clickhouse"]')).to_have_attribute(
        "data-status", "delivered"
    )
    expect(page.locator('#detail-timeline li[data-stage="deliver"]')).to_contain_text(
        "warehouse clickhouse"
    )
    expect(page.locator("#detail-payloads")).to_contain_text('"o-1"')

    # No write key anywhere on the page, and nothing went wrong in it.
    assert write_key not in page.content()
    assert errors == []
