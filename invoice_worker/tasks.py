"""Celery tasks: thin adapters from a delivery to ``invoicing``."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Task
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from invoice_worker.celery_app import app, database, settings
from invoice_worker.invoicing import create_invoice, record_dead_letter
from shared.contracts import ORDER_PLACED, ROUTES, UnsupportedSchemaVersion, parse_order_placed

__all__ = ["order_placed"]

log = structlog.get_logger(__name__)

TASK_NAME = ROUTES[ORDER_PLACED].task


@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=settings.worker_max_retries)
def order_placed(self: Task, payload: dict[str, Any]) -> str:
    """Invoice one placed order; duplicates are no-ops, poison goes to the dead letters."""
    message_id = uuid.UUID(self.request.id)
    attempts = self.request.retries + 1
    structlog.contextvars.bind_contextvars(message_id=str(message_id), order_id=payload.get("order_id"))
    try:
        try:
            event = parse_order_placed(payload)
        except (ValidationError, UnsupportedSchemaVersion) as exc:
            with database.session() as session:
                record_dead_letter(session, message_id, TASK_NAME, payload, str(exc), attempts)
            return "dead-lettered"
        try:
            with database.session() as session:
                return create_invoice(session, message_id, event).value
        except OperationalError as exc:
            log.warning("invoice.database_unavailable", attempts=attempts, error=str(exc.orig))
            raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc
    finally:
        structlog.contextvars.clear_contextvars()
