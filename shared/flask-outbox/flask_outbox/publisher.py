"""Publishing outbox messages as Celery tasks that a stock ``celery worker`` consumes."""

from __future__ import annotations

from collections.abc import Mapping

from celery import Celery

from flask_outbox import tracing
from flask_outbox.amqp_publisher import AmqpConfirmPublisher
from flask_outbox.broker import BROKER_ERRORS, publishing_app
from flask_outbox.messages import BatchOutcome, PendingMessage, Publisher, routed
from flask_outbox.redis_publisher import RedisPipelinePublisher
from flask_outbox.routes import Route
from flask_outbox.settings import OutboxSettings as Settings
from flask_outbox.signing import MessageSigner

__all__ = ["MESSAGES_PER_TASK", "CeleryPublisher", "publisher_for"]


class CeleryPublisher:
    """Publishes each message with ``send_task`` over one held producer connection.

    The portable path, for brokers without a batch publisher of their own (the embedded filesystem
    broker). The task id is the outbox ``message_id``: the consumer's dedup key; the row's headers
    (correlation id, trace context) and the message's signature go out as message headers. A broker
    error fails the rest of the batch (not attempted) so the relay can back off.
    """

    def __init__(
        self, app: Celery, routes: Mapping[str, Route], signer: MessageSigner, queue_prefix: str = ""
    ) -> None:
        self._app = app
        self._routes = routes
        self._signer = signer
        self._queue_prefix = queue_prefix

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        sendable, failed = routed(messages, self._routes)
        outcome = BatchOutcome(failed=failed)
        try:
            with self._app.producer_or_acquire() as producer:
                for message, route in sendable:
                    with tracing.publish_span(
                        message.topic, str(message.message_id), message.headers
                    ) as headers:
                        self._app.send_task(
                            route.task,
                            kwargs={"payload": message.payload},
                            task_id=str(message.message_id),
                            queue=f"{self._queue_prefix}{route.queue}",
                            headers=self._signer.signed_headers(
                                message.message_id, message.topic, message.payload, headers
                            ),
                            producer=producer,
                            retry=False,
                        )
                    outcome.published.append(message.id)
        except BROKER_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            done = set(outcome.published)
            outcome.failed.update({m.id: error for m, _ in sendable if m.id not in done})
            outcome.transient.update(m.id for m, _ in sendable if m.id not in done)
        return outcome

    def waiting(self) -> int:
        """Not known on this transport: the relay never holds back here."""
        return 0

    def reachable(self) -> bool:
        try:
            with self._app.connection_for_write() as connection:
                connection.connect()
        except BROKER_ERRORS:
            return False
        return True

    def close(self) -> None:
        self._app.close()


MESSAGES_PER_TASK = 100
"""Most messages a Redis or RabbitMQ relay packs into one batch task (``flask_outbox.batches``): enough
that a backlog costs the workers one task per hundred messages, few enough that one task stays short."""


def publisher_for(settings: Settings, routes: Mapping[str, Route], name: str = "outbox_relay") -> Publisher:
    """The pipelined publisher on Redis, the batch-confirming one on RabbitMQ; ``send_task`` otherwise.

    Raises ``WeakSigningKey`` (before connecting) when ``MESSAGE_SIGNING_KEY`` cannot sign.
    """
    signer = MessageSigner.from_settings(settings)
    app = publishing_app(settings, name)
    if settings.uses_redis_broker:
        return RedisPipelinePublisher.from_url(
            app, settings.broker_url, routes, signer, settings.queue_prefix, MESSAGES_PER_TASK
        )
    if settings.uses_amqp_broker:
        return AmqpConfirmPublisher(app, routes, signer, settings.queue_prefix, MESSAGES_PER_TASK)
    return CeleryPublisher(app, routes, signer, settings.queue_prefix)
