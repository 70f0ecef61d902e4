"""Building ``order.placed`` events for consumer tests."""

from __future__ import annotations

import uuid

from flask_outbox.db import utcnow

from shared.contracts import OrderPlaced, OrderPlacedLine


def order_placed_event(
    order_id: str | None = None, quantity: int = 2, unit_amount: int = 1250
) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id or str(uuid.uuid4()),
        customer_id="cus_42",
        currency="EUR",
        lines=[
            OrderPlacedLine(
                sku="BOOK-1", quantity=quantity, unit_amount=unit_amount, amount_total=quantity * unit_amount
            )
        ],
        amount_total=quantity * unit_amount,
        placed_at=utcnow(),
    )
