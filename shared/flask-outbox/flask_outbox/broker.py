"""Celery broker settings both sides share, so the relay and the worker agree on the transport."""

from __future__ import annotations

from typing import Any

from amqp.exceptions import AMQPError, MessageNacked
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from flask_outbox.settings import OutboxSettings as Settings

__all__ = ["BROKER_ERRORS", "broker_config", "publishing_app", "worker_broker_config"]

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KombuError,
    RedisError,
    AMQPError,
    MessageNacked,
    OSError,
    TimeoutError,
)
"""What a broker outage raises (RabbitMQ: a closed connection or channel, a refused vhost, a nack): a
publisher reports these per row and never lets them escape."""


UNACKED_MUTEX_EXPIRE_SECONDS = 10


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration keys for the broker named by ``settings.broker_url``."""
    if settings.uses_amqp_broker:
        return {**_common(settings), **_amqp_config()}
    options: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.uses_embedded_broker:
        folder = settings.broker_folder
        options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),  # kombu's default is ./control, in the cwd
            "store_processed": False,
        }
    return {**_common(settings), "broker_transport_options": options}


def _amqp_config() -> dict[str, Any]:
    """RabbitMQ: quorum queues, each on a topic exchange of its name, and publisher confirms.

    Every queue Celery declares (the worker's ``-Q``, the default queue, a queue a publisher names) is
    a durable quorum queue; the relay declares the same through the same app before it publishes
    (``flask_outbox.amqp_publisher``). A topic exchange, not Celery's direct default, so a retry's
    countdown takes Celery's native delayed delivery (the broker holds it) instead of a prefetch slot
    of the worker, whose prefetch is static on quorum queues. ``confirm_publish``: each kombu publish
    (a retry, a batch split, ``send_task``) returns only once the broker acknowledged it.
    """
    return {
        "broker_transport_options": {"confirm_publish": True},
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_type": "quorum",
        "task_create_missing_queue_exchange_type": "topic",
    }


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "enable_utc": True,
    }


def worker_broker_config(settings: Settings) -> dict[str, Any]:
    """``broker_config`` for a consuming worker; on Redis, a sweep for expired unacked tasks every VT // 4 s.

    RabbitMQ needs no sweep: a lost worker's unacknowledged messages come back when its channel closes.
    Kombu's default sweep runs every ~100 s whatever the visibility timeout, so a lost worker's
    reservations would come back that late; tie the sweep to the timeout (at most every 10 s).

    A channel error is retried like a lost connection (Celery's default ends the worker on it): on
    RabbitMQ a reconnection refused by a cluster that lost a node (its mailbox queue ``….celery.pidbox``
    still on the dead node: 404), on Redis a broker refusing writes (a replica not yet promoted, a full
    disk, ``NOREPLICAS``, ``OOM``: error replies to the worker's ``BRPOP``).
    """
    config = broker_config(settings)
    config["broker_channel_error_retry"] = True
    if settings.uses_redis_broker:
        sweep = max(1, min(10, settings.broker_visibility_timeout // 4))
        config["broker_transport_options"] = {
            **config["broker_transport_options"],
            "unacked_restore_interval": sweep,
            "unacked_restore_throttle": 1,
            # The restore lock: kombu keeps it 300 s, so a worker SIGKILLed mid-restore would block every
            # restore (a lost worker's reservations) for 5 minutes. A restore takes well under a second.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_SECONDS,
        }
    return config


def publishing_app(settings: Settings, name: str) -> Celery:
    """A Celery app that only publishes by task name (it imports no task code)."""
    app = Celery(name, set_as_current=False)
    app.conf.update(broker_config(settings))
    return app
