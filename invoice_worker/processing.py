"""One delivery of ``order.placed``: invoice it, retry it later, or park it as a dead letter.

Plain functions, so the Celery task stays a thin adapter and the CLI's replay runs the same logic.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from flask_outbox.backoff import jittered_backoff
from flask_outbox.batches import BatchItem
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from invoice_worker.database import InvoiceDatabase
from invoice_worker.invoicing import (
    Outcome,
    count_delivery,
    create_invoice,
    create_invoices,
    is_processed,
    record_dead_letter,
)
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES, OrderPlaced, UnsupportedSchemaVersion, parse_order_placed

__all__ = [
    "DATABASE_ERRORS",
    "PERMANENT_ERRORS",
    "DeliveryPolicy",
    "InvalidPayload",
    "RetryLater",
    "handle_order_placed",
    "invoice_batch",
    "invoice_payload",
]

log = structlog.get_logger(__name__)

TASK_NAME = ROUTES[ORDER_PLACED].task
BATCH_TASK_NAME = ROUTES[ORDER_PLACED].batch_task or f"{TASK_NAME}_batch"
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout)
"""Trouble with the invoice database, not with the message: every DBAPIError family and a pool timeout.

Unreachable or dropped (Operational/InterfaceError), read-only after a failover onto a replica or an
idle-in-transaction timeout (InternalError), a schema in mid-migration (ProgrammingError), and any
IntegrityError, since the uniqueness that makes a duplicate is settled by ON CONFLICT in
``create_invoice`` and never raises. None of them says the message is bad, so none is acknowledged:
each is retried, bounded by ``retries`` (the database cannot count deliveries it refuses to record).
"""

DEAD_LETTERED = "dead-lettered"


class InvalidPayload(ValueError):
    """The task's payload is not even a JSON object."""


PERMANENT_ERRORS = (ValidationError, UnsupportedSchemaVersion, InvalidPayload)


class RetryLater(Exception):
    """The delivery should be tried again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are bounded.

    ``first_delivery_uncounted``: the broker flags every redelivery (Redis: kombu marks a message
    ``redelivered`` whenever it restores one, after a lost worker, a requeue or the visibility timeout),
    so a message's first delivery need not commit a count before its work: if it kills the worker, it
    comes back flagged and is counted then, starting at 2. The bound on poison stays exactly
    ``max_deliveries``; the common case saves a committed transaction. Off for brokers that do not
    flag redeliveries (the embedded file broker): there every delivery is counted first.
    """

    max_retries: int = 8
    max_deliveries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    first_delivery_uncounted: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        """The settings' policy, with retry countdowns capped at half the visibility timeout.

        A countdown retry is a new message that a worker reserves at once and holds unacknowledged
        until it is due; held past the visibility timeout, Redis restores a second copy, and every
        later retry of both copies doubles again. Half the timeout leaves room for the task's own run.
        """
        return cls(
            max_retries=settings.worker_max_retries,
            max_deliveries=settings.worker_max_deliveries,
            backoff_base=settings.worker_retry_backoff,
            backoff_max=min(settings.worker_retry_backoff_max, settings.broker_visibility_timeout / 2),
            first_delivery_uncounted=not settings.uses_embedded_broker,
        )

    def is_first_delivery(self, retries: int, redelivered: bool) -> bool:
        """Whether this delivery may skip the count: the broker's first delivery of the first attempt."""
        return self.first_delivery_uncounted and retries == 0 and not redelivered

    def backoff(self, attempt: int) -> float:
        return jittered_backoff(attempt, self.backoff_base, self.backoff_max)


def _park(
    database: InvoiceDatabase, message_id: uuid.UUID, payload: dict[str, Any], reason: str, attempts: int
) -> str:
    with database.session() as session:
        record_dead_letter(session, message_id, TASK_NAME, payload, reason, attempts)
    return DEAD_LETTERED


def invoice_payload(database: InvoiceDatabase, message_id: uuid.UUID, payload: dict[str, Any]) -> str:
    """Validate and invoice; raises ``ValueError`` for a payload that can never succeed as it is."""
    if not isinstance(payload, dict):
        raise InvalidPayload(f"payload is a {type(payload).__name__}, not an object")
    event = parse_order_placed(payload)
    with database.session() as session:
        return create_invoice(session, message_id, event).value


def _parsed(payload: Any) -> OrderPlaced | None:
    """The event, or ``None`` for a payload that can never succeed (the single task parks it)."""
    try:
        if not isinstance(payload, dict):
            raise InvalidPayload(f"payload is a {type(payload).__name__}, not an object")
        return parse_order_placed(payload)
    except PERMANENT_ERRORS:
        return None


def invoice_batch(database: InvoiceDatabase, items: list[BatchItem]) -> list[str | None]:
    """A batch's first delivery: invoice every valid message in one transaction (``create_invoices``).

    Returns an outcome per item; ``None`` for an invalid payload, left to the single task, which parks
    it with its reason. Any exception means nothing of the transaction committed (answers sent again
    after the commit are idempotent), and the caller splits the batch (``flask_outbox.batches``). No delivery
    is counted: like a single message's first delivery, a batch that kills its worker comes back
    flagged as redelivered and is split, and each message is counted from there.
    """
    events = [_parsed(item.payload) for item in items]
    valid = [(item, event) for item, event in zip(items, events, strict=True) if event is not None]
    if not valid:
        return [None] * len(items)
    with database.session() as session:
        created = iter(create_invoices(session, valid))
    outcomes: list[str | None] = []
    for item, event in zip(items, events, strict=True):
        outcome = next(created) if event is not None else None
        if outcome is Outcome.DUPLICATE_MESSAGE:
            _count_copy(database, item.message_id)
        outcomes.append(outcome.value if outcome is not None else None)
    return outcomes


def _deliver(
    database: InvoiceDatabase,
    message_id: uuid.UUID,
    payload: dict[str, Any],
    policy: DeliveryPolicy,
    first_delivery: bool,
) -> str:
    deliveries = 1
    if not first_delivery:
        with database.session() as session:
            first = 2 if policy.first_delivery_uncounted else 1
            deliveries = count_delivery(session, message_id, first)
            if deliveries > policy.max_deliveries and not is_processed(session, message_id):
                reason = (
                    f"delivered {deliveries} times without completing (worker lost or timed out each time)"
                )
                return _park(database, message_id, payload, reason, deliveries)
    try:
        outcome = invoice_payload(database, message_id, payload)
    except PERMANENT_ERRORS as exc:
        return _park(database, message_id, payload, f"{type(exc).__name__}: {exc}", deliveries)
    except DATABASE_ERRORS:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if deliveries >= policy.max_deliveries:
            return _park(database, message_id, payload, reason, deliveries)
        log.warning("invoice.failed_will_retry", deliveries=deliveries, error=reason)
        raise RetryLater(policy.backoff(deliveries), reason) from exc
    if first_delivery and outcome == Outcome.DUPLICATE_MESSAGE:
        _count_copy(database, message_id)
    return outcome


def _count_copy(database: InvoiceDatabase, message_id: uuid.UUID) -> None:
    """A 'first' delivery of a message the inbox already holds was a copy (a relay republished it):
    count it after the fact, so the delivery count still says the message came more than once."""
    try:
        with database.session() as session:
            count_delivery(session, message_id, first=2)
    except DATABASE_ERRORS as exc:  # bookkeeping only: the delivery itself is settled
        log.warning("invoice.copy_not_counted", error=_describe(exc))


def _describe(exc: Exception) -> str:
    detail = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"invoice database trouble: {type(exc).__name__}: {str(detail).strip()}"


def handle_order_placed(
    database: InvoiceDatabase,
    message_id: uuid.UUID,
    payload: dict[str, Any],
    retries: int,
    policy: DeliveryPolicy,
    *,
    first_delivery: bool = False,
) -> str:
    """Process one delivery; return the outcome (invoiced or dead-lettered) or raise ``RetryLater``.

    Deliveries are counted in the invoice database before the work starts, which bounds every kind of
    failure (exceptions, and crashes that leave no other trace); ``first_delivery`` (see
    ``DeliveryPolicy.is_first_delivery``) skips the count for a delivery nothing can have preceded.
    Database trouble cannot be counted there, so it is bounded by ``retries``; after that the message
    is parked if the database can take it, and otherwise kept in the broker at the longest backoff:
    never dropped. Anything else that escapes is the task's to keep (see ``invoice_worker.tasks``).
    """
    try:
        return _deliver(database, message_id, payload, policy, first_delivery)
    except DATABASE_ERRORS as exc:
        reason = _describe(exc)
        log.warning("invoice.database_trouble", retries=retries, error=reason)
        if retries < policy.max_retries:
            raise RetryLater(policy.backoff(retries + 1), reason) from exc
        try:
            return _park(database, message_id, payload, reason, retries + 1)
        except DATABASE_ERRORS as park_error:
            log.warning("invoice.dead_letter_refused", retries=retries, error=_describe(park_error))
            raise RetryLater(policy.backoff_max, reason) from exc
