"""Every table of the orders database, in one place.

Orders and their lines; the outbox written in the same transaction; the inbox (``processed_messages``,
``dead_letters``) of the order-side consumer of ``invoice.created`` (``order_service.worker``); the
stored API keys (``auth``) and the Idempotency-Key claims and responses (``idempotency``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TypedDict

from flask_outbox import BigIntPK, UTCDateTime, define_inbox, utcnow
from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from order_service.extensions import db
from order_service.extensions import outbox as outbox_extension

__all__ = [
    "INVOICED",
    "PLACED",
    "ApiKey",
    "IdempotencyKey",
    "LineFields",
    "Order",
    "OrderLine",
    "SignedOutSession",
    "inbox",
    "line_fields",
    "outbox",
]

PLACED = "placed"
INVOICED = "invoiced"


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default=PLACED)  # placed -> invoiced, never back
    amount_total: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    invoice_number: Mapped[str | None] = mapped_column(String(64), default=None, comment="the first one wins")
    invoiced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.position", cascade="all, delete-orphan", lazy="selectin"
    )


class OrderLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    amount_total: Mapped[int] = mapped_column(BigInteger)
    order: Mapped[Order] = relationship(back_populates="lines")


class LineFields(TypedDict):
    """An order line as the API's body and the ``order.placed`` message both carry it."""

    sku: str
    quantity: int
    unit_amount: int
    amount_total: int


def line_fields(order: Order) -> list[LineFields]:
    """The order -> lines mapping, in one place: ``schemas.OrderOut`` and ``receivers`` both use it."""
    return [
        LineFields(
            sku=line.sku, quantity=line.quantity, unit_amount=line.unit_amount, amount_total=line.amount_total
        )
        for line in order.lines
    ]


inbox = define_inbox(db.metadata)
"""Processed messages, delivery counts and dead letters of ``invoice.created`` (``flask_outbox.inbox``)."""


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    """A key managed with ``flask --app order_service api-keys``; only its SHA-256 digest is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SignedOutSession(db.Model):  # type: ignore[name-defined,misc]
    """A pipeline-page session ended by sign-out: every API process refuses its cookie from then on.

    Kept as long as such a cookie could still verify (the session lifetime), then pruned by the next
    sign-out (``dashboard``).
    """

    __tablename__ = "signed_out_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    signed_out_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class IdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    """A client's Idempotency-Key: its claim (lock token) and, once answered, the stored response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("client_id", "key", name="uq_idempotency_keys_client_key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    lock_token: Mapped[uuid.UUID]
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


outbox = outbox_extension.table
"""``order.placed`` expects ``invoice.created``: the consumer acknowledges the row, the relay re-drives it."""

Index(
    "ix_outbox_acknowledged_at",
    outbox.c.acknowledged_at,
    postgresql_where=text("acknowledged_at IS NOT NULL"),
    sqlite_where=text("acknowledged_at IS NOT NULL"),
)  # the pipeline page's window of invoiced orders (order_service.pipeline); INSERTs skip it
