"""Celery tasks from a ``Consumer``: thin adapters from a delivery to ``flask_outbox.consumer``.

Each topic gets two tasks, named by its ``Route``: the single-message task and the batch task
(``flask_outbox.batches``). A single delivery ends in exactly one of three ways: a result (applied,
duplicate, or parked as a dead letter), ``Retry`` after the retry message was published, or
``Reject(requeue=True)``. Nothing else may escape: with ``acks_late`` Celery removes the message of a
task that raised (see ``flask_outbox.task_retry``), which would lose it for good.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from celery import Celery, Task

from flask_outbox.batches import SPLIT, batch_items, has_repeats, is_first_delivery, split
from flask_outbox.consumer import Consumer, RetryLater
from flask_outbox.signing import SIGNATURE_HEADER
from flask_outbox.task_retry import retry_or_requeue

__all__ = ["register_tasks"]

log = structlog.get_logger(__name__)

M = TypeVar("M")


def _message_id(task_id: str | None) -> uuid.UUID:
    """The relay sends the outbox ``message_id`` as the task id; anything else still gets a stable key."""
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"task:{task_id}")


def _context(payload: Any) -> dict[str, Any]:
    """What a delivery's log lines carry besides the message id: the payload's ``*_id`` fields."""
    if not isinstance(payload, dict):
        return {}
    return {key: value for key, value in payload.items() if key.endswith("_id") and isinstance(value, str)}


def register_tasks(
    app: Celery, consumer: Consumer[M], batch_task: str | None, after_delivery: Callable[[], object]
) -> None:
    """Register ``consumer`` as ``consumer.task_name`` (one message) and ``batch_task`` (several)."""
    policy, event = consumer.policy, consumer.handler.topic

    # max_retries=None: the bounds live in DeliveryPolicy, which may keep a message at the longest backoff
    # rather than let Celery drop it. shared=False: the task is this app's alone; a shared task (Celery's
    # default) is added to every app in the process, so a second worker's route would reach this consumer.
    @app.task(name=consumer.task_name, bind=True, acks_late=True, max_retries=None, shared=False)  # type: ignore[untyped-decorator]  # celery ships no type hints
    def single(self: Task, payload: Any) -> str:
        structlog.contextvars.bind_contextvars(message_id=self.request.id, **_context(payload))
        try:
            retries = self.request.retries
            redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
            try:
                return consumer.receive(
                    _message_id(self.request.id),
                    payload,
                    getattr(self.request, SIGNATURE_HEADER, None),  # a message header is a request attribute
                    retries,
                    first_delivery=policy.is_first_delivery(retries, redelivered),
                )
            except RetryLater as exc:
                reason: Exception = exc
                countdown = exc.countdown
            except Exception as exc:  # a failure no rule classifies: a bug is no reason to lose the message
                log.exception("inbox.unexpected_error", retries=retries)
                reason, countdown = exc, policy.backoff(retries + 1)
            retry_or_requeue(self, reason, countdown, "inbox")
        finally:
            structlog.contextvars.clear_contextvars()
            after_delivery()

    if batch_task is None:
        return

    @app.task(name=batch_task, bind=True, acks_late=True, max_retries=None, shared=False)  # type: ignore[untyped-decorator]  # celery ships no type hints
    def batch(self: Task, messages: Any) -> list[str]:
        """Apply several messages in one transaction on their first delivery, or split them.

        The fast path runs only where the broker flags redeliveries; everything else, and any
        failure, splits into single tasks. Returns an outcome per message (``split`` for those split).
        """
        items = batch_items(messages, str(self.request.id))
        try:
            if not (policy.first_delivery_uncounted and is_first_delivery(self)) or has_repeats(items):
                return split(self, items, consumer.task_name, "redelivered, retried or repeated")
            message_ids = [str(item.message_id) for item in items]
            # A delivery of each message starts and ends here, as Celery's own lines say for a single task:
            # a worker killed between the commit and the per-message lines leaves a start with no end.
            log.info("inbox.batch_received", topic=event, message_ids=message_ids)
            outcomes: list[str | None]
            try:
                outcomes = consumer.apply_batch(items)
            except Exception as exc:  # whatever it was, each message gets the single task's rules
                log.warning("inbox.batch_failed", messages=len(items), error=f"{type(exc).__name__}: {exc}")
                outcomes = list(split(self, items, consumer.task_name, type(exc).__name__))
            else:
                left = [item for item, outcome in zip(items, outcomes, strict=True) if outcome is None]
                if left:
                    split(self, left, consumer.task_name, "left to the single task")
            log.info("inbox.batch_settled", topic=event, message_ids=message_ids)
            return [outcome or SPLIT for outcome in outcomes]
        finally:
            structlog.contextvars.clear_contextvars()
            after_delivery()
