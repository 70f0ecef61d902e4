"""One invoice per order, whatever is redelivered (SQLite; the concurrent case runs on Postgres)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from invoice_worker.database import InvoiceDatabase
from invoice_worker.invoicing import Outcome, create_invoice
from invoice_worker.models import Invoice, ProcessedMessage
from tests.support.events import order_placed_event


def _invoices(database: InvoiceDatabase) -> list[Invoice]:
    with database.session() as session:
        return list(session.scalars(select(Invoice)))


def test_an_order_placed_message_creates_a_numbered_invoice(invoice_db: InvoiceDatabase) -> None:
    event = order_placed_event(quantity=3, unit_amount=999)

    with invoice_db.session() as session:
        outcome = create_invoice(session, uuid.uuid4(), event)

    assert outcome is Outcome.CREATED
    [invoice] = _invoices(invoice_db)
    assert invoice.order_id == event.order_id
    assert invoice.number == "INV-00000001"
    assert (invoice.currency, invoice.amount_total) == ("EUR", 2997)
    assert invoice.lines == [{"sku": "BOOK-1", "quantity": 3, "unit_amount": 999, "amount_total": 2997}]
    assert invoice.created_at.tzinfo is not None


def test_the_same_message_delivered_twice_gives_one_invoice(invoice_db: InvoiceDatabase) -> None:
    event, message_id = order_placed_event(), uuid.uuid4()

    with invoice_db.session() as session:
        first = create_invoice(session, message_id, event)
    with invoice_db.session() as session:
        second = create_invoice(session, message_id, event)

    assert first is Outcome.CREATED
    assert second is not Outcome.CREATED
    assert len(_invoices(invoice_db)) == 1
    with invoice_db.session() as session:
        assert session.scalar(select(func.count()).select_from(ProcessedMessage)) == 1


def test_another_message_for_an_invoiced_order_creates_nothing(invoice_db: InvoiceDatabase) -> None:
    event = order_placed_event()

    with invoice_db.session() as session:
        create_invoice(session, uuid.uuid4(), event)
    with invoice_db.session() as session:
        outcome = create_invoice(session, uuid.uuid4(), event)

    assert outcome is Outcome.ALREADY_INVOICED
    assert len(_invoices(invoice_db)) == 1


def test_invoice_numbers_are_unique_and_sequential(invoice_db: InvoiceDatabase) -> None:
    for _ in range(3):
        with invoice_db.session() as session:
            create_invoice(session, uuid.uuid4(), order_placed_event())

    assert sorted(i.number for i in _invoices(invoice_db)) == ["INV-00000001", "INV-00000002", "INV-00000003"]
