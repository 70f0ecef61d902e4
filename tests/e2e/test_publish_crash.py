"""A relay that dies after publishing and before marking republishes; the worker still invoices once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select

from order_service import create_app
from order_service.extensions import db
from order_service.models import outbox
from order_service.relay import build_relay
from order_service.services import LineRequest, PlaceOrder, place_order
from shared.config import Settings
from shared.outbox.messages import BatchOutcome, PendingMessage, Publisher
from tests.support.checks import read_ledger
from tests.support.processes import settings_env, worker_service
from tests.support.waiting import wait_until

ORDERS = 50


class ProcessDied(BaseException):
    """Stands for SIGKILL: nothing after the publish runs, and no handler catches it."""


class DiesAfterPublishing:
    """Publishes the batch for real, then 'dies' before the relay can mark it."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.published: list[int] = []

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.published = self.inner.publish(messages).published
        raise ProcessDied

    def close(self) -> None:
        self.inner.close()


def _place_orders(app: Flask, count: int) -> None:
    rng = random.Random(7)
    with app.app_context():
        for _ in range(count):
            lines = (LineRequest(f"SKU-{rng.randint(1, 9)}", rng.randint(1, 3), rng.randint(1, 9_999)),)
            place_order(db.session(), PlaceOrder(customer_id="cus_crash", currency="EUR", lines=lines))
        db.session.remove()
        db.engine.dispose()


def test_crash_between_publish_and_mark_redelivers_but_invoices_once(
    pg_settings: Settings, tmp_path: Path
) -> None:
    _place_orders(create_app(pg_settings), ORDERS)
    engine = create_engine(pg_settings.orders_database_url)
    crashing = build_relay(pg_settings, engine)
    dying = DiesAfterPublishing(crashing.publisher)
    crashing.publisher = dying
    with pytest.raises(ProcessDied):
        crashing.relay_batch()
    crashing.disconnect()
    assert len(dying.published) == ORDERS
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) == ORDERS

    restarted = build_relay(pg_settings, engine)
    assert restarted.drain() == ORDERS  # every row goes out again
    restarted.publisher.close()
    restarted.disconnect()
    engine.dispose()

    env = settings_env(pg_settings)
    worker = worker_service(env, tmp_path, pg_settings.queue("invoices")).start()
    try:
        wait_until(
            lambda: worker.logs().count("succeeded in") >= 2 * ORDERS,
            timeout=90,
            interval=0.5,
            message="both deliveries of every message to be processed",
        )
    finally:
        worker.stop()

    ledger = read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url)
    print(f"lost={len(ledger.lost)} doubled={len(ledger.doubled)} deliveries={2 * ORDERS}")
    assert len(ledger.invoices) == ORDERS
    assert ledger.lost == set()
    assert ledger.doubled == set()
    assert ledger.wrong_totals == set()
    received = [line for line in worker.logs().splitlines() if "] received" in line]
    assert len(received) == 2 * ORDERS
    assert worker.logs().count("invoice.created") == ORDERS
