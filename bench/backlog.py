"""Filling the orders database with a backlog fast: the outbox rows the receiver writes, loaded with COPY.

Placing 100 000 orders one transaction each takes minutes, and even building them as ORM objects and
compiling the receiver's INSERTs costs a minute; the backlog test is about draining, so the rows are
built with the product's own message code (``order_placed_message``, ``OutboxMessage``, ``bucket_of``)
from plain order records and bulk-loaded in one transaction.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from flask_outbox import OutboxMessage
from flask_outbox.db import utcnow
from flask_outbox.writer import bucket_of
from psycopg.types.json import Jsonb
from sqlalchemy import make_url

from bench.orders import order_body
from order_service.receivers import order_placed_message
from shared.contracts import ORDER_PLACED, SCHEMA_VERSION_HEADER

__all__ = ["fill_backlog", "fill_outbox"]

_ORDER_COLUMNS = ("id", "customer_id", "currency", "status", "amount_total", "created_at")
_LINE_COLUMNS = ("position", "sku", "quantity", "unit_amount", "amount_total")
_OUTBOX_COLUMNS = (
    "message_id", "topic", "aggregate_type", "aggregate_id", "bucket",
    "payload", "headers", "created_at", "available_at", "attempts",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Line:
    position: int
    sku: str
    quantity: int
    unit_amount: int
    amount_total: int


@dataclass(frozen=True, slots=True)
class _Order:
    """The attributes ``order_placed_message`` reads from an ``Order``, without the ORM's cost."""

    id: uuid.UUID
    customer_id: str
    currency: str
    status: str
    amount_total: int
    created_at: datetime
    lines: list[_Line]


def _order(rng: random.Random, tag: str, placed_at: datetime) -> _Order:
    body = order_body(rng, tag)
    lines = [
        _Line(n, line["sku"], line["quantity"], line["unit_amount"], line["quantity"] * line["unit_amount"])
        for n, line in enumerate(body["lines"])
    ]
    return _Order(
        id=uuid.uuid4(),
        customer_id=body["customer_id"],
        currency=body["currency"],
        status="placed",
        amount_total=sum(line.amount_total for line in lines),
        created_at=placed_at,
        lines=lines,
    )


def _outbox_row(order: _Order, now: datetime) -> list[Any]:
    """What ``request_invoice`` inserts for ``order``."""
    event = order_placed_message(order)  # type: ignore[arg-type]
    message = OutboxMessage(
        topic=ORDER_PLACED,
        aggregate_type="order",
        aggregate_id=event.order_id,
        payload=event.to_payload(),
        headers={SCHEMA_VERSION_HEADER: event.schema_version, "order_id": event.order_id},
    )
    return [
        message.message_id, message.topic, message.aggregate_type, message.aggregate_id,
        bucket_of(message.aggregate_id), Jsonb(message.payload), Jsonb(message.headers), now, now, 0,
    ]  # fmt: skip


def _orders(count: int, tag: str, seed: int) -> tuple[list[_Order], datetime]:
    rng = random.Random(seed)
    now = utcnow()
    return [_order(rng, tag, now - timedelta(microseconds=count - n)) for n in range(count)], now


def _conninfo(orders_url: str) -> str:
    return make_url(orders_url).set(drivername="postgresql").render_as_string(hide_password=False)


def fill_backlog(orders_url: str, count: int, tag: str, seed: int = 6) -> None:
    """Commit ``count`` orders with their lines and their ``order.placed`` outbox rows, unpublished."""
    orders, now = _orders(count, tag, seed)
    with psycopg.connect(_conninfo(orders_url)) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY orders ({', '.join(_ORDER_COLUMNS)}) FROM STDIN") as copy:
            for order in orders:
                copy.write_row([getattr(order, c) for c in _ORDER_COLUMNS])
        with cursor.copy(f"COPY order_lines (order_id, {', '.join(_LINE_COLUMNS)}) FROM STDIN") as copy:
            for order in orders:
                for line in order.lines:
                    copy.write_row([order.id, *(getattr(line, c) for c in _LINE_COLUMNS)])
        with cursor.copy(f"COPY outbox ({', '.join(_OUTBOX_COLUMNS)}) FROM STDIN") as copy:
            for order in orders:
                copy.write_row(_outbox_row(order, now))
        conn.commit()


def fill_outbox(orders_url: str, count: int, tag: str, seed: int = 6) -> None:
    """Only the outbox rows of ``count`` orders (one per order, as the receiver writes): a relay's backlog."""
    orders, now = _orders(count, tag, seed)
    with psycopg.connect(_conninfo(orders_url)) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY outbox ({', '.join(_OUTBOX_COLUMNS)}) FROM STDIN") as copy:
            for order in orders:
                copy.write_row(_outbox_row(order, now))
        conn.commit()
