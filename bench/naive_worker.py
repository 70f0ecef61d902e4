"""The naive baseline's Celery worker: one ``INSERT … ON CONFLICT DO NOTHING`` per task. Bench-only.

``celery -A bench.naive_worker worker -Q <QUEUE_PREFIX>invoices`` with ``NAIVE_INVOICES_DATABASE_URL``
and ``BROKER_URL``. Celery's defaults otherwise (early acknowledgement: a worker killed mid-task
loses the invoice), as the first version of such an app has them. On RabbitMQ (``amqp://``) that is
a durable *classic* queue on a direct exchange and no publisher confirms: ``.delay()`` returns once
the message is written to the socket, not once the broker has it. Kept so on purpose: the baseline
is the minimal app, not a safer one; the product's relay waits for the broker's confirms.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy import Engine, create_engine, text

__all__ = ["INVOICES_DDL", "app", "create_invoice", "create_tables"]

app = Celery("naive", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=f"{os.environ.get('QUEUE_PREFIX', '')}invoices",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

INVOICES_DDL = """
CREATE TABLE IF NOT EXISTS invoices (
    id bigserial PRIMARY KEY,
    order_id varchar(64) NOT NULL UNIQUE,
    customer_id varchar(64) NOT NULL,
    currency varchar(3) NOT NULL,
    amount_total bigint NOT NULL,
    lines jsonb NOT NULL,
    placed_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT statement_timestamp()
)
"""

_INSERT = text(
    "INSERT INTO invoices (order_id, customer_id, currency, amount_total, lines, placed_at)"
    " VALUES (:order_id, :customer_id, :currency, :amount_total, CAST(:lines AS jsonb), :placed_at)"
    " ON CONFLICT (order_id) DO NOTHING"
)
_engine: Engine | None = None


def _db() -> Engine:
    global _engine  # noqa: PLW0603 - one lazily built engine per process, as such apps do
    if _engine is None:
        _engine = create_engine(os.environ["NAIVE_INVOICES_DATABASE_URL"], pool_size=2)
    return _engine


@worker_process_init.connect
def _fresh_engine(**_: Any) -> None:
    global _engine  # noqa: PLW0603
    _engine = None


@app.task(name="naive.create_invoice")
def create_invoice(order: dict[str, Any]) -> None:
    with _db().begin() as conn:
        conn.execute(_INSERT, {**order, "lines": json.dumps(order["lines"])})


def create_tables(invoices_url: str) -> None:
    engine = create_engine(invoices_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(INVOICES_DDL))
    finally:
        engine.dispose()
