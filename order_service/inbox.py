"""Applying ``invoice.created`` to the orders database, exactly once in effect, whatever the broker does.

One transaction per message: record the message id in the inbox, move the order ``placed ->
invoiced`` (only from ``placed``, so never backwards), and acknowledge the ``order.placed``
outbox row it answers (its ``causation_id``), which stops the relay re-driving it. Every write
sits behind a UNIQUE key or a guarded UPDATE, so duplicates and concurrent deliveries serialise
on the database and the loser does nothing. The order keeps the first invoice number it got;
a later answer with another number is logged, not applied.

Plain functions on a session the caller gives: the Celery task (``worker``) is a thin adapter.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from flask_outbox.batches import BatchItem, message_context
from flask_outbox.db import UTCDateTime, database_clock, utcnow
from sqlalchemy import CursorResult, Result, TextClause, bindparam, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from order_service.models import INVOICED, PLACED, DeadLetter, Order, ProcessedMessage, outbox
from shared.contracts import INVOICE_CREATED, InvoiceCreated

__all__ = [
    "InvalidAnswer",
    "Outcome",
    "UnknownOrder",
    "prune_processed",
    "record_dead_letter",
    "record_invoice",
    "record_invoices",
]

log = structlog.get_logger(__name__)


class Outcome(enum.StrEnum):
    INVOICED = "invoiced"
    DUPLICATE_MESSAGE = "duplicate-message"
    ALREADY_INVOICED = "already-invoiced"
    NUMBER_CONFLICT = "number-conflict"


class InvalidAnswer(ValueError):
    """The message is not an ``invoice.created`` this service can read."""


class UnknownOrder(LookupError):
    """The answer names an order this database does not hold: it can never apply here."""


def _insert(session: Session, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can say ON CONFLICT on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched: a Core DML statement's result is a ``CursorResult``."""
    return cast("CursorResult[Any]", result).rowcount


def _order_key(event: InvoiceCreated) -> uuid.UUID:
    try:
        return uuid.UUID(event.order_id)
    except ValueError:
        raise UnknownOrder(f"order_id {event.order_id!r} is not an order id") from None


def _causation(event: InvoiceCreated) -> uuid.UUID:
    try:
        return uuid.UUID(event.causation_id)
    except ValueError:
        raise InvalidAnswer(f"causation_id {event.causation_id!r} is not a message id") from None


_RECORD_IN_ONE_STATEMENT: TextClause = text(
    f"""
    WITH inbox AS (
        INSERT INTO processed_messages (message_id, topic, processed_at)
        VALUES (:message_id, :topic, statement_timestamp())
        ON CONFLICT (message_id) DO NOTHING
        RETURNING message_id
    ), moved AS (
        UPDATE orders SET status = '{INVOICED}', invoice_number = :invoice_number, invoiced_at = :invoiced_at
        WHERE id = :order_id AND status = '{PLACED}' AND EXISTS (SELECT 1 FROM inbox)
        RETURNING id
    ), acknowledged AS (
        UPDATE outbox SET acknowledged_at = statement_timestamp()
        WHERE message_id = :causation_id AND acknowledged_at IS NULL AND EXISTS (SELECT 1 FROM inbox)
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM inbox) AS fresh, EXISTS (SELECT 1 FROM moved) AS moved,
           EXISTS (SELECT 1 FROM acknowledged) AS acknowledged
    """  # noqa: S608 - the interpolated values are this module's constants, never input
).bindparams(bindparam("invoiced_at", type_=UTCDateTime()))
"""Postgres: inbox, ``placed -> invoiced`` and the acknowledgement in one round trip, each write behind
its own guard (ON CONFLICT DO NOTHING on the inbox, the status and ``acknowledged_at IS NULL``)."""


def _record_postgres(
    session: Session,
    message_id: uuid.UUID,
    event: InvoiceCreated,
    order_id: uuid.UUID,
    causation_id: uuid.UUID,
) -> tuple[bool, bool, bool]:
    row = session.execute(
        _RECORD_IN_ONE_STATEMENT,
        {
            "message_id": message_id,
            "topic": INVOICE_CREATED,
            "invoice_number": event.invoice_number,
            "invoiced_at": event.invoiced_at,
            "order_id": order_id,
            "causation_id": causation_id,
        },
    ).one()
    return bool(row.fresh), bool(row.moved), bool(row.acknowledged)


def _record_portable(
    session: Session,
    message_id: uuid.UUID,
    event: InvoiceCreated,
    order_id: uuid.UUID,
    causation_id: uuid.UUID,
) -> tuple[bool, bool, bool]:
    now = database_clock(session.get_bind().dialect)
    inbox = (
        _insert(session, ProcessedMessage)
        .values(message_id=message_id, topic=INVOICE_CREATED, processed_at=now)
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(ProcessedMessage.message_id)
    )
    # RETURNING, not rowcount: an ORM-session INSERT reports rowcount -1 on psycopg.
    if session.execute(inbox).scalar_one_or_none() is None:
        return False, False, False
    moved = session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == PLACED)
        .values(status=INVOICED, invoice_number=event.invoice_number, invoiced_at=event.invoiced_at)
        .returning(Order.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    acknowledged = _rowcount(
        session.execute(
            update(outbox)
            .where(outbox.c.message_id == causation_id, outbox.c.acknowledged_at.is_(None))
            .values(acknowledged_at=now)
        )
    )
    return True, moved is not None, bool(acknowledged)


def record_invoice(session: Session, message_id: uuid.UUID, event: InvoiceCreated) -> Outcome:
    """In one transaction: inbox, ``placed -> invoiced``, acknowledge the answered outbox row; commit.

    Raises ``UnknownOrder`` or ``InvalidAnswer`` (nothing written) for an answer that can never apply.
    """
    order_id, causation_id = _order_key(event), _causation(event)
    context = {"message_id": str(message_id), "order_id": event.order_id}
    postgres = session.get_bind().dialect.name == "postgresql"
    record = _record_postgres if postgres else _record_portable
    fresh, moved, acknowledged = record(session, message_id, event, order_id, causation_id)
    if not fresh:
        session.rollback()
        log.info("order.invoice_duplicate_message", **context)
        return Outcome.DUPLICATE_MESSAGE
    outcome = Outcome.INVOICED
    if not moved:
        current = session.execute(
            select(Order.status, Order.invoice_number).where(Order.id == order_id)
        ).one_or_none()
        if current is None:
            session.rollback()
            raise UnknownOrder(f"no order {event.order_id}")
        if current.invoice_number == event.invoice_number:
            outcome = Outcome.ALREADY_INVOICED
        else:
            outcome = Outcome.NUMBER_CONFLICT
            log.warning(
                "order.invoice_number_conflict",
                kept=current.invoice_number,
                ignored=event.invoice_number,
                status=current.status,
                **context,
            )
    session.commit()
    log.info(
        "order.invoice_recorded",
        outcome=outcome.value,
        invoice_number=event.invoice_number,
        causation_id=str(causation_id),
        acknowledged=bool(acknowledged),
        **context,
    )
    return outcome


_RECORD_BATCH_IN_ONE_STATEMENT: TextClause = text(
    f"""
    WITH incoming AS (
        SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
            position integer, message_id uuid, order_id uuid, invoice_number text,
            invoiced_at timestamptz, causation_id uuid)
    ), known AS (
        SELECT incoming.message_id, orders.invoice_number AS current_number
        FROM incoming JOIN orders ON orders.id = incoming.order_id
    ), inbox AS (
        INSERT INTO processed_messages (message_id, topic, processed_at)
        SELECT message_id, :topic, statement_timestamp() FROM incoming
        WHERE message_id IN (SELECT message_id FROM known) ORDER BY position
        ON CONFLICT (message_id) DO NOTHING
        RETURNING message_id
    ), moved AS (
        UPDATE orders SET status = '{INVOICED}', invoice_number = incoming.invoice_number,
                          invoiced_at = incoming.invoiced_at
        FROM incoming JOIN inbox USING (message_id)
        WHERE orders.id = incoming.order_id AND orders.status = '{PLACED}'
        RETURNING incoming.message_id
    ), acknowledged AS (
        UPDATE outbox SET acknowledged_at = statement_timestamp()
        FROM incoming JOIN inbox USING (message_id)
        WHERE outbox.message_id = incoming.causation_id AND outbox.acknowledged_at IS NULL
        RETURNING incoming.message_id
    )
    SELECT known.message_id IS NOT NULL AS known, known.current_number,
           inbox.message_id IS NOT NULL AS fresh, moved.message_id IS NOT NULL AS moved,
           acknowledged.message_id IS NOT NULL AS acknowledged
    FROM incoming LEFT JOIN known USING (message_id) LEFT JOIN inbox USING (message_id)
         LEFT JOIN moved USING (message_id) LEFT JOIN acknowledged USING (message_id)
    ORDER BY incoming.position
    """  # noqa: S608 - the interpolated values are this module's constants, never input
)
"""``_RECORD_IN_ONE_STATEMENT`` for a whole batch. A message for an order this database does not hold
writes nothing (``known``), so the rest of the batch commits and that one is left to the single task,
which parks it."""


def _applicable(event: InvoiceCreated) -> bool:
    try:
        _order_key(event)
        _causation(event)
    except (UnknownOrder, InvalidAnswer):
        return False
    return True


def record_invoices(
    session: Session, batch: Sequence[tuple[BatchItem, InvoiceCreated]]
) -> list[Outcome | None]:
    """``record_invoice`` for many messages (distinct ids): one statement, one commit (Postgres only).

    Returns an outcome per message; ``None`` for one that can never apply here (an unknown order, ids
    that are not ids): nothing of it is written, and the caller hands it to the single task.
    """
    if session.get_bind().dialect.name != "postgresql":
        raise NotImplementedError("batches are applied on Postgres; elsewhere each message is recorded alone")
    applicable = [(item, event) for item, event in batch if _applicable(event)]
    rows = iter(
        session.execute(
            _RECORD_BATCH_IN_ONE_STATEMENT,
            {
                "topic": INVOICE_CREATED,
                "batch": json.dumps(
                    [
                        {
                            "position": position,
                            "message_id": str(item.message_id),
                            "order_id": event.order_id,
                            "invoice_number": event.invoice_number,
                            "invoiced_at": event.invoiced_at.isoformat(),
                            "causation_id": event.causation_id,
                        }
                        for position, (item, event) in enumerate(applicable)
                    ]
                ),
            },
        ).all()
        if applicable
        else []
    )
    session.commit()
    numbers: dict[str, str] = {}  # the number each order was moved to by this batch
    results: list[tuple[BatchItem, InvoiceCreated, Any]] = []
    for item, event in batch:
        row = next(rows) if _applicable(event) else None
        results.append((item, event, row))
        if row is not None and row.moved:
            numbers[event.order_id] = event.invoice_number
    outcomes: list[Outcome | None] = []
    for item, event, row in results:
        outcome = _batch_outcome(event, row, numbers)
        outcomes.append(outcome)
        if outcome is None:
            continue
        with message_context(item):
            if outcome is Outcome.DUPLICATE_MESSAGE:
                log.info("order.invoice_duplicate_message", order_id=event.order_id)
                continue
            if outcome is Outcome.NUMBER_CONFLICT:
                log.warning(
                    "order.invoice_number_conflict",
                    kept=numbers.get(event.order_id, row.current_number),
                    ignored=event.invoice_number,
                    order_id=event.order_id,
                )
            log.info(
                "order.invoice_recorded",
                outcome=outcome.value,
                invoice_number=event.invoice_number,
                causation_id=event.causation_id,
                acknowledged=bool(row.acknowledged),
                order_id=event.order_id,
            )
    return outcomes


def _batch_outcome(event: InvoiceCreated, row: Any, numbers: dict[str, str]) -> Outcome | None:
    if row is None or not row.known:
        return None
    if not row.fresh:
        return Outcome.DUPLICATE_MESSAGE
    if row.moved:
        return Outcome.INVOICED
    kept = numbers.get(event.order_id, row.current_number)
    return Outcome.ALREADY_INVOICED if kept == event.invoice_number else Outcome.NUMBER_CONFLICT


def record_dead_letter(
    session: Session, message_id: uuid.UUID, task_name: str, payload: Any, reason: str, attempts: int
) -> None:
    """Park a message that cannot apply; a redelivery of it updates the same row. Commits."""
    statement = _insert(session, DeadLetter).values(
        message_id=message_id,
        task_name=task_name,
        payload=payload,
        reason=reason[:4000],
        attempts=attempts,
        created_at=utcnow(),
    )
    statement = statement.on_conflict_do_update(
        index_elements=["message_id"],
        set_={"reason": statement.excluded.reason, "attempts": statement.excluded.attempts},
    )
    session.execute(statement)
    session.commit()
    log.error("order.invoice_dead_lettered", message_id=str(message_id), reason=reason, attempts=attempts)


def prune_processed(
    session: Session, *, older_than: timedelta, batch: int, now: datetime | None = None
) -> int:
    """Forget up to ``batch`` inbox entries older than the retention, oldest first; commits.

    Safe past any redelivery window and even within it: a forgotten message applied again finds
    the order already invoiced and the outbox row already acknowledged, and changes nothing.
    """
    cutoff = (now or utcnow()) - older_than
    oldest = (
        select(ProcessedMessage.message_id)
        .where(ProcessedMessage.processed_at < cutoff)
        .order_by(ProcessedMessage.processed_at)
        .limit(batch)
    )
    deleted = _rowcount(
        session.execute(
            delete(ProcessedMessage).where(ProcessedMessage.message_id.in_(oldest.scalar_subquery()))
        )
    )
    session.commit()
    return int(deleted or 0)
