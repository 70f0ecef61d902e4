"""Publisher confirms on RabbitMQ, two ways, for a 500-row batch (docs/design.md, "RabbitMQ").

(a) per message: ``send_task`` with kombu's ``confirm_publish`` (each publish waits for its ack:
``CeleryPublisher`` on the publishing app); (b) per batch: ``AmqpConfirmPublisher``, the relay's,
every message published then all confirms awaited once, single-message tasks only (no batch tasks,
so both send 500 Celery messages). Not a test: it prints messages/s, the median of five rounds each.

``BENCH_AMQP_URL`` names a vhost the bench may create queues in (default: ``/`` as guest on localhost).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

from flask_outbox.amqp_publisher import AmqpConfirmPublisher
from flask_outbox.broker import publishing_app
from flask_outbox.messages import PendingMessage, Publisher
from flask_outbox.publisher import CeleryPublisher
from flask_outbox.signing import MessageSigner
from kombu import Connection

from harness.processes import TEST_SIGNING_KEY
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

BATCH = 500
ROUNDS = 5


def _batch() -> list[PendingMessage]:
    payload = {"order_id": str(uuid.uuid4()), "customer": "c" * 20, "total_cents": 12_345, "currency": "EUR"}
    return [
        PendingMessage(n, uuid.uuid4(), ORDER_PLACED, str(uuid.uuid4()), payload, {}, 0) for n in range(BATCH)
    ]


def _rate(publisher: Publisher) -> float:
    publisher.publish(_batch()[:1])  # connect and declare outside the timing
    rates = []
    for _ in range(ROUNDS):
        batch = _batch()
        started = time.perf_counter()
        outcome = publisher.publish(batch)
        rates.append(len(outcome.published) / (time.perf_counter() - started))
    publisher.close()
    return statistics.median(rates)


def main() -> None:
    url = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    settings = Settings.model_construct(broker_url=url, queue_prefix=prefix)
    signer = MessageSigner(TEST_SIGNING_KEY.encode())
    per_message = CeleryPublisher(publishing_app(settings, "bench"), ROUTES, signer, prefix)
    per_batch = AmqpConfirmPublisher(publishing_app(settings, "bench"), ROUTES, signer, prefix)
    print(f"per-message confirms (confirm_publish): {_rate(per_message):,.0f} msg/s")
    print(f"per-batch confirms (AmqpConfirmPublisher): {_rate(per_batch):,.0f} msg/s")
    with Connection(url) as connection:
        for route in ROUTES.values():
            connection.default_channel.queue_delete(f"{prefix}{route.queue}")
            connection.default_channel.exchange_delete(f"{prefix}{route.queue}")


if __name__ == "__main__":
    main()
