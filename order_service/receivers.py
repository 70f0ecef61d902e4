"""Receivers of ``order_placed``: each turns the event into outbox rows on the order's own session."""

from __future__ import annotations

from typing import Any

from flask_outbox import OutboxMessage, add_message
from flask_outbox.logs import correlation_id
from flask_outbox.tracing import outbox_headers
from sqlalchemy.orm import Session

from order_service.models import Order, line_fields, outbox
from order_service.signals import order_placed
from shared.contracts import ORDER_PLACED, SCHEMA_VERSION_HEADER, OrderPlaced, OrderPlacedLine

__all__ = ["connect_receivers", "order_placed_message", "request_invoice"]


def order_placed_message(order: Order) -> OrderPlaced:
    return OrderPlaced(
        order_id=str(order.id),
        customer_id=order.customer_id,
        currency=order.currency,
        lines=[OrderPlacedLine(**line) for line in line_fields(order)],
        amount_total=order.amount_total,
        placed_at=order.created_at,
    )


def request_invoice(sender: Any, *, order: Order, session: Session, **_: Any) -> None:
    """Queue ``order.placed`` for the invoice worker, committed together with the order."""
    message = order_placed_message(order)
    add_message(
        session,
        outbox,
        OutboxMessage(
            topic=ORDER_PLACED,
            aggregate_type="order",
            aggregate_id=message.order_id,
            payload=message.to_payload(),
            headers={
                SCHEMA_VERSION_HEADER: message.schema_version,
                "order_id": message.order_id,
                **outbox_headers(correlation_id()),  # the request's id and trace context
            },
        ),
    )


def connect_receivers() -> None:
    """Connect the module-level receivers (strongly; connecting twice is a no-op)."""
    order_placed.connect(request_invoice, weak=False)
