"""The fast path on a Redis broker: a whole batch in one pipelined round trip.

``send_task`` costs ~300 µs of Celery CPU per message (routing, signals, a kombu publish with its
own checks and a round trip each). Here Celery still builds the task message (``as_task_v2``: the
protocol-2 headers and body a stock ``celery worker`` expects), and we wrap it the way kombu's
Redis channel does (``prepare_message`` + ``basic_publish``: base64 body, delivery info, a
delivery tag) and ``LPUSH`` it to the queue's list, which is all kombu's Redis ``_put`` does for a
priority-0 message. What is left out on purpose: ``saferepr`` of the arguments (the biggest cost,
only shown by monitoring tools; we pass a short summary) and per-message queue declaration (the
worker declares its queues; a list needs no declaring to be pushed to).

The outbox row's headers (correlation id, trace context) and the message's signature
(``flask_outbox.signing``) become Celery message headers, which the worker sees as ``task.request``
attributes; in a batch task each entry carries its own. With tracing on, each message gets a producer span
under the row's stored trace context, and its ``traceparent`` goes out instead (``flask_outbox.tracing``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis
import structlog
from celery import Celery
from celery.utils.nodenames import anon_nodename

from flask_outbox import tracing
from flask_outbox.broker import BROKER_ERRORS
from flask_outbox.messages import BatchOutcome, PendingMessage, routed
from flask_outbox.routes import Route
from flask_outbox.signing import MessageSigner

__all__ = ["RedisPipelinePublisher"]

log = structlog.get_logger(__name__)

_NO_ARGS: tuple[()] = ()
_dumps = cast(Callable[[object], str], json.JSONEncoder().encode)
"""kombu's JSON output for plain JSON types (all a JSONB column decodes to), without kombu's
per-call encoder construction: profiled at a quarter of the encoding time."""


class RedisPipelinePublisher:
    """Publishes a batch as Celery protocol-2 messages with one ``LPUSH`` per queue, one round trip.

    With ``messages_per_task`` > 1, consecutive messages of a route that has a ``batch_task`` go out
    together, up to that many per Celery message (``flask_outbox.batches``): a worker then pays Celery's
    per-task cost and its database round trips once per batch instead of once per message. A lone
    message still goes out as the single-message task, and so does every message while tracing is
    on (each keeps its own producer span and consumer span in one trace).
    """

    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        routes: Mapping[str, Route],
        signer: MessageSigner,
        queue_prefix: str = "",
        messages_per_task: int = 1,
    ) -> None:
        self._app = app
        self._client = client
        self._routes = routes
        self._signer = signer
        self._queue_prefix = queue_prefix
        self._messages_per_task = messages_per_task
        self._origin = anon_nodename()

    @classmethod
    def from_url(
        cls,
        app: Celery,
        url: str,
        routes: Mapping[str, Route],
        signer: MessageSigner,
        queue_prefix: str = "",
        messages_per_task: int = 1,
    ) -> RedisPipelinePublisher:
        """One connection, reused for every batch; timeouts so an outage fails fast instead of hanging."""
        client = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30, max_connections=1
        )
        return cls(app, client, routes, signer, queue_prefix, messages_per_task)

    def encode(self, message: PendingMessage, route: Route) -> tuple[str, bytes]:
        """The queue and the exact bytes kombu's Redis transport would push for ``send_task``."""
        if not tracing.enabled():
            return self._encode(message, route, message.headers)
        with tracing.publish_span(message.topic, str(message.message_id), message.headers) as headers:
            return self._encode(message, route, headers)

    def encode_batch(self, messages: list[PendingMessage], route: Route) -> tuple[str, bytes]:
        """The queue and bytes of one ``route.batch_task`` carrying ``messages`` in order."""
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
        return self._envelope(route, str(uuid.uuid4()), route.batch_task, {"messages": items}, summary, {})

    def _encode(self, message: PendingMessage, route: Route, headers: Mapping[str, Any]) -> tuple[str, bytes]:
        summary = f"{{'payload': <{message.topic} {message.aggregate_id}>}}"
        kwargs = {"payload": message.payload}
        signed = self._signed(message, headers)
        return self._envelope(route, str(message.message_id), route.task, kwargs, summary, signed)

    def _signed(self, message: PendingMessage, headers: Mapping[str, Any]) -> dict[str, Any]:
        return self._signer.signed_headers(message.message_id, message.topic, message.payload, headers)

    def _envelope(
        self,
        route: Route,
        task_id: str,
        task_name: str,
        kwargs: dict[str, Any],
        summary: str,
        headers: Mapping[str, Any],
    ) -> tuple[str, bytes]:
        queue = f"{self._queue_prefix}{route.queue}"
        task = self._app.amqp.as_task_v2(
            task_id,
            task_name,
            args=_NO_ARGS,
            kwargs=kwargs,
            origin=self._origin,
            argsrepr="()",
            kwargsrepr=summary,
        )
        body: Any = task.body
        envelope = {
            "body": base64.b64encode(_dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**headers, **task.headers},
            "properties": {
                **task.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return queue, _dumps(envelope).encode()

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

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        sendable, failed = routed(messages, self._routes)
        outcome = BatchOutcome(failed=failed)
        if not sendable:
            return outcome
        by_queue: dict[str, list[bytes]] = {}
        for route, run in self._runs(sendable):
            if len(run) > 1 and route.batch_task is not None:
                queue, data = self.encode_batch(run, route)
                by_queue.setdefault(queue, []).append(data)
                continue
            for message in run:
                queue, data = self.encode(message, route)
                by_queue.setdefault(queue, []).append(data)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for queue, items in by_queue.items():
                    # LPUSH k a b c puts c at the head; workers BRPOP from the tail, so a is consumed first.
                    pipe.lpush(queue, *items)
                pipe.execute()
        except BROKER_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome.failed.update({message.id: error for message, _ in sendable})
            outcome.transient.update(message.id for message, _ in sendable)
            return outcome
        outcome.published.extend(message.id for message, _ in sendable)
        return outcome

    def waiting(self) -> int:
        """Tasks waiting in the routes' queues, not yet taken by a worker (one pipelined ``LLEN`` each)."""
        queues = sorted({f"{self._queue_prefix}{route.queue}" for route in self._routes.values()})
        with self._client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            return sum(int(length) for length in pipe.execute())

    def reachable(self) -> bool:
        try:
            return bool(self._client.ping())
        except BROKER_ERRORS:
            return False

    def close(self) -> None:
        self._client.close()
        self._app.close()
