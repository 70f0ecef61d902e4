"""Concurrent duplicate deliveries race on the UNIQUE constraints of real Postgres.

Every delivery is answered (``invoice.created`` in the invoice outbox); the answers may repeat,
but they all carry the one invoice's number.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from flask_outbox import WorkerDatabase
from flask_outbox.consumer import Consumer
from sqlalchemy import func, select

from invoice_worker.invoicing import Outcome
from invoice_worker.models import Invoice, inbox, outbox
from shared.contracts import OrderPlaced, parse_invoice_created
from tests.support.events import order_placed_event

ROUNDS = 25


def _answered_numbers(database: WorkerDatabase) -> dict[str, set[str]]:
    """order_id -> the invoice numbers its ``invoice.created`` answers carry."""
    numbers: dict[str, set[str]] = {}
    with database.session() as session:
        for payload in session.scalars(select(outbox.c.payload)):
            answer = parse_invoice_created(payload)
            numbers.setdefault(answer.order_id, set()).add(answer.invoice_number)
    return numbers


def _invoice_numbers(database: WorkerDatabase) -> dict[str, set[str]]:
    with database.session() as session:
        return {
            order_id: {number}
            for order_id, number in session.execute(select(Invoice.order_id, Invoice.number))
        }


def test_the_same_message_delivered_concurrently_gives_one_invoice(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    outcomes: list[str] = []
    for _ in range(ROUNDS):
        event, message_id = order_placed_event(), uuid.uuid4()
        start = threading.Barrier(2)

        def deliver(event=event, message_id=message_id, start=start) -> str:  # type: ignore[no-untyped-def]
            start.wait(timeout=10)
            return invoice_consumer.apply(message_id, event.to_payload())

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes.extend(pool.map(lambda _: deliver(), range(2)))

    with pg_invoice_db.session() as session:
        invoices = session.scalar(select(func.count()).select_from(Invoice))
        orders = session.scalar(select(func.count(func.distinct(Invoice.order_id))))
        processed = session.scalar(select(func.count()).select_from(inbox.processed))
    assert invoices == orders == processed == ROUNDS
    assert outcomes.count(Outcome.CREATED) == ROUNDS
    assert _answered_numbers(pg_invoice_db) == _invoice_numbers(pg_invoice_db)


def test_different_messages_for_one_order_racing_give_one_invoice(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    event = order_placed_event()
    start = threading.Barrier(4)

    def deliver(_: int) -> str:
        start.wait(timeout=10)
        return invoice_consumer.apply(uuid.uuid4(), event.to_payload())

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(deliver, range(4)))

    assert outcomes.count(Outcome.CREATED) == 1
    with pg_invoice_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        causes = set(session.scalars(select(outbox.c.headers["causation_id"].as_string())))
    assert len(causes) == 4, "each of the four messages is answered"
    assert _answered_numbers(pg_invoice_db) == _invoice_numbers(pg_invoice_db)
