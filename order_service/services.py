"""The unit of work of placing an order: one commit for the order and all its receivers wrote.

``place_order`` is the only commit of an API request that places an order: the order, its lines, the
outbox row and the stored Idempotency-Key response (both written by ``order_placed`` receivers on the
same session) commit together or not at all. The service's other commits, each deliberate and named
in its module: ``idempotency`` (claim, release, prune: short transactions of their own, outside the
order), ``cli`` (one per command) and ``inbox`` (the consumer: one per message). See the package
docstring for the map.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from flask_outbox import UTCDateTime, is_postgres, utcnow
from sqlalchemy import Connection, Uuid, bindparam, insert, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from order_service.models import PLACED, Order, OrderLine
from order_service.signals import Veto, order_placed

__all__ = ["LineRequest", "OrderRefused", "PlaceOrder", "place_order"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LineRequest:
    sku: str
    quantity: int
    unit_amount: int


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    customer_id: str
    currency: str
    lines: tuple[LineRequest, ...]


class OrderRefused(Exception):
    """A receiver of ``order_placed`` vetoed the order; nothing was written."""

    def __init__(self, receiver: str, reason: str) -> None:
        super().__init__(f"{receiver} refused the order: {reason}")
        self.receiver = receiver
        self.reason = reason


def _veto_reason(result: object) -> str | None:
    """``Veto`` or a bare ``False`` (the seed's convention) refuses; ``None`` means no objection."""
    if isinstance(result, Veto):
        return result.reason
    if result is False:
        return "vetoed"
    return None


_INSERT_ORDER = insert(Order.__table__)
_INSERT_LINES = insert(OrderLine.__table__)
_INSERT_ORDER_WITH_LINES = text(
    """
    WITH placed AS (
        INSERT INTO orders (id, customer_id, currency, status, amount_total, created_at)
        VALUES (:id, :customer_id, :currency, :status, :amount_total, :created_at)
    )
    INSERT INTO order_lines (order_id, position, sku, quantity, unit_amount, amount_total)
    SELECT :id, x.position, x.sku, x.quantity, x.unit_amount, x.amount_total
    FROM jsonb_to_recordset(:lines) AS x(
        position integer, sku text, quantity integer, unit_amount bigint, amount_total bigint
    )
    """
).bindparams(
    bindparam("id", type_=Uuid()),
    bindparam("created_at", type_=UTCDateTime()),
    bindparam("lines", type_=JSONB()),
)
"""Postgres: the order and its lines in one statement, one round trip (the lines' foreign key is
checked at the end of the statement, when the order's row exists)."""


def _insert_order(conn: Connection, order: dict[str, object], lines: list[dict[str, object]]) -> None:
    if is_postgres(conn.dialect):
        conn.execute(_INSERT_ORDER_WITH_LINES, {**order, "lines": lines})
        return
    conn.execute(_INSERT_ORDER, order)
    if lines:
        conn.execute(_INSERT_LINES, [{"order_id": order["id"], **line} for line in lines])


def place_order(session: Session, command: PlaceOrder) -> Order:
    """Write the order and whatever its receivers add, in one transaction, or nothing at all.

    The order and its lines go in as one prebuilt statement on the session's connection (two on
    SQLite), not through the ORM's unit of work, which cost more CPU than the rest of the
    request; receivers and the response get the ``Order`` as written (not tracked by the session).
    """
    order_id, created_at = uuid.uuid4(), utcnow()
    lines = [
        OrderLine(
            position=position,
            sku=line.sku,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            amount_total=line.quantity * line.unit_amount,
        )
        for position, line in enumerate(command.lines)
    ]
    rows: list[dict[str, object]] = [
        {
            "position": line.position,
            "sku": line.sku,
            "quantity": line.quantity,
            "unit_amount": line.unit_amount,
            "amount_total": line.amount_total,
        }
        for line in lines
    ]
    amount_total = sum(line.amount_total for line in lines)
    order = Order(
        id=order_id,
        customer_id=command.customer_id,
        currency=command.currency,
        status=PLACED,
        amount_total=amount_total,
        created_at=created_at,
        invoice_number=None,
        invoiced_at=None,
    )
    set_committed_value(order, "lines", lines)  # as loaded: no collection events, no backrefs to fire
    try:
        written = {
            "id": order_id,
            "customer_id": command.customer_id,
            "currency": command.currency,
            "status": PLACED,
            "amount_total": amount_total,
            "created_at": created_at,
        }
        _insert_order(session.connection(), written, rows)
        for receiver, result in order_placed.send(place_order, order=order, session=session):
            reason = _veto_reason(result)
            if reason is not None:
                raise OrderRefused(getattr(receiver, "__qualname__", repr(receiver)), reason)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    log.info("order.placed", order_id=str(order.id), amount_total=order.amount_total, lines=len(rows))
    return order
