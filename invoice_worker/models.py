"""The invoices database: invoices, the inbox (processed messages, deliveries, dead letters), the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flask_outbox import BigIntPK, JSONDocument, UTCDateTime, define_inbox, define_outbox, utcnow
from sqlalchemy import BigInteger, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Invoice", "inbox", "outbox"]


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


inbox = define_inbox(Base.metadata)
"""Processed messages, delivery counts and dead letters of ``order.placed`` (``flask_outbox.inbox``)."""

outbox = define_outbox(Base.metadata)
"""``invoice.created`` answers, written in the invoice's transaction; the invoice relay publishes them."""
