"""Orders posted over HTTP become exactly one invoice each, on Postgres + Redis + real processes."""

from __future__ import annotations

import random
import time

from harness.waiting import wait_until
from shared.config import Settings
from tests.e2e.conftest import Pipeline
from tests.support.checks import read_ledger
from tests.support.orders import expected_total, order_body, post_orders


def test_two_hundred_concurrent_orders_get_exactly_one_invoice_each(
    pipeline: Pipeline, pg_settings: Settings
) -> None:
    rng = random.Random(200)
    bodies = [order_body(rng) for _ in range(200)]
    started = time.monotonic()

    created = post_orders(pipeline.base_url, bodies, concurrency=16)

    def settled() -> bool:
        ledger = read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url)
        return len(ledger.invoices) >= 200 and ledger.unpublished == 0

    wait_until(settled, timeout=120, interval=0.5, message="200 invoices")
    ledger = read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url)
    print(f"200 orders -> invoices in {time.monotonic() - started:.1f} s")
    assert len(ledger.orders) == 200
    assert ledger.lost == set()
    assert ledger.doubled == set()
    assert ledger.wrong_totals == set()
    assert ledger.unpublished == 0
    assert {o["id"]: o["amount_total"] for o in created} == {
        o["id"]: expected_total(body) for o, body in zip(created, bodies, strict=True)
    }
