"""Receivers of ``order_placed``: each turns the event into outbox rows on the order's own session."""

from __future__ import annotations

from typing import Any

from order_service.extensions import outbox
from order_service.models import Order, line_fields
from order_service.signals import order_placed
from shared.contracts import ORDER_PLACED, OrderPlaced, OrderPlacedLine, outbox_headers

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


def request_invoice(sender: Any, *, order: Order, **_: Any) -> None:
    """Queue ``order.placed`` for the invoice worker in the order's transaction (``db.session``)."""
    message = order_placed_message(order)
    headers = outbox_headers(message)  # and the request's correlation id and trace context
    outbox.add(
        ORDER_PLACED,
        message.to_payload(),
        aggregate_type="order",
        aggregate_id=message.order_id,
        headers=headers,
    )


def connect_receivers() -> None:
    """Connect the module-level receivers (strongly; connecting twice is a no-op)."""
    order_placed.connect(request_invoice, weak=False)
