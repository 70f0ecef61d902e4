"""Batch tasks: several outbox messages in one Celery message, applied together or split apart.

A Redis relay packs consecutive messages of one route into one ``Route.batch_task`` message
(``flask_outbox.redis_publisher``): ``messages`` is a list of ``{"message_id", "payload",
"headers"}``. The worker then pays Celery's per-task cost, and its database round trips, once per
batch instead of once per message.

The batch has one fast path and one way out. On its first delivery the worker applies every
message it can in one transaction. Anything else splits it: an error of any kind, a retry, or a
redelivery (which may mean the batch killed a worker). Splitting publishes each message again as
the route's single-message task, with its message id as the task id and its own headers, then
acknowledges the batch. The single task carries every per-message rule (delivery counting, retries,
dead letters), so a batch adds no failure mode of its own: at worst a message arrives once more,
and the inbox absorbs it. If the split cannot be published (the broker is down), the batch is put
back in its queue instead, never acknowledged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject

from flask_outbox.logs import CORRELATION_HEADER, CORRELATION_ID

__all__ = [
    "SPLIT",
    "BatchItem",
    "batch_items",
    "has_repeats",
    "is_first_delivery",
    "message_context",
    "split",
]

log = structlog.get_logger(__name__)

SPLIT = "split"
"""A message's outcome in a batch that was handed to the single-message task."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a batch, as the relay sent it."""

    message_id: uuid.UUID
    payload: Any
    headers: dict[str, Any]

    @property
    def correlation_id(self) -> str | None:
        value = self.headers.get(CORRELATION_HEADER)
        return str(value) if value else None

    def as_entry(self) -> dict[str, Any]:
        return {"message_id": str(self.message_id), "payload": self.payload, "headers": self.headers}


def _item(entry: Any, position: int, batch_id: str) -> BatchItem:
    """A well-formed entry as it is; anything else keeps its payload under a stable made-up id."""
    if isinstance(entry, dict):
        headers = entry.get("headers")
        try:
            message_id = uuid.UUID(str(entry.get("message_id")))
        except ValueError:
            message_id = uuid.uuid5(uuid.NAMESPACE_URL, f"batch:{batch_id}:{position}")
        return BatchItem(message_id, entry.get("payload"), headers if isinstance(headers, dict) else {})
    return BatchItem(uuid.uuid5(uuid.NAMESPACE_URL, f"batch:{batch_id}:{position}"), entry, {})


def batch_items(messages: Any, batch_id: str) -> list[BatchItem]:
    """The batch's messages in order, one item per entry (the task's outcomes line up with them)."""
    entries = messages if isinstance(messages, list) else [messages]
    return [_item(entry, position, batch_id) for position, entry in enumerate(entries)]


def has_repeats(items: list[BatchItem]) -> bool:
    """A message id twice in one batch (no relay sends that): such a batch is split, not applied."""
    return len({item.message_id for item in items}) != len(items)


def is_first_delivery(task: Task) -> bool:
    """The broker's first delivery of the batch, not a retry: the only one that takes the fast path."""
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    return task.request.retries == 0 and not redelivered


@contextmanager
def message_context(item: BatchItem) -> Iterator[None]:
    """Log lines (and outbox rows written meanwhile) carry this message's ids, as in a single task."""
    context: dict[str, Any] = {"message_id": str(item.message_id)}
    if item.correlation_id:
        context[CORRELATION_ID] = item.correlation_id
    with structlog.contextvars.bound_contextvars(**context):
        yield


def split(task: Task, items: list[BatchItem], single_task: str, reason: str) -> list[str]:
    """Publish each item as ``single_task`` on this delivery's queue; the batch may then be acknowledged.

    Raises ``Reject(requeue=True)`` when the broker refuses: the batch goes back to its queue whole
    and is split when it comes back (messages already published meanwhile arrive twice: the inbox
    absorbs them).
    """
    queue = (task.request.delivery_info or {}).get("routing_key") or None
    log.info("batch.split", batch_id=task.request.id, messages=len(items), reason=reason)
    try:
        with task.app.producer_or_acquire() as producer:
            for item in items:
                task.app.send_task(
                    single_task,
                    kwargs={"payload": item.payload},
                    task_id=str(item.message_id),
                    queue=queue,
                    headers=item.headers,
                    producer=producer,
                    retry=False,
                )
    except Exception as exc:  # a broker fault or any other: the batch must not be acknowledged
        log.error("batch.split_not_published", batch_id=task.request.id, error=f"{type(exc).__name__}: {exc}")
        raise Reject(f"split not published: {exc}", requeue=True) from exc
    return [SPLIT] * len(items)
