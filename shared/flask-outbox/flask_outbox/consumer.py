"""The idempotent consumer: one delivery applied, retried later, or parked as a dead letter.

A service gives a ``Handler``: how to read a payload (its contract) and how to apply one message
(or a batch) to its database, in the transaction the consumer opens, right after the message id
was recorded in the inbox. The consumer owns everything else: the inbox, delivery counts, retries
with backoff, dead letters and their replay. ``flask_outbox.tasks`` registers it as Celery tasks.

A message from the broker is first checked for the relay's signature (``receive``; a batch's entries
in ``apply_batch``): one that does not verify never reaches the inbox or the handler and is parked as
a dead letter whose reason starts ``bad signature``. ``deliver`` and ``apply`` take a message the
caller trusts (a verified one, or an operator's replay).

A delivery ends in exactly one of three ways: the effect is committed (or was already: a duplicate),
the message is parked as a dead letter (it can never succeed), or ``RetryLater`` (the caller puts it
back). Deliveries are counted in the database before the work starts, which bounds every kind of
failure, crashes included; database trouble cannot be counted there, so it is bounded by the retry
count, and a message the database refuses to park is kept in the broker at the longest backoff:
never dropped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from flask_outbox.backoff import jittered_backoff
from flask_outbox.batches import BatchItem, message_context
from flask_outbox.inbox import InboxTables
from flask_outbox.logs import CORRELATION_ID
from flask_outbox.settings import OutboxSettings
from flask_outbox.signing import BAD_SIGNATURE, SIGNATURE_HEADER, MessageSigner
from flask_outbox.worker_db import WorkerDatabase
from flask_outbox.writer import one_insert

__all__ = [
    "DATABASE_ERRORS",
    "DEAD_LETTERED",
    "DUPLICATE",
    "Consumer",
    "Delivery",
    "DeliveryPolicy",
    "Handler",
    "InvalidMessage",
    "RetryLater",
    "batch_json",
]

log = structlog.get_logger(__name__)

M = TypeVar("M")

DEAD_LETTERED = "dead-lettered"
DUPLICATE = "duplicate-message"

DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout)
"""Trouble with the consumer's database, not with the message: unreachable or dropped, read-only after
a failover, a schema in mid-migration, a pool timeout. None says the message is bad: each is retried."""


class InvalidMessage(ValueError):
    """The message can never apply as it is (a handler raises it, or a subclass, to park it)."""


class RetryLater(Exception):
    """The delivery should be tried again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Delivery(Generic[M]):
    """One message, read: its id (the dedup key), its contract object and the payload it came as."""

    message_id: uuid.UUID
    message: M
    payload: dict[str, Any]
    correlation_id: str | None = None

    @contextmanager
    def context(self) -> Iterator[None]:
        """Log lines, and outbox rows written meanwhile, carry this message's ids (for a batch's parts)."""
        context: dict[str, Any] = {"message_id": str(self.message_id)}
        if self.correlation_id:
            context[CORRELATION_ID] = self.correlation_id
        with structlog.contextvars.bound_contextvars(**context):
            yield


@dataclass(frozen=True, slots=True)
class Handler(Generic[M]):
    """What a service gives the consumer for one topic.

    ``parse`` reads a payload into the contract (raising pydantic's ``ValidationError``, or one of
    ``permanent``, for one that can never apply). ``apply`` makes the effect in the session's
    transaction and returns an outcome name; it never commits, and raises ``InvalidMessage`` (or one
    of ``permanent``) for a message that can never apply. ``apply_batch`` (optional) does the same
    for many fresh messages at once and returns an outcome per message, ``None`` for one it leaves to
    ``apply``. ``on_duplicate`` (optional) runs, in a transaction of its own, for a message the
    inbox already holds.
    """

    topic: str
    parse: Callable[[dict[str, Any]], M]
    apply: Callable[[Session, Delivery[M]], str]
    apply_batch: Callable[[Session, Sequence[Delivery[M]]], list[str | None]] | None = None
    on_duplicate: Callable[[Session, Delivery[M]], None] | None = None
    permanent: tuple[type[Exception], ...] = ()

    @property
    def permanent_errors(self) -> tuple[type[Exception], ...]:
        return (InvalidMessage, ValidationError, *self.permanent)

    def read(self, message_id: uuid.UUID, payload: Any, correlation_id: str | None = None) -> Delivery[M]:
        if not isinstance(payload, dict):
            raise InvalidMessage(f"payload is a {type(payload).__name__}, not an object")
        return Delivery(message_id, self.parse(payload), payload, correlation_id)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are bounded.

    ``first_delivery_uncounted``: the broker flags every redelivery (Redis: kombu marks a message
    ``redelivered`` whenever it restores one), so a message's first delivery need not commit a count
    before its work: if it kills the worker, it comes back flagged and is counted then, starting at 2.
    The bound on poison stays exactly ``max_deliveries``; the common case saves a commit. Off for
    brokers that do not flag redeliveries (the embedded file broker): there every delivery is counted.
    """

    max_retries: int = 8
    max_deliveries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    first_delivery_uncounted: bool = False

    @classmethod
    def from_settings(cls, settings: OutboxSettings) -> DeliveryPolicy:
        """The settings' policy, with retry countdowns capped at half the visibility timeout.

        A countdown retry is a new message that a worker reserves at once and holds unacknowledged
        until it is due; held past the visibility timeout, Redis restores a second copy. Half the
        timeout leaves room for the task's own run.
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


def batch_json(batch: Sequence[Delivery[Any]]) -> str:
    """A batch as one JSON array for a set-based statement (Postgres ``jsonb_to_recordset``): each
    message's payload, with its ``position`` in the batch and its ``message_id``."""
    return json.dumps(
        [
            {**delivery.payload, "position": position, "message_id": str(delivery.message_id)}
            for position, delivery in enumerate(batch)
        ]
    )


def describe(exc: BaseException) -> str:
    """An error as one line, the driver's message rather than SQLAlchemy's wrapper."""
    detail = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(exc).__name__}: {str(detail).strip()}"


@dataclass
class Consumer(Generic[M]):
    """Applies one topic's deliveries exactly once in effect, on one database."""

    handler: Handler[M]
    database: WorkerDatabase
    inbox: InboxTables
    policy: DeliveryPolicy
    task_name: str
    signer: MessageSigner

    def _signed(self, message_id: uuid.UUID, payload: Any, signature: object) -> bool:
        return self.signer.verifies(message_id, self.handler.topic, payload, signature)

    def _park(self, message_id: uuid.UUID, payload: Any, reason: str, attempts: int) -> str:
        with self.database.session() as session:
            self.inbox.park(session, message_id, self.task_name, payload, reason, attempts)
        return DEAD_LETTERED

    def apply(self, message_id: uuid.UUID, payload: Any) -> str:
        """Read and apply one message in one transaction with its inbox row; the outcome's name.

        Raises one of the handler's permanent errors for a message that can never apply (nothing of
        it is written), anything else for trouble worth retrying.
        """
        delivery = self.handler.read(message_id, payload)
        with self.database.session() as session:
            if not self.inbox.record(session, message_id, self.handler.topic):
                session.rollback()
                log.info("inbox.duplicate_message", message_id=str(message_id))
                self._on_duplicate(session, delivery)
                return DUPLICATE
            outcome = self.handler.apply(session, delivery)
            session.commit()
            return outcome

    def _on_duplicate(self, session: Session, delivery: Delivery[M]) -> None:
        if self.handler.on_duplicate is not None:
            self.handler.on_duplicate(session, delivery)
            session.commit()

    def deliver(
        self, message_id: uuid.UUID, payload: Any, retries: int, *, first_delivery: bool = False
    ) -> str:
        """Process one delivery: the outcome (applied, duplicate, dead-lettered), or raise ``RetryLater``.

        ``first_delivery`` (``DeliveryPolicy.is_first_delivery``) skips the count for a delivery
        nothing can have preceded. Database trouble is bounded by ``retries``; after that the message
        is parked if the database takes it, else kept in the broker at the longest backoff.
        """
        return self._bounded(
            message_id, payload, retries, lambda: self._deliver(message_id, payload, first_delivery)
        )

    def receive(
        self,
        message_id: uuid.UUID,
        payload: Any,
        signature: object,
        retries: int,
        *,
        first_delivery: bool = False,
    ) -> str:
        """``deliver`` a message from the broker whose signature verifies; park any other, applying nothing.

        A refused message writes nothing but its dead letter: no inbox row, no delivery count, no effect.
        """
        if self._signed(message_id, payload, signature):
            return self.deliver(message_id, payload, retries, first_delivery=first_delivery)
        reason = (
            f"{BAD_SIGNATURE}: no valid {SIGNATURE_HEADER} header for this message's id, topic and payload"
        )
        return self._bounded(
            message_id, payload, retries, lambda: self._park(message_id, payload, reason, retries + 1)
        )

    def _bounded(self, message_id: uuid.UUID, payload: Any, retries: int, work: Callable[[], str]) -> str:
        """``work``'s outcome; database trouble retried up to ``retries``, then the message parked or kept."""
        try:
            return work()
        except DATABASE_ERRORS as exc:
            reason = f"database trouble: {describe(exc)}"
            log.warning("inbox.database_trouble", retries=retries, error=reason)
            if retries < self.policy.max_retries:
                raise RetryLater(self.policy.backoff(retries + 1), reason) from exc
            try:
                return self._park(message_id, payload, reason, retries + 1)
            except DATABASE_ERRORS as park_error:
                log.warning("inbox.dead_letter_refused", retries=retries, error=describe(park_error))
                raise RetryLater(self.policy.backoff_max, reason) from exc

    def _deliver(self, message_id: uuid.UUID, payload: Any, first_delivery: bool) -> str:
        deliveries = 1
        if not first_delivery:
            with self.database.session() as session:
                first = 2 if self.policy.first_delivery_uncounted else 1
                deliveries = self.inbox.count_delivery(session, message_id, first)
                if deliveries > self.policy.max_deliveries and not self.inbox.is_processed(
                    session, message_id
                ):
                    reason = (
                        f"delivered {deliveries} times without completing "
                        "(worker lost or timed out each time)"
                    )
                    return self._park(message_id, payload, reason, deliveries)
        try:
            outcome = self.apply(message_id, payload)
        except DATABASE_ERRORS:
            raise
        except self.handler.permanent_errors as exc:
            return self._park(message_id, payload, f"{type(exc).__name__}: {exc}", deliveries)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if deliveries >= self.policy.max_deliveries:
                return self._park(message_id, payload, reason, deliveries)
            log.warning("inbox.failed_will_retry", deliveries=deliveries, error=reason)
            raise RetryLater(self.policy.backoff(deliveries), reason) from exc
        if first_delivery and outcome == DUPLICATE:
            self._count_copy(message_id)
        return outcome

    def _count_copy(self, message_id: uuid.UUID) -> None:
        """A 'first' delivery of a message the inbox already holds was a copy (a relay republished it):
        count it after the fact, so the delivery count still says the message came more than once."""
        try:
            with self.database.session() as session:
                self.inbox.count_delivery(session, message_id, first=2)
        except DATABASE_ERRORS as exc:  # bookkeeping only: the delivery itself is settled
            log.warning("inbox.copy_not_counted", error=describe(exc))

    def _read(self, item: BatchItem) -> Delivery[M] | None:
        if not self._signed(item.message_id, item.payload, item.headers.get(SIGNATURE_HEADER)):
            return None  # the single task it is split into parks it
        try:
            return self.handler.read(item.message_id, item.payload, item.correlation_id)
        except self.handler.permanent_errors:
            return None

    def apply_batch(self, items: Sequence[BatchItem]) -> list[str | None]:
        """A batch's first delivery: apply every message it can in one transaction.

        Returns an outcome per item; ``None`` for one left to the single task (badly signed, unreadable,
        or one the handler's batch path did not apply: nothing of it is written). Any exception means
        nothing of the transaction committed; the caller splits the batch. Duplicates get
        ``on_duplicate`` each in a transaction of its own after the commit, and each is counted as a
        copy (``_count_copy``).
        No other delivery is counted: a batch that kills its worker comes back flagged as redelivered
        and is split, each message counted from there.
        """
        deliveries = [self._read(item) for item in items]
        readable = [delivery for delivery in deliveries if delivery is not None]
        outcomes: dict[uuid.UUID, str | None] = {}
        if readable:
            with self.database.session() as session:
                ids = [delivery.message_id for delivery in readable]
                fresh_ids = self.inbox.record_many(session, ids, self.handler.topic)
                fresh = [delivery for delivery in readable if delivery.message_id in fresh_ids]
                applied = self._apply_fresh(session, fresh)
                self.inbox.forget(session, [mid for mid, outcome in applied.items() if outcome is None])
                session.commit()
            outcomes.update(applied)
            for delivery in readable:
                if delivery.message_id not in fresh_ids:
                    outcomes[delivery.message_id] = DUPLICATE
                    self._duplicate_after_batch(items, delivery)
                    self._count_copy(delivery.message_id)  # a batch is a first delivery: a copy counts
        return [
            outcomes.get(item.message_id) if delivery else None
            for item, delivery in zip(items, deliveries, strict=True)
        ]

    def _apply_fresh(self, session: Session, fresh: list[Delivery[M]]) -> dict[uuid.UUID, str | None]:
        if not fresh:
            return {}
        with one_insert(session):  # the messages the batch's receivers add: one INSERT
            if self.handler.apply_batch is not None:
                results = self.handler.apply_batch(session, fresh)
                return {delivery.message_id: result for delivery, result in zip(fresh, results, strict=True)}
            return {delivery.message_id: self.handler.apply(session, delivery) for delivery in fresh}

    def _duplicate_after_batch(self, items: Sequence[BatchItem], delivery: Delivery[M]) -> None:
        item = next(item for item in items if item.message_id == delivery.message_id)
        with message_context(item):
            log.info("inbox.duplicate_message")
            if self.handler.on_duplicate is not None:
                with self.database.session() as session:
                    self._on_duplicate(session, delivery)
