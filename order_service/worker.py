"""The ``celery -A order_service.worker worker -Q orders`` target: the consumer of ``invoice.created``.

A plain SQLAlchemy engine on ``ORDERS_DATABASE_URL`` (no Flask app), created on first use and
dropped after fork. The task is a thin adapter; ``deliver`` decides, and ``inbox`` applies.

A delivery ends in exactly one of three ways: the answer is applied (or was already), the message
is parked in ``dead_letters`` (it can never apply), or it is retried later / put back in the
queue. No path acknowledges a message that has neither effect nor dead letter: every database
error is retried. A message lost anyway (the broker's fault) costs nothing for good: its
``order.placed`` stays unacknowledged, the order relay re-drives it, and the invoice side answers
again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from celery import Celery, Task
from celery.signals import setup_logging, worker_process_init
from flask_outbox.backoff import jittered_backoff
from flask_outbox.batches import SPLIT, BatchItem, batch_items, has_repeats, is_first_delivery, split
from flask_outbox.broker import worker_broker_config
from flask_outbox.logs import configure_logging
from flask_outbox.task_retry import retry_or_requeue
from flask_outbox.worker_db import WorkerDatabase
from flask_outbox.worker_metrics import instrument_worker
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from order_service.inbox import (
    InvalidAnswer,
    UnknownOrder,
    prune_processed,
    record_dead_letter,
    record_invoice,
    record_invoices,
)
from shared.config import Settings
from shared.contracts import (
    INVOICE_CREATED,
    ROUTES,
    InvoiceCreated,
    UnsupportedSchemaVersion,
    parse_invoice_created,
)

__all__ = [
    "BATCH_TASK_NAME",
    "TASK_NAME",
    "DeliveryPolicy",
    "OrdersDatabase",
    "RetryLater",
    "app",
    "apply_batch",
    "deliver",
    "invoice_created",
    "invoice_created_batch",
]

log = structlog.get_logger(__name__)

TASK_NAME = ROUTES[INVOICE_CREATED].task
BATCH_TASK_NAME = ROUTES[INVOICE_CREATED].batch_task or f"{TASK_NAME}_batch"
DEAD_LETTERED = "dead-lettered"
PERMANENT_ERRORS = (ValidationError, UnsupportedSchemaVersion, UnknownOrder, InvalidAnswer)
"""The answer itself is wrong: no retry can help."""

PRUNE_MAX_BATCHES = 20
"""Inbox batches deleted per prune round (``INBOX_PRUNE_BATCH`` rows each, one short transaction each)."""


class OrdersDatabase(WorkerDatabase):
    """The orders database for the consumer (a plain engine, no Flask app)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.orders_database_url)


class RetryLater(Exception):
    """Try the delivery again after ``countdown`` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_retries: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    inbox_retention: timedelta = timedelta(days=30)
    inbox_prune_interval: float = 300.0
    inbox_prune_batch: int = 5_000
    apply_batches: bool = True
    """Apply a batch's first delivery at once: only where the broker flags redeliveries (Redis), so a
    batch that killed its worker comes back marked and is split (``flask_outbox.batches``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            max_retries=settings.worker_max_retries,
            backoff_base=settings.worker_retry_backoff,
            backoff_max=settings.worker_retry_backoff_max,
            inbox_retention=timedelta(seconds=settings.inbox_retention_seconds),
            inbox_prune_interval=settings.inbox_prune_interval,
            inbox_prune_batch=settings.inbox_prune_batch,
            apply_batches=not settings.uses_embedded_broker,
        )

    def backoff(self, attempt: int) -> float:
        return jittered_backoff(attempt, self.backoff_base, self.backoff_max)


Sessions = Callable[[], Session]


def _park(sessions: Sessions, message_id: uuid.UUID, payload: Any, reason: str, attempts: int) -> str:
    with sessions() as session:
        record_dead_letter(session, message_id, TASK_NAME, payload, reason, attempts)
    return DEAD_LETTERED


def _apply(sessions: Sessions, message_id: uuid.UUID, payload: Any) -> str:
    if not isinstance(payload, dict):
        raise InvalidAnswer(f"payload is a {type(payload).__name__}, not an object")
    event = parse_invoice_created(payload)
    with sessions() as session:
        return record_invoice(session, message_id, event).value


def deliver(
    sessions: Sessions, message_id: uuid.UUID, payload: Any, retries: int, policy: DeliveryPolicy
) -> str:
    """Apply one delivery; return the outcome, or raise ``RetryLater``.

    Invalid answers are parked at once. Database errors (any ``DBAPIError``: unreachable,
    read-only, a timeout) and unclassified failures retry with backoff up to ``max_retries``, then
    are parked if the database takes the dead letter, else kept at the longest backoff: never dropped.
    """
    try:
        return _apply(sessions, message_id, payload)
    except PERMANENT_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        countdown = policy.backoff(retries + 1)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc.orig if isinstance(exc, DBAPIError) else exc}".strip()
        if isinstance(exc, DBAPIError):
            log.warning("order.database_unavailable", retries=retries, error=reason)
        else:
            log.exception("order.invoice_failed", retries=retries)
        if retries < policy.max_retries:
            raise RetryLater(policy.backoff(retries + 1), reason) from exc
        countdown = policy.backoff_max
    try:
        return _park(sessions, message_id, payload, reason, retries + 1)
    except DBAPIError as exc:
        raise RetryLater(countdown, f"{reason}; dead letter not written: {exc.orig}") from exc


def _parsed(payload: Any) -> InvoiceCreated | None:
    """The answer, or ``None`` for one that can never apply (the single task parks it)."""
    if not isinstance(payload, dict):
        return None
    try:
        return parse_invoice_created(payload)
    except (ValidationError, UnsupportedSchemaVersion):
        return None


def apply_batch(sessions: Sessions, items: list[BatchItem]) -> list[str | None]:
    """A batch's first delivery: apply every valid answer in one transaction (``record_invoices``).

    Returns an outcome per item; ``None`` for one left to the single task (it can never apply: the
    single task parks it). Any exception means nothing committed; the caller splits the batch.
    """
    events = [_parsed(item.payload) for item in items]
    valid = [(item, event) for item, event in zip(items, events, strict=True) if event is not None]
    if not valid:
        return [None] * len(items)
    with sessions() as session:
        recorded = iter(record_invoices(session, valid))
    return [
        (outcome.value if (outcome := next(recorded)) is not None else None) if event is not None else None
        for event in events
    ]


def _message_id(task_id: str | None) -> uuid.UUID:
    """The relay sends the outbox ``message_id`` as the task id; anything else still gets a stable key."""
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"task:{task_id}")


settings = Settings()
database = OrdersDatabase(settings)
POLICY = DeliveryPolicy.from_settings(settings)

app = Celery("order_service.worker")
app.conf.update(
    worker_broker_config(settings),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=settings.queue(ROUTES[INVOICE_CREATED].queue),
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
# On worker start: /metrics, /healthz, /readyz on WORKER_METRICS_PORT, correlation ids in logs, tracing.
instrument_worker("order-consumer", settings, settings.orders_database_url)


@setup_logging.connect  # type: ignore[untyped-decorator]  # celery ships no type hints
def _configure_logging(**_: Any) -> None:
    configure_logging(settings.log_level, settings.log_format)


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery ships no type hints
def _reset_database_after_fork(**_: Any) -> None:
    database.after_fork()


class _InboxPruner:
    """Keeps the inbox bounded (``INBOX_RETENTION_SECONDS``), every ``INBOX_PRUNE_INTERVAL`` per process."""

    def __init__(self) -> None:
        self._next = 0.0

    def __call__(self) -> None:
        """A failure here never fails a delivery: the next round tries again."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + POLICY.inbox_prune_interval
        pruned = 0
        try:
            for _ in range(PRUNE_MAX_BATCHES):
                with database.session() as session:
                    deleted = prune_processed(
                        session, older_than=POLICY.inbox_retention, batch=POLICY.inbox_prune_batch
                    )
                pruned += deleted
                if deleted < POLICY.inbox_prune_batch:
                    break
        except DBAPIError as exc:
            log.warning("order.inbox_prune_failed", error=str(exc.orig))
        if pruned:
            log.info("order.inbox_pruned", rows=pruned)


_prune_when_due = _InboxPruner()


# max_retries=None: the bounds live in DeliveryPolicy, which keeps a message rather than let Celery drop it.
@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]  # celery ships no type hints
def invoice_created(self: Task, payload: Any) -> str:
    """Move the order to ``invoiced`` and acknowledge its ``order.placed``; duplicates are no-ops."""
    order_id = payload.get("order_id") if isinstance(payload, dict) else None
    structlog.contextvars.bind_contextvars(message_id=self.request.id, order_id=order_id)
    try:
        try:
            outcome = deliver(
                database.session, _message_id(self.request.id), payload, self.request.retries, POLICY
            )
        except RetryLater as exc:
            retry_or_requeue(self, exc, exc.countdown, "order.invoice")
        except Exception as exc:  # unclassified, outside deliver: a bug is no reason to drop the answer
            log.exception("order.invoice_unexpected_error", retries=self.request.retries)
            retry_or_requeue(self, exc, POLICY.backoff(self.request.retries + 1), "order.invoice")
        _prune_when_due()
        return outcome
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name=BATCH_TASK_NAME, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]  # celery ships no type hints
def invoice_created_batch(self: Task, messages: Any) -> list[str]:
    """Apply several answers in one transaction, or split them into single tasks (``flask_outbox.batches``).

    The fast path runs on the batch's first delivery only; a redelivery, a retry or any failure
    splits. Returns an outcome per message, in order (``split`` for those handed to ``invoice_created``).
    """
    items = batch_items(messages, str(self.request.id))
    try:
        if not (POLICY.apply_batches and is_first_delivery(self)) or has_repeats(items):
            return split(self, items, TASK_NAME, "redelivered, retried or repeated")
        try:
            outcomes = apply_batch(database.session, items)
        except Exception as exc:  # whatever it was, each message gets the single task's rules
            log.warning(
                "order.invoice_batch_failed", messages=len(items), error=f"{type(exc).__name__}: {exc}"
            )
            return split(self, items, TASK_NAME, type(exc).__name__)
        left = [item for item, outcome in zip(items, outcomes, strict=True) if outcome is None]
        if left:
            split(self, left, TASK_NAME, "cannot apply here")
        _prune_when_due()
        return [outcome or SPLIT for outcome in outcomes]
    finally:
        structlog.contextvars.clear_contextvars()
