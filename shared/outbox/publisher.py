"""Publishing outbox messages as Celery tasks that a stock ``celery worker`` consumes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from shared.contracts import Route
from shared.outbox.messages import BatchOutcome, PendingMessage

__all__ = ["CeleryPublisher"]

_BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, ConnectionError, TimeoutError)
try:
    from redis.exceptions import RedisError

    _BROKER_ERRORS = (*_BROKER_ERRORS, RedisError)
except ImportError:  # pragma: no cover - the redis extra is always installed
    pass


class CeleryPublisher:
    """Publishes each message with ``send_task`` over one held producer connection.

    The task id is the outbox ``message_id``: the consumer's dedup key. Broker errors are
    reported per row (the rest of the batch is not attempted) so the relay can back off.
    """

    def __init__(self, app: Celery, routes: Mapping[str, Route], queue_prefix: str = "") -> None:
        self._app = app
        self._routes = routes
        self._queue_prefix = queue_prefix

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        try:
            with self._app.producer_or_acquire() as producer:
                for index, message in enumerate(messages):
                    route = self._routes.get(message.topic)
                    if route is None:
                        outcome.failed[message.id] = f"no route for topic {message.topic!r}"
                        continue
                    try:
                        self._send(producer, route, message)
                    except _BROKER_ERRORS as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        outcome.failed.update({m.id: error for m in messages[index:]})
                        return outcome
                    outcome.published.append(message.id)
        except _BROKER_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome.failed.update({m.id: error for m in messages if m.id not in outcome.published})
        return outcome

    def _send(self, producer: Any, route: Route, message: PendingMessage) -> None:
        self._app.send_task(
            route.task,
            kwargs={"payload": message.payload},
            task_id=str(message.message_id),
            queue=f"{self._queue_prefix}{route.queue}",
            headers=message.headers,
            producer=producer,
            retry=False,
        )

    def close(self) -> None:
        self._app.close()
