"""One invoice per order and its answer in the same transaction, whatever is redelivered.

The invoice worker's handler (``invoice_worker.invoicing.HANDLER``) through the library's consumer
(``Consumer.apply``: the inbox row, the handler's writes, one commit), on SQLite; the concurrent cases
run on Postgres (tests/integration/test_invoice_idempotency.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask_outbox import InboxWorker, WorkerDatabase
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from invoice_worker.invoicing import Outcome
from invoice_worker.models import Invoice, inbox, outbox
from invoice_worker.receivers import connect_receivers
from invoice_worker.signals import invoice_created
from shared.contracts import (
    INVOICE_CREATED,
    ORDER_PLACED,
    ROUTES,
    InvoiceCreated,
    OrderPlaced,
    parse_invoice_created,
)
from tests.support.events import order_placed_event


@pytest.fixture
def invoice_db(invoice_worker: InboxWorker) -> WorkerDatabase:
    return invoice_worker.database


@pytest.fixture
def create_invoice(invoice_worker: InboxWorker) -> Any:
    """One ``order.placed`` applied as the consumer applies it: the outcome, or what the handler raised."""
    consumer = invoice_worker.consumer(ROUTES[ORDER_PLACED].task)

    def apply(message_id: uuid.UUID, event: OrderPlaced) -> Outcome:
        return Outcome(consumer.apply(message_id, event.to_payload()))

    return apply


def _processed(database: WorkerDatabase) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(inbox.processed)) or 0


def _invoices(database: WorkerDatabase) -> list[Invoice]:
    with database.session() as session:
        return list(session.scalars(select(Invoice)))


def test_an_order_placed_message_creates_a_numbered_invoice(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    event = order_placed_event(quantity=3, unit_amount=999)

    outcome = create_invoice(uuid.uuid4(), event)

    assert outcome is Outcome.CREATED
    [invoice] = _invoices(invoice_db)
    assert invoice.order_id == event.order_id
    assert invoice.number == "INV-00000001"
    assert (invoice.currency, invoice.amount_total) == ("EUR", 2997)
    assert invoice.lines == [{"sku": "BOOK-1", "quantity": 3, "unit_amount": 999, "amount_total": 2997}]
    assert invoice.created_at.tzinfo is not None


def test_the_same_message_delivered_twice_gives_one_invoice(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    event, message_id = order_placed_event(), uuid.uuid4()

    first = create_invoice(message_id, event)
    second = create_invoice(message_id, event)

    assert first is Outcome.CREATED
    assert second is not Outcome.CREATED
    assert len(_invoices(invoice_db)) == 1
    assert _processed(invoice_db) == 1


def test_another_message_for_an_invoiced_order_creates_nothing(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    event = order_placed_event()

    create_invoice(uuid.uuid4(), event)
    outcome = create_invoice(uuid.uuid4(), event)

    assert outcome is Outcome.ALREADY_INVOICED
    assert len(_invoices(invoice_db)) == 1


def test_invoice_numbers_are_unique_and_sequential(invoice_db: WorkerDatabase, create_invoice: Any) -> None:
    for _ in range(3):
        create_invoice(uuid.uuid4(), order_placed_event())

    assert sorted(i.number for i in _invoices(invoice_db)) == ["INV-00000001", "INV-00000002", "INV-00000003"]


def _answers(database: WorkerDatabase) -> list[Any]:
    with database.session() as session:
        return list(session.execute(select(outbox).order_by(outbox.c.id)))


def test_an_invoice_and_its_invoice_created_message_commit_together(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    event, message_id = order_placed_event(quantity=3, unit_amount=999), uuid.uuid4()

    create_invoice(message_id, event)

    [invoice] = _invoices(invoice_db)
    [row] = _answers(invoice_db)
    assert (row.topic, row.aggregate_type, row.aggregate_id) == (INVOICE_CREATED, "order", event.order_id)
    answer = parse_invoice_created(row.payload)
    assert answer == InvoiceCreated(
        order_id=event.order_id,
        invoice_number=invoice.number,
        currency="EUR",
        amount_total=2997,
        causation_id=str(message_id),
        invoiced_at=invoice.created_at,
    )
    assert row.headers == {"schema_version": 1, "order_id": event.order_id, "causation_id": str(message_id)}
    assert row.message_id != message_id, "the answer is a message of its own"
    assert row.published_at is None


def test_a_rolled_back_invoice_leaves_no_invoice_created_message(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    seen_in_transaction: list[int] = []

    def failing_receiver(sender: Any, *, session: Session, **_: Any) -> None:
        seen_in_transaction.append(session.scalar(select(func.count()).select_from(outbox)) or 0)
        raise RuntimeError("a receiver failed before commit")

    with invoice_created.connected_to(failing_receiver), pytest.raises(RuntimeError):
        create_invoice(uuid.uuid4(), order_placed_event())

    assert seen_in_transaction == [1], "the answer was written inside the invoice's transaction"
    assert _invoices(invoice_db) == []
    assert _answers(invoice_db) == []
    assert _processed(invoice_db) == 0


def test_a_redriven_order_placed_is_answered_again_with_the_same_invoice(
    invoice_db: WorkerDatabase, create_invoice: Any
) -> None:
    """The order side re-drives with the same message_id when the first answer was lost."""
    event, message_id = order_placed_event(), uuid.uuid4()
    create_invoice(message_id, event)

    outcome = create_invoice(message_id, event)

    assert outcome is Outcome.DUPLICATE_MESSAGE
    [invoice] = _invoices(invoice_db)
    first, again = _answers(invoice_db)
    assert again.message_id != first.message_id
    assert again.payload == first.payload
    assert parse_invoice_created(again.payload).invoice_number == invoice.number
    assert again.headers["causation_id"] == str(message_id)


def test_another_order_placed_for_an_invoiced_order_is_answered_with_the_first_invoice(
    invoice_db: WorkerDatabase,
    create_invoice: Any,
) -> None:
    event, first_id, second_id = order_placed_event(), uuid.uuid4(), uuid.uuid4()
    create_invoice(first_id, event)

    outcome = create_invoice(second_id, event)

    assert outcome is Outcome.ALREADY_INVOICED
    [invoice] = _invoices(invoice_db)
    answers = [parse_invoice_created(row.payload) for row in _answers(invoice_db)]
    assert [(a.invoice_number, a.causation_id) for a in answers] == [
        (invoice.number, str(first_id)),
        (invoice.number, str(second_id)),
    ]


def test_connecting_the_receivers_again_still_writes_one_answer_per_invoice(
    invoice_db: WorkerDatabase,
    create_invoice: Any,
) -> None:
    connect_receivers()
    connect_receivers()

    create_invoice(uuid.uuid4(), order_placed_event())

    assert len(_answers(invoice_db)) == 1
