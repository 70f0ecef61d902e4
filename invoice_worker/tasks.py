"""Celery tasks: thin adapters from a delivery to ``processing``."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Task
from flask_outbox.batches import SPLIT, batch_items, has_repeats, is_first_delivery, split
from flask_outbox.task_retry import retry_or_requeue

from invoice_worker.celery_app import app, database, settings
from invoice_worker.processing import (
    BATCH_TASK_NAME,
    TASK_NAME,
    DeliveryPolicy,
    RetryLater,
    handle_order_placed,
    invoice_batch,
)
from invoice_worker.retention import InboxPruner

__all__ = ["order_placed", "order_placed_batch"]

log = structlog.get_logger(__name__)

POLICY = DeliveryPolicy.from_settings(settings)
INBOX_PRUNER = InboxPruner.from_settings(settings, database)


# max_retries=None: the bounds live in DeliveryPolicy, which may keep a message at the longest backoff
# rather than let Celery drop it.
@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]  # celery ships no type hints
def order_placed(self: Task, payload: dict[str, Any]) -> str:
    """Invoice one placed order; duplicates are no-ops, poison goes to the dead letters.

    A delivery ends in exactly one of three ways: a result (the invoice exists, or the message is
    parked as a dead letter), ``Retry`` after the retry message was published, or
    ``Reject(requeue=True)``. Nothing else may escape: with ``acks_late`` Celery removes the message
    of a task that raised (see ``flask_outbox.task_retry``), which would lose the order for good.
    """
    order_id = payload.get("order_id") if isinstance(payload, dict) else None
    structlog.contextvars.bind_contextvars(message_id=self.request.id, order_id=order_id)
    try:
        try:
            retries = self.request.retries
            redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
            return handle_order_placed(
                database,
                uuid.UUID(self.request.id),
                payload,
                retries,
                POLICY,
                first_delivery=POLICY.is_first_delivery(retries, redelivered),
            )
        except RetryLater as exc:
            reason: Exception = exc
            countdown = exc.countdown
        except Exception as exc:  # a failure no rule classifies: a bug is no reason to lose the order
            log.exception("invoice.unexpected_error", retries=self.request.retries)
            reason, countdown = exc, POLICY.backoff(self.request.retries + 1)
        retry_or_requeue(self, reason, countdown, "invoice")
    finally:
        structlog.contextvars.clear_contextvars()
        INBOX_PRUNER.prune_when_due()


@app.task(name=BATCH_TASK_NAME, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]  # celery ships no type hints
def order_placed_batch(self: Task, messages: Any) -> list[str]:
    """Invoice several placed orders in one transaction, or split them into single tasks.

    The fast path runs on the batch's first delivery only, and only where the broker flags
    redeliveries; everything else, and any failure, splits (``flask_outbox.batches``). Returns an outcome
    per message, in order (``split`` for those handed to ``order_placed``).
    """
    items = batch_items(messages, str(self.request.id))
    try:
        if not (POLICY.first_delivery_uncounted and is_first_delivery(self)) or has_repeats(items):
            return split(self, items, TASK_NAME, "redelivered, retried or repeated")
        message_ids = [str(item.message_id) for item in items]
        # A delivery of each message starts and ends here, as Celery's own lines say for a single task:
        # a worker killed between the commit and the per-message lines leaves a start with no end.
        log.info("invoice.batch_received", message_ids=message_ids)
        outcomes: list[str | None]
        try:
            outcomes = invoice_batch(database, items)
        except Exception as exc:  # whatever it was, each message gets the single task's rules
            log.warning("invoice.batch_failed", messages=len(items), error=f"{type(exc).__name__}: {exc}")
            outcomes = list(split(self, items, TASK_NAME, type(exc).__name__))
        else:
            invalid = [item for item, outcome in zip(items, outcomes, strict=True) if outcome is None]
            if invalid:
                split(self, invalid, TASK_NAME, "invalid payload")
        log.info("invoice.batch_settled", message_ids=message_ids)
        return [outcome or SPLIT for outcome in outcomes]
    finally:
        structlog.contextvars.clear_contextvars()
        INBOX_PRUNER.prune_when_due()
