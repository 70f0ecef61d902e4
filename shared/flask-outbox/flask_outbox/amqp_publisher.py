"""RabbitMQ: a whole batch published, then every publisher confirm awaited at once.

The relay marks a row published only once the broker confirmed it. Waiting for each message's
confirm before the next (kombu's ``confirm_publish``) costs a round trip per message; here the
channel is in confirm mode, the batch's Celery messages (``flask_outbox.task_messages``) go out back
to back, and the relay waits once for all of their acks (measured in docs/design.md). A nack, a
returned message (no queue took it: ``mandatory``), a closed channel or connection, or no confirm
within ``CONFIRM_TIMEOUT_S`` leaves the rows due as a broker fault (``BatchOutcome.transient``), and
the connection is dropped: the next publish or probe opens a fresh one.

Each route's queue is declared on every new connection through the publishing app (the durable
quorum queue a worker of that queue declares, ``flask_outbox.broker``), so a relay that publishes
before any worker ran never lets RabbitMQ drop its messages or create the queue classic.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import amqp
from celery import Celery
from kombu.connection import Connection

from flask_outbox.broker import BROKER_ERRORS
from flask_outbox.messages import BatchOutcome, PendingMessage, routed
from flask_outbox.rabbitmq import connect
from flask_outbox.routes import Route
from flask_outbox.signing import MessageSigner
from flask_outbox.task_messages import TaskMessage, TaskMessages

__all__ = ["CONFIRM_TIMEOUT_S", "AmqpConfirmPublisher"]

CONFIRM_TIMEOUT_S = 10.0
"""Longest wait for a batch's confirms, and for any socket read or write: well under the relay's stall
bound (30 s), so a broker that stopped answering is a broker fault, not a hung relay."""

_CONNECT_TIMEOUT_S = 3.0
"""Per host of a failover list: three hosts that all fail still leave the batch inside the stall bound."""

_dumps = cast(Callable[[object], str], json.JSONEncoder().encode)


class _Confirms:
    """The confirm-mode channel's acks, nacks and returns, by delivery tag (counted from 1 per channel)."""

    def __init__(self) -> None:
        self.sent = 0
        self.pending: set[int] = set()
        self.refused: set[int] = set()
        self.returned: set[str] = set()

    def ack(self, tag: int, multiple: bool) -> None:
        self.pending -= {t for t in self.pending if t <= tag} if multiple else {tag}

    def nack(self, tag: int, multiple: bool) -> None:
        done = {t for t in self.pending if t <= tag} if multiple else {tag}
        self.refused |= done & self.pending
        self.pending -= done

    def on_return(self, _exc: Exception, _exchange: str, _routing_key: str, message: amqp.Message) -> None:
        self.returned.add(str(message.properties.get("correlation_id")))


class AmqpConfirmPublisher:
    """Publishes a batch on a confirm-mode channel and reports as published only what the broker acked."""

    def __init__(
        self,
        app: Celery,
        routes: Mapping[str, Route],
        signer: MessageSigner,
        queue_prefix: str = "",
        messages_per_task: int = 1,
    ) -> None:
        self._app = app
        self._routes = routes
        self._tasks = TaskMessages(app, signer, queue_prefix, messages_per_task)
        self._queues = sorted({self._tasks.queue(route) for route in routes.values()})
        self._connection: Connection | None = None
        self._channel: Any = None
        self._confirms = _Confirms()

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        sendable, failed = routed(messages, self._routes)
        outcome = BatchOutcome(failed=failed)
        if not sendable:
            return outcome
        tasks = self._tasks.build(sendable)
        try:
            tags = self._send(tasks)
        except BROKER_ERRORS as exc:
            self._drop()
            error = f"{type(exc).__name__}: {exc}"
            outcome.failed.update({message.id: error for message, _ in sendable})
            outcome.transient.update(message.id for message, _ in sendable)
            return outcome
        for task, tag in zip(tasks, tags, strict=True):
            refused = tag in self._confirms.refused
            if not refused and task.properties.get("correlation_id") not in self._confirms.returned:
                outcome.published.extend(task.rows)
                continue
            error = "broker nacked the message" if refused else "no queue took the message (returned)"
            outcome.failed.update(dict.fromkeys(task.rows, error))
            outcome.transient.update(task.rows)
        if outcome.transient:
            self._drop()  # a fresh channel re-declares the queues
        return outcome

    def _send(self, tasks: list[TaskMessage]) -> list[int]:
        """Publish ``tasks`` back to back, then wait for all of their confirms; their delivery tags."""
        channel = self._open()
        confirms = self._confirms
        confirms.refused.clear()
        confirms.returned.clear()
        tags = []
        for task in tasks:
            message = amqp.Message(
                _dumps(task.body),
                content_type="application/json",
                content_encoding="utf-8",
                application_headers=task.headers,
                delivery_mode=2,
                **task.properties,
            )
            channel.basic_publish(message, exchange="", routing_key=task.queue, mandatory=True)
            confirms.sent += 1
            confirms.pending.add(confirms.sent)
            tags.append(confirms.sent)
        assert self._connection is not None
        while confirms.pending:
            # Raises TimeoutError when no confirm comes in time.
            self._connection.drain_events(timeout=CONFIRM_TIMEOUT_S)  # type: ignore[no-untyped-call]
        return tags

    def _open(self) -> Any:
        """The confirm-mode channel, opened (and the routes' queues declared) on first use."""
        if self._channel is not None:
            return self._channel
        connection = self._app.connection_for_write(
            connect_timeout=_CONNECT_TIMEOUT_S,
            heartbeat=0,  # nothing answers heartbeats between batches; a dead peer fails the next publish
            transport_options={
                "confirm_publish": False,  # confirms awaited per batch, not per message
                "read_timeout": CONFIRM_TIMEOUT_S,
                "write_timeout": CONFIRM_TIMEOUT_S,
            },
        )
        self._connection = connection
        connect(connection)
        channel = connection.channel()
        for queue in self._queues:
            self._app.amqp.queues[queue](channel).declare()
        channel.confirm_select()
        self._confirms = _Confirms()
        channel.events["basic_ack"].add(self._confirms.ack)
        channel.events["basic_nack"].add(self._confirms.nack)
        channel.events["basic_return"].add(self._confirms.on_return)
        self._channel = channel
        return channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):  # a broken connection may fail to close; dropped anyway
                connection.release()  # type: ignore[no-untyped-call]

    def waiting(self) -> int:
        """Tasks ready in the routes' queues, not yet taken by a worker (a passive declare's count each)."""
        try:
            channel = self._open()
            return sum(
                int(channel.queue_declare(queue, passive=True).message_count) for queue in self._queues
            )
        except BROKER_ERRORS:
            self._drop()
            raise

    def reachable(self) -> bool:
        """A round trip on the publishing connection (opened, queues declared, if it was not)."""
        try:
            self.waiting()
        except BROKER_ERRORS:
            return False
        return True

    def close(self) -> None:
        self._drop()
        self._app.close()
