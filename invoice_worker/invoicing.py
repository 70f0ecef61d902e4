"""Making invoices, exactly once per order: the invoice worker's handler of ``order.placed``.

The consumer (``flask_outbox``) opens the transaction, records the message in the inbox, calls
``apply`` (or ``apply_batch``) and commits; it owns retries, delivery counts and dead letters. Here:
the invoice (UNIQUE per order) and, written by the ``invoice_created`` receivers before the commit, its
``invoice.created`` answer in the outbox. An ``order.placed`` for an order already invoiced, or a
message the inbox already holds, is answered again (``invoice_requested_again``): the order side
re-drives while it has not heard back, and the invoice, not the broker, is what acknowledges it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import structlog
from flask_outbox import (
    DUPLICATE,
    Delivery,
    Handler,
    UTCDateTime,
    after_commit,
    batch_json,
    database_clock,
    is_postgres,
)
from sqlalchemy import TextClause, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from invoice_worker.models import Invoice
from invoice_worker.receivers import connect_receivers
from invoice_worker.signals import invoice_created, invoice_requested_again
from shared.contracts import ORDER_PLACED, OrderPlaced, UnsupportedSchemaVersion, parse_order_placed

__all__ = ["HANDLER", "Outcome", "answer_again", "apply", "apply_batch"]

log = structlog.get_logger(__name__)

# The worker has no app factory: the receivers are wired where the signals are sent, once per
# process (idempotent), so every path that invoices (task, replay, tests) writes the answer.
connect_receivers()


class Outcome(enum.StrEnum):
    CREATED = "created"
    DUPLICATE_MESSAGE = DUPLICATE  # the inbox already held the message: answered again
    ALREADY_INVOICED = "already-invoiced"


_INVOICE_IN_ONE_STATEMENT: TextClause = text(
    """
    WITH numbered AS (
        SELECT nextval(pg_get_serial_sequence('invoices', 'id')) AS id
    ), invoice AS (
        INSERT INTO invoices (id, order_id, number, customer_id, currency, amount_total, lines,
                              message_id, placed_at, created_at)
        SELECT id, :order_id, 'INV-' || lpad(id::text, greatest(8, length(id::text)), '0'), :customer_id,
               :currency, :amount_total, :lines, :message_id, :placed_at, statement_timestamp()
        FROM numbered
        ON CONFLICT (order_id) DO NOTHING
        RETURNING id, number, created_at
    )
    SELECT invoice.id, invoice.number, invoice.created_at FROM (SELECT 1) AS one LEFT JOIN invoice ON true
    """
).bindparams(bindparam("lines", type_=JSONB), bindparam("placed_at", type_=UTCDateTime()))
"""Postgres: the invoice numbered ``INV-%08d`` from its own id, in one round trip, behind its UNIQUE
guard on ``order_id`` (ON CONFLICT DO NOTHING), so concurrent duplicates serialise on the index."""

_INVOICES_IN_ONE_STATEMENT: TextClause = text(
    """
    WITH incoming AS (
        SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
            position integer, message_id uuid, order_id text, customer_id text, currency text,
            amount_total bigint, lines jsonb, placed_at timestamptz)
    ), numbered AS (
        SELECT nextval(pg_get_serial_sequence('invoices', 'id')) AS id, incoming.* FROM incoming
    ), invoice AS (
        INSERT INTO invoices (id, order_id, number, customer_id, currency, amount_total, lines,
                              message_id, placed_at, created_at)
        SELECT id, order_id, 'INV-' || lpad(id::text, greatest(8, length(id::text)), '0'), customer_id,
               currency, amount_total, lines, message_id, placed_at, statement_timestamp()
        FROM numbered ORDER BY position
        ON CONFLICT (order_id) DO NOTHING
        RETURNING id, message_id, number, created_at
    )
    SELECT incoming.message_id, invoice.id, invoice.number, invoice.created_at
    FROM incoming LEFT JOIN invoice USING (message_id)
    ORDER BY incoming.position
    """
)
"""``_INVOICE_IN_ONE_STATEMENT`` for a whole batch: one round trip whatever its size. Two messages
for one order in a batch make one invoice (ON CONFLICT on ``order_id`` within the statement)."""


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


def _insert_portable(session: Session, message_id: uuid.UUID, event: OrderPlaced) -> Invoice | None:
    """SQLite: the invoice behind its UNIQUE guard, then its number from its id; ``None`` if it existed."""
    dialect_insert = postgresql.insert if is_postgres(session.get_bind().dialect) else sqlite.insert
    statement = (
        dialect_insert(Invoice)
        .values(
            order_id=event.order_id,
            number=message_id.hex,  # replaced by INV-<id> below, in the same transaction
            customer_id=event.customer_id,
            currency=event.currency,
            amount_total=event.amount_total,
            lines=[line.model_dump(mode="json") for line in event.lines],
            message_id=message_id,
            placed_at=event.placed_at,
            created_at=database_clock(session.get_bind().dialect),
        )
        .on_conflict_do_nothing(index_elements=["order_id"])
        .returning(Invoice.id)
    )
    invoice_id = session.execute(statement).scalar_one_or_none()
    if invoice_id is None:
        return None
    return session.scalars(
        update(Invoice)
        .where(Invoice.id == invoice_id)
        .values(number=f"INV-{invoice_id:08d}")
        .returning(Invoice)
    ).one()


def _created(session: Session, invoice: Invoice, message_id: uuid.UUID, order_id: str) -> str:
    invoice_created.send(apply, invoice=invoice, causation_id=message_id, session=session)
    after_commit(
        session,
        partial(
            log.info, "invoice.created", message_id=str(message_id), order_id=order_id, number=invoice.number
        ),
    )
    return Outcome.CREATED.value


def _already_invoiced(session: Session, message_id: uuid.UUID, order_id: str) -> str:
    after_commit(
        session, partial(log.info, "invoice.already_exists", message_id=str(message_id), order_id=order_id)
    )
    _answer(session, message_id, order_id)
    return Outcome.ALREADY_INVOICED.value


def apply(session: Session, delivery: Delivery[OrderPlaced]) -> str:
    """The order's invoice and its answer, in the consumer's transaction; or the answer again."""
    message_id, event = delivery.message_id, delivery.message
    if is_postgres(session.get_bind().dialect):
        row = session.execute(
            _INVOICE_IN_ONE_STATEMENT,
            {
                "message_id": message_id,
                "order_id": event.order_id,
                "customer_id": event.customer_id,
                "currency": event.currency,
                "amount_total": event.amount_total,
                "lines": [line.model_dump(mode="json") for line in event.lines],
                "placed_at": event.placed_at,
            },
        ).one()
        invoice = _as_written(row, message_id, event) if row.id is not None else None
    else:
        invoice = _insert_portable(session, message_id, event)
    if invoice is None:
        return _already_invoiced(session, message_id, event.order_id)
    return _created(session, invoice, message_id, event.order_id)


def apply_batch(session: Session, batch: Sequence[Delivery[OrderPlaced]]) -> list[str | None]:
    """``apply`` for many messages in one statement (Postgres); elsewhere one message at a time."""
    if not is_postgres(session.get_bind().dialect):
        applied: list[str | None] = []
        for delivery in batch:
            with delivery.context():
                applied.append(apply(session, delivery))
        return applied
    rows = session.execute(_INVOICES_IN_ONE_STATEMENT, {"batch": batch_json(batch)}).all()
    outcomes: list[str | None] = []
    for delivery, row in zip(batch, rows, strict=True):
        order_id = delivery.message.order_id
        with delivery.context():
            if row.id is None:
                outcomes.append(_already_invoiced(session, delivery.message_id, order_id))
                continue
            invoice = _as_written(row, delivery.message_id, delivery.message)
            outcomes.append(_created(session, invoice, delivery.message_id, order_id))
    return outcomes


def answer_again(session: Session, delivery: Delivery[OrderPlaced]) -> None:
    """A message the inbox already holds: answer it again with the order's invoice."""
    after_commit(
        session,
        partial(
            log.info,
            "invoice.duplicate_message",
            message_id=str(delivery.message_id),
            order_id=delivery.message.order_id,
        ),
    )
    _answer(session, delivery.message_id, delivery.message.order_id)


def _answer(session: Session, message_id: uuid.UUID, order_id: str) -> None:
    """Answer ``message_id`` with the order's existing invoice, in the session's transaction.

    How often this runs is bounded by the order side's re-drive backoff and cap; a broker
    redelivery of a settled message costs one extra answer, which the order side ignores.
    """
    invoice = session.scalars(select(Invoice).where(Invoice.order_id == order_id)).one_or_none()
    if invoice is None:
        # The inbox holds the message but no invoice exists (deleted by hand): nothing to answer with.
        after_commit(
            session,
            partial(
                log.warning, "invoice.reanswer_without_invoice", message_id=str(message_id), order_id=order_id
            ),
        )
        return
    invoice_requested_again.send(apply, invoice=invoice, causation_id=message_id, session=session)
    after_commit(
        session,
        partial(
            log.info,
            "invoice.reanswered",
            message_id=str(message_id),
            order_id=order_id,
            number=invoice.number,
        ),
    )


HANDLER: Handler[OrderPlaced] = Handler(
    topic=ORDER_PLACED,
    parse=parse_order_placed,
    apply=apply,
    apply_batch=apply_batch,
    on_duplicate=answer_again,
    permanent=(UnsupportedSchemaVersion,),
)
"""How the invoice worker consumes ``order.placed`` (registered in ``invoice_worker.celery_app``)."""
