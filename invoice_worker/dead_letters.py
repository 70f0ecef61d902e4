"""Operating on parked messages: list them, and replay them through the same idempotent logic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import structlog
from flask_outbox.db import utcnow
from sqlalchemy import select, union, update

from invoice_worker.database import InvoiceDatabase
from invoice_worker.models import DeadLetter, ProcessedMessage
from invoice_worker.processing import invoice_payload

__all__ = ["Replay", "confirmed_message_ids", "pending_ids", "replay"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Replay:
    letter_id: int
    message_id: uuid.UUID
    outcome: str
    succeeded: bool


def pending_ids(database: InvoiceDatabase) -> list[int]:
    with database.session() as session:
        query = select(DeadLetter.id).where(DeadLetter.replayed_at.is_(None)).order_by(DeadLetter.id)
        return list(session.scalars(query))


def replay(database: InvoiceDatabase, letter_id: int) -> Replay:
    """Run the parked message again; the inbox makes a second replay (or a late redelivery) a no-op.

    A replay that fails again stays pending, with the new reason and one more attempt.
    """
    with database.session() as session:
        letter = session.get(DeadLetter, letter_id)
        if letter is None:
            raise LookupError(f"no dead letter {letter_id}")
        message_id, payload = letter.message_id, letter.payload
    order_id = payload.get("order_id") if isinstance(payload, dict) else None
    structlog.contextvars.bind_contextvars(message_id=str(message_id), order_id=order_id)
    try:
        outcome = invoice_payload(database, message_id, payload)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        with database.session() as session:
            session.execute(
                update(DeadLetter)
                .where(DeadLetter.id == letter_id)
                .values(reason=reason[:4000], attempts=DeadLetter.attempts + 1)
            )
            session.commit()
        log.warning("dead_letter.replay_failed", letter_id=letter_id, error=reason)
        return Replay(letter_id, message_id, reason, succeeded=False)
    finally:
        structlog.contextvars.clear_contextvars()
    with database.session() as session:
        session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == letter_id, DeadLetter.replayed_at.is_(None))
            .values(replayed_at=utcnow())
        )
        session.commit()
    log.info("dead_letter.replayed", letter_id=letter_id, message_id=str(message_id), outcome=outcome)
    return Replay(letter_id, message_id, outcome, succeeded=True)


def confirmed_message_ids(database: InvoiceDatabase, since: datetime) -> Iterator[uuid.UUID]:
    """Messages this service has settled since ``since``: processed, or parked for an operator.

    This is what the order side's reconciliation compares its published outbox rows against.
    """
    query = union(
        select(ProcessedMessage.message_id).where(ProcessedMessage.processed_at >= since),
        select(DeadLetter.message_id).where(DeadLetter.created_at >= since),
    )
    with database.session() as session:
        yield from session.scalars(query)
