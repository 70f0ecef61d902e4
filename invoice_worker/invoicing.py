"""Making invoices, exactly once per order, whatever the broker redelivers.

**Commits** (this module is the invoice worker's unit of work; tasks and ``processing`` never commit):
``create_invoice`` commits once per message: the inbox row, the invoice and its ``invoice.created``
outbox row together (a duplicate message, or an order already invoiced: the answer sent again, in
``_answer_again``).
``count_delivery`` commits its count *before* the work, on purpose, so a delivery that kills the
worker is still counted and a poison message ends as a dead letter. ``record_dead_letter`` commits
the parked message. A message therefore takes one commit, plus one when its delivery is counted.
Outside a delivery: an operator's replay (``dead_letters``) commits the replay's outcome on the dead
letter after ``create_invoice`` committed; inbox retention (``retention``) deletes in batches of its own.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from flask_outbox.batches import BatchItem, message_context
from flask_outbox.db import UTCDateTime, database_clock, utcnow
from sqlalchemy import TextClause, bindparam, exists, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from invoice_worker.models import DeadLetter, Invoice, MessageDelivery, ProcessedMessage
from invoice_worker.receivers import connect_receivers
from invoice_worker.signals import invoice_created, invoice_requested_again
from shared.contracts import ORDER_PLACED, OrderPlaced

__all__ = [
    "Outcome",
    "count_delivery",
    "create_invoice",
    "create_invoices",
    "is_processed",
    "record_dead_letter",
]

log = structlog.get_logger(__name__)

# The worker has no app factory: the receivers are wired where the signals are sent, once per
# process (idempotent), so every path that invoices (task, replay, tests) writes the answer.
connect_receivers()


class Outcome(enum.StrEnum):
    CREATED = "created"
    DUPLICATE_MESSAGE = "duplicate-message"
    ALREADY_INVOICED = "already-invoiced"


def _insert(session: Session, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can say ON CONFLICT DO NOTHING on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


_INVOICE_IN_ONE_STATEMENT: TextClause = text(
    """
    WITH inbox AS (
        INSERT INTO processed_messages (message_id, topic, processed_at)
        VALUES (:message_id, :topic, statement_timestamp())
        ON CONFLICT (message_id) DO NOTHING
        RETURNING message_id
    ), numbered AS (
        SELECT nextval(pg_get_serial_sequence('invoices', 'id')) AS id FROM inbox
    ), invoice AS (
        INSERT INTO invoices (id, order_id, number, customer_id, currency, amount_total, lines,
                              message_id, placed_at, created_at)
        SELECT id, :order_id, 'INV-' || lpad(id::text, greatest(8, length(id::text)), '0'), :customer_id,
               :currency, :amount_total, :lines, :message_id, :placed_at, statement_timestamp()
        FROM numbered
        ON CONFLICT (order_id) DO NOTHING
        RETURNING id, number, created_at
    ), settled AS (
        UPDATE dead_letters SET replayed_at = statement_timestamp()
        WHERE message_id = :message_id AND replayed_at IS NULL AND EXISTS (SELECT 1 FROM invoice)
    )
    SELECT EXISTS (SELECT 1 FROM inbox) AS fresh, invoice.id, invoice.number, invoice.created_at
    FROM (SELECT 1) AS one LEFT JOIN invoice ON true
    """
).bindparams(bindparam("lines", type_=JSONB), bindparam("placed_at", type_=UTCDateTime()))
"""Postgres: inbox row, invoice numbered ``INV-%08d`` from its own id, and an early dead letter settled,
in one round trip. Each write keeps its UNIQUE guard (ON CONFLICT DO NOTHING), so duplicates still
serialise on the indexes; ``fresh`` tells a duplicate message from an order already invoiced."""


def create_invoice(session: Session, message_id: uuid.UUID, event: OrderPlaced) -> Outcome:
    """In one transaction: record the message in the inbox, make the order's invoice and its answer.

    Both writes sit behind UNIQUE constraints, so concurrent duplicates serialise on the index
    and the loser does nothing, instead of racing through a check-then-insert. The answer
    (``invoice.created`` in the outbox) is written by the ``invoice_created`` receivers before
    commit: the invoice and its answer commit together or not at all.

    An ``order.placed`` for an order that already has its invoice is answered again: the order
    side re-drives it when it never heard back (the broker may have lost the answer), and the
    invoice, not the broker, is what acknowledges it.
    """
    if session.get_bind().dialect.name == "postgresql":
        return _create_invoice_postgres(session, message_id, event)
    now = database_clock(session.get_bind().dialect)  # the invoice's time is the database's, not this host's
    inbox = (
        _insert(session, ProcessedMessage)
        .values(message_id=message_id, topic=ORDER_PLACED, processed_at=now)
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(ProcessedMessage.message_id)
    )
    # RETURNING, not rowcount: an ORM-session INSERT reports rowcount -1 on psycopg.
    if session.execute(inbox).scalar_one_or_none() is None:
        session.rollback()
        log.info("invoice.duplicate_message", message_id=str(message_id), order_id=event.order_id)
        _answer_again(session, message_id, event.order_id)
        return Outcome.DUPLICATE_MESSAGE

    invoice = (
        _insert(session, Invoice)
        .values(
            order_id=event.order_id,
            number=message_id.hex,  # replaced by INV-<id> below, in the same transaction
            customer_id=event.customer_id,
            currency=event.currency,
            amount_total=event.amount_total,
            lines=[line.model_dump(mode="json") for line in event.lines],
            message_id=message_id,
            placed_at=event.placed_at,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["order_id"])
        .returning(Invoice.id)
    )
    invoice_id = session.execute(invoice).scalar_one_or_none()
    if invoice_id is None:
        log.info("invoice.already_exists", message_id=str(message_id), order_id=event.order_id)
        _answer_again(session, message_id, event.order_id)  # commits the inbox row with the answer
        return Outcome.ALREADY_INVOICED
    number = f"INV-{invoice_id:08d}"
    numbered = session.scalars(
        update(Invoice).where(Invoice.id == invoice_id).values(number=number).returning(Invoice)
    ).one()
    # A message parked too early (e.g. redelivered while a slow first delivery still ran) is settled now.
    session.execute(
        update(DeadLetter)
        .where(DeadLetter.message_id == message_id, DeadLetter.replayed_at.is_(None))
        .values(replayed_at=now)
    )
    invoice_created.send(create_invoice, invoice=numbered, causation_id=message_id, session=session)
    session.commit()
    log.info("invoice.created", message_id=str(message_id), order_id=event.order_id, number=number)
    return Outcome.CREATED


def _as_written(row: Any, message_id: uuid.UUID, event: OrderPlaced) -> Invoice:
    """The invoice a statement wrote, for the receivers to read; the session never tracks it."""
    return Invoice(
        id=row.id,
        order_id=event.order_id,
        number=row.number,
        customer_id=event.customer_id,
        currency=event.currency,
        amount_total=event.amount_total,
        message_id=message_id,
        placed_at=event.placed_at,
        created_at=row.created_at,
    )


def _create_invoice_postgres(session: Session, message_id: uuid.UUID, event: OrderPlaced) -> Outcome:
    """``create_invoice`` in one statement (``_INVOICE_IN_ONE_STATEMENT``), then the answer and commit."""
    row = session.execute(
        _INVOICE_IN_ONE_STATEMENT,
        {
            "message_id": message_id,
            "topic": ORDER_PLACED,
            "order_id": event.order_id,
            "customer_id": event.customer_id,
            "currency": event.currency,
            "amount_total": event.amount_total,
            "lines": [line.model_dump(mode="json") for line in event.lines],
            "placed_at": event.placed_at,
        },
    ).one()
    if not row.fresh:
        session.rollback()
        log.info("invoice.duplicate_message", message_id=str(message_id), order_id=event.order_id)
        _answer_again(session, message_id, event.order_id)
        return Outcome.DUPLICATE_MESSAGE
    if row.id is None:
        log.info("invoice.already_exists", message_id=str(message_id), order_id=event.order_id)
        _answer_again(session, message_id, event.order_id)  # commits the inbox row with the answer
        return Outcome.ALREADY_INVOICED
    invoice = _as_written(row, message_id, event)
    invoice_created.send(create_invoice, invoice=invoice, causation_id=message_id, session=session)
    session.commit()
    log.info("invoice.created", message_id=str(message_id), order_id=event.order_id, number=row.number)
    return Outcome.CREATED


_INVOICES_IN_ONE_STATEMENT: TextClause = text(
    """
    WITH incoming AS (
        SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
            position integer, message_id uuid, order_id text, customer_id text, currency text,
            amount_total bigint, lines jsonb, placed_at timestamptz)
    ), inbox AS (
        INSERT INTO processed_messages (message_id, topic, processed_at)
        SELECT message_id, :topic, statement_timestamp() FROM incoming ORDER BY position
        ON CONFLICT (message_id) DO NOTHING
        RETURNING message_id
    ), numbered AS (
        SELECT nextval(pg_get_serial_sequence('invoices', 'id')) AS id, incoming.*
        FROM incoming JOIN inbox USING (message_id)
    ), invoice AS (
        INSERT INTO invoices (id, order_id, number, customer_id, currency, amount_total, lines,
                              message_id, placed_at, created_at)
        SELECT id, order_id, 'INV-' || lpad(id::text, greatest(8, length(id::text)), '0'), customer_id,
               currency, amount_total, lines, message_id, placed_at, statement_timestamp()
        FROM numbered ORDER BY position
        ON CONFLICT (order_id) DO NOTHING
        RETURNING id, message_id, number, created_at
    ), settled AS (
        UPDATE dead_letters SET replayed_at = statement_timestamp()
        WHERE replayed_at IS NULL AND message_id IN (SELECT message_id FROM invoice)
    )
    SELECT incoming.message_id, inbox.message_id IS NOT NULL AS fresh,
           invoice.id, invoice.number, invoice.created_at
    FROM incoming LEFT JOIN inbox USING (message_id) LEFT JOIN invoice USING (message_id)
    ORDER BY incoming.position
    """
)
"""``_INVOICE_IN_ONE_STATEMENT`` for a whole batch: one round trip whatever its size. Two messages
for one order in a batch make one invoice (ON CONFLICT on ``order_id`` within the statement)."""


def _batch_rows(batch: Sequence[tuple[BatchItem, OrderPlaced]]) -> str:
    return json.dumps(
        [
            {
                "position": position,
                "message_id": str(item.message_id),
                "order_id": event.order_id,
                "customer_id": event.customer_id,
                "currency": event.currency,
                "amount_total": event.amount_total,
                "lines": [line.model_dump(mode="json") for line in event.lines],
                "placed_at": event.placed_at.isoformat(),
            }
            for position, (item, event) in enumerate(batch)
        ]
    )


def create_invoices(session: Session, batch: Sequence[tuple[BatchItem, OrderPlaced]]) -> list[Outcome]:
    """``create_invoice`` for many messages (distinct ids), one statement and one commit for all of them.

    Each new invoice's answer is written by the ``invoice_created`` receivers under its own message's
    ids (``message_context``), before the commit. Messages already in the inbox, and orders already
    invoiced, are answered again afterwards, each in a transaction of its own, as ``create_invoice``
    does. Postgres only; elsewhere each message takes ``create_invoice``.
    """
    if session.get_bind().dialect.name != "postgresql":
        return [create_invoice(session, item.message_id, event) for item, event in batch]
    rows = session.execute(
        _INVOICES_IN_ONE_STATEMENT, {"batch": _batch_rows(batch), "topic": ORDER_PLACED}
    ).all()
    outcomes: list[Outcome] = []
    for (item, event), row in zip(batch, rows, strict=True):
        if row.id is None:
            outcomes.append(Outcome.ALREADY_INVOICED if row.fresh else Outcome.DUPLICATE_MESSAGE)
            continue
        invoice = _as_written(row, item.message_id, event)
        with message_context(item):
            invoice_created.send(
                create_invoice, invoice=invoice, causation_id=item.message_id, session=session
            )
        outcomes.append(Outcome.CREATED)
    session.commit()
    for (item, event), row, outcome in zip(batch, rows, outcomes, strict=True):
        with message_context(item):
            if outcome is Outcome.CREATED:
                log.info("invoice.created", order_id=event.order_id, number=row.number)
                continue
            event_name = (
                "invoice.duplicate_message"
                if outcome is Outcome.DUPLICATE_MESSAGE
                else "invoice.already_exists"
            )
            log.info(event_name, order_id=event.order_id)
            _answer_again(session, item.message_id, event.order_id)
    return outcomes


def _answer_again(session: Session, message_id: uuid.UUID, order_id: str) -> None:
    """Answer ``message_id`` with the order's existing invoice, and commit the session's transaction.

    How often this runs is bounded by the order side's re-drive backoff and cap; a broker
    redelivery of a settled message costs one extra answer, which the order side ignores.
    """
    invoice = session.scalars(select(Invoice).where(Invoice.order_id == order_id)).one_or_none()
    if invoice is None:
        # The inbox holds the message but no invoice exists (deleted by hand): nothing to answer with.
        session.commit()
        log.warning("invoice.reanswer_without_invoice", message_id=str(message_id), order_id=order_id)
        return
    invoice_requested_again.send(create_invoice, invoice=invoice, causation_id=message_id, session=session)
    session.commit()
    log.info("invoice.reanswered", message_id=str(message_id), order_id=order_id, number=invoice.number)


def record_dead_letter(
    session: Session,
    message_id: uuid.UUID,
    task_name: str,
    payload: dict[str, Any],
    reason: str,
    attempts: int,
) -> None:
    """Park a message that cannot succeed; a redelivery of the same message updates the same row."""
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
        set_={
            "reason": statement.excluded.reason,
            "attempts": statement.excluded.attempts,
            "replayed_at": None,
        },
    )
    session.execute(statement)
    session.commit()
    log.error("invoice.dead_lettered", message_id=str(message_id), reason=reason, attempts=attempts)


def count_delivery(session: Session, message_id: uuid.UUID, first: int = 1) -> int:
    """Count one more delivery of ``message_id`` and commit before any work, so a crash still counts.

    ``first``: the count a message's first counted delivery gets: 2 when the broker's first delivery
    of it went uncounted (``DeliveryPolicy.first_delivery_uncounted``).
    """
    now = utcnow()
    insert = _insert(session, MessageDelivery).values(
        message_id=message_id, deliveries=first, first_delivered_at=now, last_delivered_at=now
    )
    statement = insert.on_conflict_do_update(
        index_elements=["message_id"],
        set_={"deliveries": MessageDelivery.deliveries + 1, "last_delivered_at": now},
    ).returning(MessageDelivery.deliveries)
    deliveries: int = session.execute(statement).scalar_one()
    session.commit()
    return deliveries


def is_processed(session: Session, message_id: uuid.UUID) -> bool:
    return bool(session.scalar(select(exists().where(ProcessedMessage.message_id == message_id))))
