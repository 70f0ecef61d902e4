"""The pipeline page in headless Chromium, over the whole loop on Postgres and Redis.

Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright's Python client with
``executable_path``: no browser download. Real processes: gunicorn (two workers, so the session
cookie must verify in either: the secret key comes from the shared ``var/secret-key``), the order
relay, the invoice worker, the invoice relay and the order consumer (``test_closed_loop.start_loop``).

``UPDATE_DOCS_SCREENSHOT=1`` also writes the screenshot to ``docs/dashboard.png`` (the README's):
opt-in, so an ordinary run leaves the work tree clean.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright
from sqlalchemy import create_engine, text

from harness.processes import ROOT, TEST_API_KEY
from harness.waiting import wait_until
from shared.config import Settings
from tests.e2e.test_closed_loop import Loop, all_invoiced, start_loop
from tests.support.orders import order_body, post_orders

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIRST, MORE, WAVES = 30, 7, 3
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"


@pytest.fixture
def loop(pg_settings: Settings, tmp_path: Path) -> Iterator[Loop]:
    running = start_loop(pg_settings, tmp_path / "logs")
    yield running
    running.stop()
    print(running.logs())  # shown only when the test failed


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    """A page in a fresh profile, and every console error, page error and failed request it sees."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (as .ci/run does)")
    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.on(
            "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
        )
        try:
            yield page, problems
        finally:
            context.close()


def database_view(settings: Settings) -> dict[str, Any]:
    """What the page must show, computed here with SQL of its own (percentile_cont for latency)."""
    engine = create_engine(settings.orders_database_url)
    try:
        with engine.connect() as conn:
            p50, p95 = conn.execute(
                text(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s),"
                    " percentile_cont(0.95) WITHIN GROUP (ORDER BY s)"
                    " FROM (SELECT extract(epoch FROM o.invoiced_at - x.created_at) AS s"
                    " FROM orders o JOIN outbox x ON x.aggregate_id = o.id::text"
                    " WHERE x.acknowledged_at IS NOT NULL) latencies"
                )
            ).one()
            counts = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NULL),"
                    " count(*) FILTER (WHERE parked_at IS NOT NULL),"
                    " count(*) FILTER (WHERE published_at IS NOT NULL AND acknowledged_at IS NULL),"
                    " count(*) FILTER (WHERE acknowledged_at IS NOT NULL) FROM outbox"
                )
            ).one()
            latest = conn.execute(
                text("SELECT id::text, status FROM orders ORDER BY created_at DESC LIMIT 15")
            )
            placed = conn.scalar(text("SELECT count(*) FROM orders"))
            return {
                "placed": placed,
                "invoiced": counts[3],
                "backlog": counts[0],
                "parked": counts[1],
                "unacknowledged": counts[2],
                "p50_ms": float(p50) * 1000,
                "p95_ms": float(p95) * 1000,
                "latest": [tuple(row) for row in latest],
            }
    finally:
        engine.dispose()


def shown(page: Page, field: str) -> str:
    return page.locator(f'[data-field="{field}"]').inner_text()


def shown_ms(page: Page, field: str) -> int:
    value, unit = shown(page, field).split()
    assert unit == "ms"
    return int(value)


def wait_for_shown(page: Page, field: str, value: str, timeout_s: float = 60) -> None:
    """Wait for the page's own polling to show ``value`` (no reload here)."""
    page.wait_for_function(
        '([field, value]) => document.querySelector(`[data-field="${field}"]`).textContent === value',
        arg=[field, value],
        timeout=timeout_s * 1000,
    )


def test_the_pipeline_page_shows_the_databases_numbers_and_follows_new_orders_live(
    loop: Loop, pg_settings: Settings, browser_page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    page, problems = browser_page
    rng = random.Random(12)
    for wave in range(WAVES):  # a few seconds apart, so the chart has a shape
        if wave:
            time.sleep(2.5)
        post_orders(loop.base_url, [order_body(rng) for _ in range(FIRST // WAVES)], concurrency=8)
    wait_until(lambda: all_invoiced(pg_settings, FIRST), timeout=120, interval=0.5, message="first orders")

    page.goto(f"{loop.base_url}/dashboard")
    assert page.url.endswith("/dashboard/login")  # no session yet: the login form, not the page
    page.fill("#key", TEST_API_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{loop.base_url}/dashboard")
    wait_for_shown(page, "invoiced", str(FIRST))  # the consumer's last commit may trail the check
    page.wait_for_selector("#chart canvas")

    expected = database_view(pg_settings)
    assert expected["invoiced"] == FIRST
    assert shown(page, "placed") == str(expected["placed"]) == str(FIRST)
    assert shown(page, "invoiced") == str(FIRST)
    for field in ("backlog", "parked", "unacknowledged"):
        assert shown(page, field) == str(expected[field]) == "0", field
    assert shown(page, "oldest_due_age_s") == "0.0 s"
    assert shown(page, "redriven_unanswered") == "0"
    assert abs(shown_ms(page, "latency_p50_s") - expected["p50_ms"]) <= 1
    assert abs(shown_ms(page, "latency_p95_s") - expected["p95_ms"]) <= 1
    rows = page.locator("#latest tr")
    page_latest = [
        (rows.nth(i).get_attribute("data-order-id"), rows.nth(i).locator(".badge").inner_text())
        for i in range(rows.count())
    ]
    assert page_latest == expected["latest"]

    page.evaluate("window.__sameDocument = true")
    post_orders(loop.base_url, [order_body(rng) for _ in range(MORE)], concurrency=4)
    wait_for_shown(page, "placed", str(FIRST + MORE))
    wait_for_shown(page, "invoiced", str(FIRST + MORE))
    assert page.evaluate("window.__sameDocument === true")  # updated in place, never reloaded
    assert shown(page, "unacknowledged") == "0"

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
    assert problems == []
