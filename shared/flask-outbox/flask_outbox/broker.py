"""Celery broker settings both sides share, so the relay and the worker agree on the transport."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from flask_outbox.settings import OutboxSettings as Settings

__all__ = ["BROKER_ERRORS", "broker_config", "publishing_app", "worker_broker_config"]

BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError, TimeoutError)
"""What a broker outage raises: a publisher reports these per row and never lets them escape."""


UNACKED_MUTEX_EXPIRE_SECONDS = 10


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration keys for the broker named by ``settings.broker_url``."""
    options: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.uses_embedded_broker:
        folder = settings.broker_folder
        options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),  # kombu's default is ./control, in the cwd
            "store_processed": False,
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "enable_utc": True,
    }


def worker_broker_config(settings: Settings) -> dict[str, Any]:
    """``broker_config`` for a consuming worker: sweep for expired unacked messages every ``VT // 4`` s.

    Kombu's default sweep runs every ~100 s whatever the visibility timeout, so a lost worker's
    reservations would come back that late; tie the sweep to the timeout (at most every 10 s).
    """
    config = broker_config(settings)
    if not settings.uses_embedded_broker:
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
