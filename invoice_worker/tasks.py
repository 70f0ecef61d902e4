"""Celery tasks: thin adapters from a delivery to ``processing``."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Task

from invoice_worker.celery_app import app, database, settings
from invoice_worker.processing import TASK_NAME, DeliveryPolicy, RetryLater, handle_order_placed
from invoice_worker.retention import InboxPruner
from shared.task_retry import retry_or_requeue

__all__ = ["order_placed"]

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
    of a task that raised (see ``shared.task_retry``), which would lose the order for good.
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
