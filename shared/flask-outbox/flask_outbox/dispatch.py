"""Dispatch after commit: the writer's process publishes its own outbox rows the moment they commit.

The relay's hop (wake on NOTIFY, claim, publish, mark) costs a round of database work per batch and
a few milliseconds per message; for a message nobody else must order against, the process that
committed it can publish it at once, the way a plain ``.delay()`` after ``commit()`` would, while
the outbox keeps the guarantee:

* The row is written in the business transaction as always, but due only ``grace`` seconds later
  (``available_at``). After the commit (never before, never after a rollback) the process pushes
  the message to its queue and its ``message_id`` to a dispatch log list, in one Redis
  ``MULTI``/``EXEC``: both or neither.
* The relay pops the dispatch log and marks those rows published in one UPDATE per chunk
  (``OutboxRelay.mark_dispatched``), before it claims. A row whose dispatch never happened (the
  process died after its commit, Redis refused, a rollback of any savepoint dropped the pending
  list) is still unpublished when its grace ends, and the relay publishes it as any other: a
  message is late by at most ``grace``, never lost. Redis losing the log loses the messages with it,
  and the rows are published again by the relay (consumers dedup; a message consumed before the
  loss arrives twice).
* Per-aggregate order is the price: two processes may publish two messages of one aggregate in
  either order. Only ``topics`` named by the owner are dispatched (``order.placed``: one per order);
  every other row is due at once and left to the relay.

Hand-over under load (``Handover``): the ``LPUSH`` answers with the queue's length. When the
dispatches of a process keep finding ``queue_limit`` or more messages already waiting for
``behind_seconds`` (a backlog, not a passing spike), the workers are behind and a message published
on its own only waits in that queue; the dispatcher then stops dispatching for ``hold_seconds`` and
its writers' rows are due at once, so the relay publishes them, many per batch task
(``flask_outbox.batches``): the workers pay Celery's per-task cost once per batch and catch up. The next
dispatch after the hold reads the length again. A pipeline that keeps up never hands over.

Redis is the only transport: the dispatch log sits beside the queue, in the same transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from flask_outbox.broker import BROKER_ERRORS
from flask_outbox.messages import PendingMessage
from flask_outbox.redis_publisher import RedisPipelinePublisher
from flask_outbox.routes import Route

__all__ = ["AfterCommitDispatcher", "DispatchLog", "Handover", "dispatch_log_key"]

log = structlog.get_logger(__name__)

_PENDING = "outbox.dispatch_after_commit"
"""``session.info`` key: the messages this transaction will dispatch once it commits."""


def dispatch_log_key(queue_prefix: str, table: str) -> str:
    """The Redis list of dispatched message ids for one outbox table (queue prefix included)."""
    return f"{queue_prefix}outbox.dispatched.{table}"


class DispatchLog:
    """The relay's side: message ids dispatched after commit, taken in chunks to be marked published."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._client = client
        self.key = key

    @classmethod
    def from_url(cls, url: str, key: str) -> DispatchLog:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), key)

    def take(self, limit: int) -> list[uuid.UUID]:
        """Up to ``limit`` ids, oldest first, removed from the log (lost if the caller dies: re-published)."""
        raw: Any = self._client.lpop(self.key, limit)
        return [uuid.UUID(value.decode() if isinstance(value, bytes) else str(value)) for value in raw or []]

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class Handover:
    """When a writer leaves its messages to the relay: every dispatch for ``behind_seconds`` found
    ``queue_limit`` or more waiting; then for ``hold_seconds``. ``queue_limit`` 0: never."""

    queue_limit: int = 0
    behind_seconds: float = 0.25
    hold_seconds: float = 2.0


@dataclass
class _Pending:
    dispatcher: AfterCommitDispatcher
    messages: list[PendingMessage] = field(default_factory=list)


class AfterCommitDispatcher:
    """The writer's side: collects a transaction's dispatchable messages and publishes them at commit."""

    def __init__(
        self,
        publisher: RedisPipelinePublisher,
        client: redis.Redis,
        routes: Mapping[str, Route],
        log_key: str,
        topics: frozenset[str],
        grace: float,
        handover: Handover | None = None,
        on_handover: Callable[[], None] | None = None,
    ) -> None:
        self._publisher = publisher
        self._client = client
        self._routes = routes
        self._log_key = log_key
        self.topics = topics
        self.grace = grace
        self.handover = handover or Handover()
        self._on_handover = on_handover
        self._behind_since: float | None = None
        self._handed_over_until = 0.0

    @classmethod
    def from_url(
        cls,
        app: Celery,
        url: str,
        routes: Mapping[str, Route],
        *,
        queue_prefix: str,
        table: str,
        topics: frozenset[str],
        grace: float,
        handover: Handover | None = None,
        on_handover: Callable[[], None] | None = None,
    ) -> AfterCommitDispatcher:
        """Short Redis timeouts: a request waits at most about a second for a broker that hangs."""
        client = redis.Redis.from_url(
            url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=30
        )
        publisher = RedisPipelinePublisher(app, client, routes, queue_prefix)
        key = dispatch_log_key(queue_prefix, table)
        return cls(publisher, client, routes, key, topics, grace, handover, on_handover)

    def dispatches(self, topic: str) -> bool:
        """Whether a new ``topic`` row is this process's to publish (not while handed over to the relay)."""
        if topic not in self.topics or topic not in self._routes:
            return False
        return time.monotonic() >= self._handed_over_until

    def _hand_over_if_behind(self, queue_lengths: list[int]) -> None:
        """Hand over once the queues' lengths (the LPUSHes' answers) have said "behind" long enough."""
        longest, now = max(queue_lengths, default=0), time.monotonic()
        if not self.handover.queue_limit or longest < self.handover.queue_limit:
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = now
        if now - self._behind_since < self.handover.behind_seconds:
            return
        self._behind_since = None
        self._handed_over_until = now + self.handover.hold_seconds
        log.info("outbox.dispatch_handed_over", queue_length=longest, for_s=self.handover.hold_seconds)
        if self._on_handover is not None:
            self._on_handover()

    def add(self, session: Session, message: PendingMessage) -> None:
        """Publish ``message`` when the session's transaction commits (dropped if anything rolls back)."""
        pending = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = _Pending(self)
        pending.messages.append(message)

    def publish(self, messages: list[PendingMessage]) -> bool:
        """Push the messages and their ids to the dispatch log in one transaction; False if Redis refused."""
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for message in messages:
                    queue, data = self._publisher.encode(message, self._routes[message.topic])
                    pipe.lpush(queue, data)
                pipe.rpush(self._log_key, *(str(message.message_id) for message in messages))
                replies = pipe.execute()
        except BROKER_ERRORS as exc:
            log.warning(
                "outbox.dispatch_failed",
                message_ids=[str(m.message_id) for m in messages],
                error=f"{type(exc).__name__}: {exc}",
                relay_publishes_in_s=self.grace,
            )
            return False
        log.info("outbox.dispatched", message_ids=[str(m.message_id) for m in messages])
        self._hand_over_if_behind([int(length) for length in replies[: len(messages)]])
        return True

    def close(self) -> None:
        self._client.close()


@event.listens_for(Session, "after_commit")
def _dispatch_committed(session: Session) -> None:
    """The outermost commit only: a savepoint's release fires ``after_commit`` too."""
    if session.in_nested_transaction():
        return
    pending = session.info.pop(_PENDING, None)
    if pending is None or not pending.messages:
        return
    try:
        pending.dispatcher.publish(pending.messages)
    except Exception:  # the commit stands whatever happens here: the relay publishes after the grace
        log.exception("outbox.dispatch_failed", message_ids=[str(m.message_id) for m in pending.messages])


@event.listens_for(Session, "after_soft_rollback")
def _drop_on_rollback(session: Session, _previous: Any) -> None:
    """Any rollback, a savepoint's included, drops the whole pending list: the relay publishes what
    did commit once its grace is over; nothing that did not commit is ever published."""
    session.info.pop(_PENDING, None)


@event.listens_for(Session, "after_transaction_end")
def _drop_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    """A transaction closed without a commit (``close()``) leaves nothing behind for the next one."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
