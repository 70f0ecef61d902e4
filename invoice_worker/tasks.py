"""Celery tasks: thin adapters from a delivery to ``processing``."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Task

from invoice_worker.celery_app import app, database, settings
from invoice_worker.processing import TASK_NAME, DeliveryPolicy, RetryLater, handle_order_placed

__all__ = ["order_placed"]

log = structlog.get_logger(__name__)

POLICY = DeliveryPolicy.from_settings(settings)


# max_retries=None: the bounds live in DeliveryPolicy, which may keep a message at the longest backoff
# rather than let Celery drop it.
@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=None)
def order_placed(self: Task, payload: dict[str, Any]) -> str:
    """Invoice one placed order; duplicates are no-ops, poison goes to the dead letters."""
    message_id = uuid.UUID(self.request.id)
    order_id = payload.get("order_id") if isinstance(payload, dict) else None
    structlog.contextvars.bind_contextvars(message_id=str(message_id), order_id=order_id)
    try:
        return handle_order_placed(database, message_id, payload, self.request.retries, POLICY)
    except RetryLater as exc:
        log.info("invoice.retry_scheduled", countdown=round(exc.countdown, 2), retries=self.request.retries)
        raise self.retry(exc=exc, countdown=exc.countdown) from exc
    finally:
        structlog.contextvars.clear_contextvars()
