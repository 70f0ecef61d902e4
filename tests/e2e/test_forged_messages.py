"""A forged ``invoice.created`` pushed straight into Redis, with no invoice worker running, changes nothing.

The real order consumer (``celery -A order_service.worker worker``) takes tasks from its queue; the forger
holds the broker's address but not ``MESSAGE_SIGNING_KEY``. The relay's own publisher, which does, still
gets its answer applied.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery
from flask_outbox.messages import PendingMessage
from flask_outbox.publisher import publisher_for
from flask_outbox.signing import SIGNATURE_HEADER
from sqlalchemy import Engine, select

from harness.processes import TEST_API_KEY, Service, order_consumer_service, settings_env
from harness.waiting import wait_until
from order_service import create_app
from order_service.extensions import db
from order_service.models import Order, inbox, outbox
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ROUTES, InvoiceCreated
from tests.support.orders import api_headers, order_body


@pytest.fixture
def consumer(pg_settings: Settings, tmp_path: Path) -> Iterator[Service]:
    service = order_consumer_service(settings_env(pg_settings), tmp_path, pg_settings.queue("orders")).start()
    service.wait_for_log("ready", timeout=60)
    yield service
    service.stop()
    print(service.logs()[-3000:])


def _placed(settings: Settings) -> tuple[uuid.UUID, uuid.UUID, InvoiceCreated]:
    """An order through the API's own code path; its id, its ``order.placed`` message and a fitting answer."""
    app = create_app(settings.model_copy(update={"api_keys": TEST_API_KEY}))
    try:
        created = app.test_client().post("/orders", json=order_body(), headers=api_headers()).get_json()
        with app.app_context():
            message_id = db.session.scalar(
                select(outbox.c.message_id).where(outbox.c.aggregate_id == created["id"])
            )
    finally:
        with app.app_context():
            db.engine.dispose()
    answer = InvoiceCreated(
        order_id=created["id"],
        invoice_number="INV-FORGED",
        currency=created["currency"],
        amount_total=created["amount_total"],
        causation_id=str(message_id),
        invoiced_at=datetime.now(UTC),
    )
    return uuid.UUID(created["id"]), message_id, answer


def _state(engine: Engine, order_id: uuid.UUID, message_id: uuid.UUID) -> tuple[str, bool, list[str]]:
    with engine.connect() as conn:
        status = conn.scalar(select(Order.status).where(Order.id == order_id))
        acknowledged = conn.scalar(select(outbox.c.acknowledged_at).where(outbox.c.message_id == message_id))
        reasons = list(conn.scalars(select(inbox.dead_letters.c.reason)))
    return str(status), acknowledged is not None, reasons


def test_a_forged_answer_in_redis_is_parked_and_a_signed_one_still_invoices(
    pg_settings: Settings, orders_engine: Engine, consumer: Service
) -> None:
    order_id, question, answer = _placed(pg_settings)
    forger = Celery("forger", broker=pg_settings.broker_url, set_as_current=False)
    route = ROUTES[INVOICE_CREATED]
    for headers in ({}, {SIGNATURE_HEADER: "0" * 64}):  # unsigned, and a made-up signature
        forger.send_task(
            route.task,
            kwargs={"payload": answer.to_payload()},
            task_id=str(uuid.uuid4()),
            queue=pg_settings.queue(route.queue),
            headers=headers,
        )
    forger.close()

    wait_until(
        lambda: len(_state(orders_engine, order_id, question)[2]) == 2,
        timeout=60,
        interval=0.3,
        message="both forgeries dead-lettered",
    )
    status, acknowledged, reasons = _state(orders_engine, order_id, question)
    assert (status, acknowledged) == ("placed", False), "re-drive still owes this order its invoice"
    assert all(reason.startswith("bad signature") for reason in reasons)

    real = answer.model_copy(update={"invoice_number": "INV-00000001"})
    publisher = publisher_for(pg_settings, ROUTES, "invoice_relay")  # the relay's publisher: it holds the key
    try:
        sent = PendingMessage(1, uuid.uuid4(), INVOICE_CREATED, str(order_id), real.to_payload(), {}, 0)
        assert publisher.publish([sent]).published == [1]
    finally:
        publisher.close()
    wait_until(
        lambda: _state(orders_engine, order_id, question)[:2] == ("invoiced", True),
        timeout=60,
        interval=0.3,
        message="the signed answer invoiced the order",
    )
    with orders_engine.connect() as conn:
        assert conn.scalar(select(Order.invoice_number).where(Order.id == order_id)) == "INV-00000001"
