"""Celery protocol-2 task messages built from outbox rows, for the publishers that skip ``send_task``.

``send_task`` costs ~300 µs of Celery CPU per message (routing, signals, a kombu publish with its own
checks). Here Celery still builds the task message (``as_task_v2``: the protocol-2 headers and body a
stock ``celery worker`` expects); each broker's publisher wraps it as its kombu transport would
(``flask_outbox.redis_publisher``, ``flask_outbox.amqp_publisher``). What is left out on purpose:
``saferepr`` of the arguments (the biggest cost, only shown by monitoring tools; we pass a short
summary).

The outbox row's headers (correlation id, trace context) and the message's signature
(``flask_outbox.signing``) become Celery message headers, which the worker sees as ``task.request``
attributes; in a batch task each entry carries its own. With tracing on, each message gets a producer
span under the row's stored trace context, and its ``traceparent`` goes out instead
(``flask_outbox.tracing``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename

from flask_outbox import tracing
from flask_outbox.messages import PendingMessage
from flask_outbox.routes import Route
from flask_outbox.signing import MessageSigner

__all__ = ["TaskMessage", "TaskMessages"]

_NO_ARGS: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One Celery message: its queue, protocol-2 body, headers (Celery's and the row's), properties, and
    the outbox rows it carries (one, or a batch task's)."""

    queue: str
    body: Any
    headers: dict[str, Any]
    properties: dict[str, Any]
    rows: tuple[int, ...]


class TaskMessages:
    """Builds the Celery messages of a batch of routed outbox rows, packing runs into batch tasks.

    With ``messages_per_task`` > 1, consecutive messages of a route that has a ``batch_task`` go out
    together, up to that many per Celery message (``flask_outbox.batches``): a worker then pays Celery's
    per-task cost and its database round trips once per batch instead of once per message. A lone
    message still goes out as the single-message task, and so does every message while tracing is
    on (each keeps its own producer span and consumer span in one trace).
    """

    def __init__(
        self, app: Celery, signer: MessageSigner, queue_prefix: str = "", messages_per_task: int = 1
    ) -> None:
        self._app = app
        self._signer = signer
        self._queue_prefix = queue_prefix
        self._messages_per_task = messages_per_task
        self._origin = anon_nodename()

    def queue(self, route: Route) -> str:
        return f"{self._queue_prefix}{route.queue}"

    def single(self, message: PendingMessage, route: Route) -> TaskMessage:
        """The single-message task for ``message`` (task id: its message id)."""
        if not tracing.enabled():
            return self._single(message, route, message.headers)
        with tracing.publish_span(message.topic, str(message.message_id), message.headers) as headers:
            return self._single(message, route, headers)

    def batch(self, messages: list[PendingMessage], route: Route) -> TaskMessage:
        """One ``route.batch_task`` carrying ``messages`` in order."""
        if route.batch_task is None:
            raise ValueError(f"route {route.task} takes no batches")
        items = [
            {
                "message_id": str(message.message_id),
                "payload": message.payload,
                "headers": self._signed(message, message.headers),
            }
            for message in messages
        ]
        summary = f"{{'messages': <{len(messages)} {messages[0].topic}>}}"
        rows = tuple(message.id for message in messages)
        return self._task(route, str(uuid.uuid4()), route.batch_task, {"messages": items}, summary, {}, rows)

    def build(self, sendable: list[tuple[PendingMessage, Route]]) -> list[TaskMessage]:
        """The Celery messages for ``sendable``, in order: batch tasks for runs, single tasks otherwise."""
        tasks: list[TaskMessage] = []
        for route, run in self._runs(sendable):
            if len(run) > 1 and route.batch_task is not None:
                tasks.append(self.batch(run, route))
            else:
                tasks.extend(self.single(message, route) for message in run)
        return tasks

    def _single(self, message: PendingMessage, route: Route, headers: Mapping[str, Any]) -> TaskMessage:
        summary = f"{{'payload': <{message.topic} {message.aggregate_id}>}}"
        kwargs = {"payload": message.payload}
        signed = self._signed(message, headers)
        return self._task(route, str(message.message_id), route.task, kwargs, summary, signed, (message.id,))

    def _signed(self, message: PendingMessage, headers: Mapping[str, Any]) -> dict[str, Any]:
        return self._signer.signed_headers(message.message_id, message.topic, message.payload, headers)

    def _task(
        self,
        route: Route,
        task_id: str,
        task_name: str,
        kwargs: dict[str, Any],
        summary: str,
        headers: Mapping[str, Any],
        rows: tuple[int, ...],
    ) -> TaskMessage:
        task = self._app.amqp.as_task_v2(
            task_id,
            task_name,
            args=_NO_ARGS,
            kwargs=kwargs,
            origin=self._origin,
            argsrepr="()",
            kwargsrepr=summary,
        )
        return TaskMessage(
            self.queue(route), task.body, {**headers, **task.headers}, dict(task.properties), rows
        )

    def _runs(self, sendable: list[tuple[PendingMessage, Route]]) -> list[tuple[Route, list[PendingMessage]]]:
        """Consecutive messages with one route, at most ``messages_per_task`` per run."""
        batching = self._messages_per_task > 1 and not tracing.enabled()
        runs: list[tuple[Route, list[PendingMessage]]] = []
        for message, route in sendable:
            if batching and runs and runs[-1][0] == route and len(runs[-1][1]) < self._messages_per_task:
                runs[-1][1].append(message)
            else:
                runs.append((route, [message]))
        return runs
