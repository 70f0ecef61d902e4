"""Receivers of the invoice signals: each turns the event into outbox rows on the invoice's own session."""

from __future__ import annotations

import uuid
from typing import Any

from flask_outbox import OutboxMessage, add_message
from sqlalchemy.orm import Session

from invoice_worker.models import Invoice, outbox
from invoice_worker.signals import invoice_created, invoice_requested_again
from shared.contracts import INVOICE_CREATED, InvoiceCreated, outbox_headers

__all__ = ["answer_order", "connect_receivers", "invoice_created_message"]


def invoice_created_message(invoice: Invoice, causation_id: uuid.UUID) -> InvoiceCreated:
    return InvoiceCreated(
        order_id=invoice.order_id,
        invoice_number=invoice.number,
        currency=invoice.currency,
        amount_total=invoice.amount_total,
        causation_id=str(causation_id),
        invoiced_at=invoice.created_at,
    )


def answer_order(
    sender: Any, *, invoice: Invoice, causation_id: uuid.UUID, session: Session, **_: Any
) -> None:
    """Queue ``invoice.created`` for the order service, committed together with the invoice.

    Each answer is a new message (its own ``message_id``); the order side acknowledges the
    ``order.placed`` it re-drives by ``causation_id`` and moves the order forward at most once.
    """
    message = invoice_created_message(invoice, causation_id)
    row = OutboxMessage(
        INVOICE_CREATED, "order", message.order_id, message.to_payload(), outbox_headers(message)
    )
    add_message(session, outbox, row)  # with the delivery's correlation id and trace context


def connect_receivers() -> None:
    """Connect the module-level receivers (strongly; connecting twice is a no-op)."""
    invoice_created.connect(answer_order, weak=False)
    invoice_requested_again.connect(answer_order, weak=False)
