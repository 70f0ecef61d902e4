"""The invoices database: invoices, the inbox of processed messages, the dead letters and the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask_outbox import define_outbox
from flask_outbox.db import BigIntPK, JSONDocument, UTCDateTime, utcnow
from sqlalchemy import BigInteger, Integer, String, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "DeadLetter", "Invoice", "MessageDelivery", "ProcessedMessage", "outbox"]


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(64), unique=True, comment="exactly one invoice per order")
    number: Mapped[str] = mapped_column(String(32), unique=True)
    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount_total: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProcessedMessage(Base):
    """The inbox: a message id is recorded in the same transaction as its effect.

    Pruned after ``INBOX_RETENTION_SECONDS`` (``invoice_worker.retention``), by the index on ``processed_at``.
    """

    __tablename__ = "processed_messages"

    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    topic: Mapped[str] = mapped_column(String(100))
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class DeadLetter(Base):
    """A message that can never succeed as it is, kept with its reason until replayed."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    task_name: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class MessageDelivery(Base):
    """How often a message has started processing, committed before its work begins.

    A delivery that kills its worker leaves no other trace, so this count is what stops a poison
    message from looping forever through redeliveries. Pruned with the inbox, by ``last_delivered_at``.
    """

    __tablename__ = "message_deliveries"

    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    first_delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


outbox = define_outbox(Base.metadata)
"""``invoice.created`` answers, written in the invoice's transaction; the invoice relay publishes them."""
