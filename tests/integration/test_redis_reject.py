"""What a rejected message becomes on kombu's Redis transport: the premise of the worker's requeue.

Celery turns a retry whose publish failed into ``Reject(requeue=False)`` and, with
``task_acks_on_failure_or_timeout=False``, a failed task into ``reject(requeue=False)``. On
RabbitMQ that could dead-letter; on Redis it is a delete, which is why the task body raises
``Reject(requeue=True)`` instead (``flask_outbox.tasks``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection
from kombu.simple import SimpleQueue

UNACKED = "unacked"  # kombu's default unacked hash


@pytest.fixture
def queue(redis_url: str, queue_prefix: str) -> Iterator[SimpleQueue]:
    with Connection(redis_url) as connection:
        simple = connection.SimpleQueue(f"{queue_prefix}reject")
        yield simple
        simple.clear()
        simple.close()


def test_reject_without_requeue_deletes_the_message_on_redis(queue: SimpleQueue, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue.put({"order": 1})
    message = queue.get(timeout=5)
    assert client.hexists(UNACKED, message.delivery_tag)  # held for the visibility timeout

    message.reject(requeue=False)

    assert not client.hexists(UNACKED, message.delivery_tag)
    assert client.llen(queue.queue.name) == 0  # nowhere: neither queued nor waiting to be restored


def test_reject_with_requeue_puts_the_message_back_at_once(queue: SimpleQueue, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue.put({"order": 2})
    message = queue.get(timeout=5)

    message.reject(requeue=True)

    assert not client.hexists(UNACKED, message.delivery_tag)
    assert client.llen(queue.queue.name) == 1
    assert queue.get(timeout=5).payload == {"order": 2}
