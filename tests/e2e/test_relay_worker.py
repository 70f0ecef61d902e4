"""Messages from the pipelined Redis publisher are consumed by a stock ``celery worker``."""

from __future__ import annotations

from pathlib import Path

from flask_outbox.db import create_db_engine
from flask_outbox.redis_publisher import RedisPipelinePublisher
from sqlalchemy import Engine

from harness.outbox import insert_rows, outbox_rows
from harness.processes import settings_env, worker_service
from harness.waiting import wait_until
from order_service.relay import build_relay
from shared.config import Settings
from tests.support.checks import read_ledger

ORDERS = 300


def _relay_everything(settings: Settings, engine: Engine) -> int:
    relay = build_relay(settings, engine)
    assert isinstance(relay.publisher, RedisPipelinePublisher)
    try:
        return relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()


def test_pipelined_messages_become_invoices_in_a_real_celery_worker(
    pg_settings: Settings, tmp_path: Path
) -> None:
    engine = create_db_engine(pg_settings.orders_database_url)
    rows = outbox_rows(ORDERS, ORDERS)
    insert_rows(engine, rows)
    assert _relay_everything(pg_settings, engine) == ORDERS
    engine.dispose()

    env = settings_env(pg_settings)
    worker = worker_service(env, tmp_path, pg_settings.queue("invoices")).start()
    try:
        wait_until(
            lambda: (
                len(read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url).invoices)
                == ORDERS
            ),
            timeout=120,
            interval=0.5,
            message="one invoice per published message",
        )
    finally:
        worker.stop()
        print(worker.logs()[-3000:])

    ledger = read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url)
    expected = {row["aggregate_id"]: row["payload"]["amount_total"] for row in rows}
    assert {order: totals for order, totals in ledger.invoices.items()} == {
        order: [total] for order, total in expected.items()
    }
    assert ledger.unpublished == 0
