"""Applying ``invoice.created`` to the orders database: the order consumer's handler.

The consumer (``flask_outbox``) opens the transaction, records the message in the inbox, calls
``apply`` (or ``apply_batch``) and commits; it owns retries, delivery counts and dead letters. Here:
the order moves ``placed -> invoiced`` (only from ``placed``, so never backwards) and the
``order.placed`` outbox row it answers (its ``causation_id``) is acknowledged, which stops the relay
re-driving it. Only an answer to what was asked applies: its ``causation_id`` must be this order's
``order.placed`` row and its amount and currency the order's; any other is refused (``InvalidAnswer``,
parked with the reason) and changes nothing, so the row stays unacknowledged and re-drive goes on. A
repeated answer to an acknowledged row is what was asked too: it applies nothing and is no error.
Both writes sit behind a guarded UPDATE, so concurrent deliveries serialise on the row and the loser
does nothing. The order keeps the first invoice number it got; a later answer with another number is
logged, not applied.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import structlog
from flask_outbox import (
    DUPLICATE,
    Delivery,
    Handler,
    InvalidMessage,
    UTCDateTime,
    after_commit,
    batch_json,
    database_clock,
    is_postgres,
)
from sqlalchemy import CursorResult, Result, TextClause, and_, bindparam, exists, select, text, update
from sqlalchemy.orm import Session

from order_service.models import INVOICED, PLACED, Order, outbox
from shared.contracts import (
    INVOICE_CREATED,
    ORDER_PLACED,
    InvoiceCreated,
    UnsupportedSchemaVersion,
    parse_invoice_created,
)

__all__ = ["HANDLER", "InvalidAnswer", "Outcome", "UnknownOrder", "apply", "apply_batch"]

log = structlog.get_logger(__name__)


class Outcome(enum.StrEnum):
    INVOICED = "invoiced"
    DUPLICATE_MESSAGE = DUPLICATE
    ALREADY_INVOICED = "already-invoiced"
    NUMBER_CONFLICT = "number-conflict"


class InvalidAnswer(InvalidMessage):
    """The ``invoice.created`` does not answer what its order asked: another row, amount or currency."""


class UnknownOrder(LookupError):
    """The answer names an order this database does not hold: it can never apply here."""


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched: a Core DML statement's result is a ``CursorResult``."""
    return cast("CursorResult[Any]", result).rowcount


_APPLY_IN_ONE_STATEMENT: TextClause = text(
    f"""
    WITH asked AS (
        SELECT orders.id FROM orders JOIN outbox ON outbox.message_id = :causation_id
        WHERE orders.id = :order_id AND orders.amount_total = :amount_total AND orders.currency = :currency
          AND outbox.topic = '{ORDER_PLACED}' AND outbox.aggregate_id = :aggregate_id
    ), moved AS (
        UPDATE orders SET status = '{INVOICED}', invoice_number = :invoice_number, invoiced_at = :invoiced_at
        WHERE id IN (SELECT id FROM asked) AND status = '{PLACED}'
        RETURNING id
    ), acknowledged AS (
        UPDATE outbox SET acknowledged_at = statement_timestamp()
        WHERE message_id = :causation_id AND acknowledged_at IS NULL AND EXISTS (SELECT 1 FROM asked)
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM asked) AS asked, EXISTS (SELECT 1 FROM moved) AS moved,
           EXISTS (SELECT 1 FROM acknowledged) AS acknowledged
    """  # noqa: S608 - the interpolated values are this module's constants, never input
).bindparams(bindparam("invoiced_at", type_=UTCDateTime()))
"""Postgres: in one round trip, whether the answer is one to what was asked (``asked``: its
``causation_id`` is this order's ``order.placed`` row, and the amount and currency are the order's),
and only then ``placed -> invoiced`` and the acknowledgement, each behind its guard."""


def _parameters(event: InvoiceCreated) -> dict[str, Any]:
    return {
        "order_id": uuid.UUID(event.order_id),
        "aggregate_id": event.order_id,
        "causation_id": uuid.UUID(event.causation_id),
        "amount_total": event.amount_total,
        "currency": event.currency,
        "invoice_number": event.invoice_number,
        "invoiced_at": event.invoiced_at,
    }


def _apply_portable(session: Session, event: InvoiceCreated) -> tuple[bool, bool, bool]:
    """``_APPLY_IN_ONE_STATEMENT`` in three statements, for SQLite."""
    order_id, causation_id = uuid.UUID(event.order_id), uuid.UUID(event.causation_id)
    order_matches = exists().where(
        Order.id == order_id, Order.amount_total == event.amount_total, Order.currency == event.currency
    )
    row_matches = exists().where(
        outbox.c.message_id == causation_id,
        outbox.c.topic == ORDER_PLACED,
        outbox.c.aggregate_id == event.order_id,
    )
    asked = session.scalar(select(and_(order_matches, row_matches)))
    if not asked:
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
            .values(acknowledged_at=database_clock(session.get_bind().dialect))
        )
    )
    return True, moved is not None, bool(acknowledged)


def _refusal(session: Session, event: InvoiceCreated) -> Exception:
    """Why an answer is not one to what this order asked: the error that parks it, in words."""
    order = session.execute(
        select(Order.amount_total, Order.currency).where(Order.id == uuid.UUID(event.order_id))
    ).one_or_none()
    if order is None:
        return UnknownOrder(f"no order {event.order_id}")
    question = session.execute(
        select(outbox.c.topic, outbox.c.aggregate_id).where(
            outbox.c.message_id == uuid.UUID(event.causation_id)
        )
    ).one_or_none()
    if question is None or (question.topic, question.aggregate_id) != (ORDER_PLACED, event.order_id):
        return InvalidAnswer(
            f"causation_id {event.causation_id} is no {ORDER_PLACED} of order {event.order_id}: "
            "an answer to nothing this order asked"
        )
    return InvalidAnswer(
        f"the answer's {event.amount_total} {event.currency} is not order {event.order_id}'s "
        f"{order.amount_total} {order.currency}"
    )


def apply(session: Session, delivery: Delivery[InvoiceCreated]) -> str:
    """``placed -> invoiced`` and the answered outbox row acknowledged, in the consumer's transaction.

    Raises ``UnknownOrder`` or ``InvalidAnswer`` for an answer that can never apply (it is parked):
    one for an order this database does not hold, or one that does not answer what the order asked.
    """
    event = delivery.message
    if is_postgres(session.get_bind().dialect):
        row = session.execute(_APPLY_IN_ONE_STATEMENT, _parameters(event)).one()
        asked, moved, acknowledged = bool(row.asked), bool(row.moved), bool(row.acknowledged)
    else:
        asked, moved, acknowledged = _apply_portable(session, event)
    if not asked:
        raise _refusal(session, event)
    outcome, kept = Outcome.INVOICED, event.invoice_number
    if not moved:
        kept = session.scalar(select(Order.invoice_number).where(Order.id == uuid.UUID(event.order_id)))
        outcome = _kept_or_conflict(event, kept)
    _log_recorded(session, event, outcome, acknowledged, kept)
    return outcome.value


def _kept_or_conflict(event: InvoiceCreated, kept: str | None) -> Outcome:
    return Outcome.ALREADY_INVOICED if kept == event.invoice_number else Outcome.NUMBER_CONFLICT


def _log_recorded(
    session: Session, event: InvoiceCreated, outcome: Outcome, acknowledged: bool, kept: str | None
) -> None:
    """The lines that say what was applied, written once it committed (evidence, not intent)."""
    if outcome is Outcome.NUMBER_CONFLICT:
        after_commit(
            session,
            partial(
                log.warning,
                "order.invoice_number_conflict",
                kept=kept,
                ignored=event.invoice_number,
                order_id=event.order_id,
            ),
        )
    after_commit(
        session,
        partial(
            log.info,
            "order.invoice_recorded",
            outcome=outcome.value,
            invoice_number=event.invoice_number,
            causation_id=event.causation_id,
            acknowledged=acknowledged,
            order_id=event.order_id,
        ),
    )


_APPLY_BATCH_IN_ONE_STATEMENT: TextClause = text(
    f"""
    WITH incoming AS (
        SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
            position integer, message_id uuid, order_id uuid, invoice_number text,
            invoiced_at timestamptz, causation_id uuid, amount_total bigint, currency text)
    ), asked AS (
        SELECT incoming.message_id
        FROM incoming
        JOIN orders ON orders.id = incoming.order_id AND orders.amount_total = incoming.amount_total
                    AND orders.currency = incoming.currency
        JOIN outbox ON outbox.message_id = incoming.causation_id AND outbox.topic = '{ORDER_PLACED}'
                    AND outbox.aggregate_id = CAST(incoming.order_id AS text)
    ), moved AS (
        UPDATE orders SET status = '{INVOICED}', invoice_number = incoming.invoice_number,
                          invoiced_at = incoming.invoiced_at
        FROM incoming JOIN asked USING (message_id)
        WHERE orders.id = incoming.order_id AND orders.status = '{PLACED}'
        RETURNING incoming.message_id
    ), acknowledged AS (
        UPDATE outbox SET acknowledged_at = statement_timestamp()
        FROM incoming JOIN asked USING (message_id)
        WHERE outbox.message_id = incoming.causation_id AND outbox.acknowledged_at IS NULL
        RETURNING incoming.message_id
    )
    SELECT asked.message_id IS NOT NULL AS asked, moved.message_id IS NOT NULL AS moved,
           acknowledged.message_id IS NOT NULL AS acknowledged
    FROM incoming LEFT JOIN asked USING (message_id) LEFT JOIN moved USING (message_id)
         LEFT JOIN acknowledged USING (message_id)
    ORDER BY incoming.position
    """  # noqa: S608 - the interpolated values are this module's constants, never input
)
"""``_APPLY_IN_ONE_STATEMENT`` for a whole batch. An answer that is not one to what its order asked
(or for an order this database does not hold) writes nothing: the consumer leaves it to the single
task, which parks it with the reason."""


def _numbers_now(session: Session, order_ids: set[str]) -> dict[str, str | None]:
    """The invoice numbers ``order_ids`` hold now, read by a statement of its own.

    Not from the batch statement: its snapshot predates an answer that another consumer committed while
    the statement's UPDATE waited for that order's row (READ COMMITTED), so it would read "no number
    yet" for an order just invoiced, and report a conflict that is none.
    """
    if not order_ids:
        return {}
    rows = session.execute(
        select(Order.id, Order.invoice_number).where(Order.id.in_([uuid.UUID(o) for o in order_ids]))
    )
    return {str(order_id): number for order_id, number in rows}


def apply_batch(session: Session, batch: Sequence[Delivery[InvoiceCreated]]) -> list[str | None]:
    """``apply`` for many answers in one statement (Postgres); ``None`` for one that cannot apply here.

    Elsewhere (SQLite) each answer is applied alone, in the same transaction.
    """
    if not is_postgres(session.get_bind().dialect):
        singles: list[str | None] = [apply(session, delivery) for delivery in batch]
        return singles
    rows = session.execute(_APPLY_BATCH_IN_ONE_STATEMENT, {"batch": batch_json(batch)}).all()
    numbers: dict[str, str | None] = {  # the number each order was moved to by this batch
        delivery.message.order_id: delivery.message.invoice_number
        for delivery, row in zip(batch, rows, strict=True)
        if row.moved
    }
    numbers |= _numbers_now(
        session,
        {d.message.order_id for d, row in zip(batch, rows, strict=True) if row.asked and not row.moved}
        - numbers.keys(),
    )
    outcomes: list[str | None] = []
    for delivery, row in zip(batch, rows, strict=True):
        if not row.asked:
            outcomes.append(None)
            continue
        event = delivery.message
        with delivery.context():
            kept = event.invoice_number if row.moved else numbers[event.order_id]
            outcome = Outcome.INVOICED if row.moved else _kept_or_conflict(event, kept)
            _log_recorded(session, event, outcome, bool(row.acknowledged), kept)
        outcomes.append(outcome.value)
    return outcomes


HANDLER: Handler[InvoiceCreated] = Handler(
    topic=INVOICE_CREATED,
    parse=parse_invoice_created,
    apply=apply,
    apply_batch=apply_batch,
    permanent=(UnsupportedSchemaVersion, UnknownOrder),
)
"""How the order consumer applies ``invoice.created`` (registered in ``order_service.worker``)."""
