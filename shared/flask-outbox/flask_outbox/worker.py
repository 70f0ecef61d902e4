"""A consuming service's Celery app: its database, its inbox, and a handler per topic.

``InboxWorker`` is what a ``celery -A`` module builds: the Celery app configured for at-least-once
delivery (late acks, redelivery of a lost worker's tasks, a prefetch of one, JSON only), the
database engine (dropped after fork), the inbox pruner, metrics and logging on worker start. A
service then registers one ``Handler`` per topic it consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from flask_outbox.broker import worker_broker_config
from flask_outbox.consumer import Consumer, DeliveryPolicy, Handler
from flask_outbox.inbox import InboxTables
from flask_outbox.logs import configure_logging
from flask_outbox.retention import InboxPruner
from flask_outbox.routes import Route
from flask_outbox.settings import OutboxSettings
from flask_outbox.signing import MessageSigner
from flask_outbox.tasks import register_tasks
from flask_outbox.worker_db import WorkerDatabase
from flask_outbox.worker_metrics import OnOutcome, instrument_worker

__all__ = ["InboxWorker"]

M = TypeVar("M")


class InboxWorker:
    """The Celery app of a service that consumes messages, and the consumers registered on it."""

    def __init__(
        self,
        name: str,
        settings: OutboxSettings,
        database_url: str,
        inbox: InboxTables,
        *,
        queue: str,
        outcome_metrics: Callable[[], OnOutcome] | None = None,
    ) -> None:
        self.settings = settings
        # A transaction idle past the visibility timeout belongs to a delivery the broker already gave
        # up on (Redis restores its message then): the database ends it, and with it its locks.
        self.database = WorkerDatabase(
            database_url, idle_in_transaction_seconds=settings.broker_visibility_timeout
        )
        self.inbox = inbox
        self.policy = DeliveryPolicy.from_settings(settings)
        # Refuses, at start, a MESSAGE_SIGNING_KEY that could be guessed (or none, outside the embedded mode).
        self.signer = MessageSigner.from_settings(settings)
        # Refuses, at start, an inbox retention shorter than the longest redelivery (check_retention).
        self.pruner = InboxPruner.from_settings(settings, self.database, inbox)
        self.consumers: dict[str, Consumer[Any]] = {}
        self.app = Celery(name.replace("-", "_"))
        self.app.conf.update(
            worker_broker_config(settings),
            task_acks_late=True,
            # A task that failed or hit a time limit is not an acknowledgement: the task body lets
            # nothing escape (flask_outbox.tasks); a time limit is requeued instead of acknowledged.
            task_acks_on_failure_or_timeout=False,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            task_default_queue=settings.queue(queue),
            worker_hijack_root_logger=False,
            worker_send_task_events=False,
        )
        # On worker start: /metrics, /healthz, /readyz on METRICS_PORT, correlation ids, tracing.
        instrument_worker(name, settings, database_url, outcome_metrics)
        setup_logging.connect(self._configure_logging, weak=False)
        worker_process_init.connect(self._after_fork, weak=False)

    def _configure_logging(self, **_: Any) -> None:
        configure_logging(self.settings.log_level, self.settings.log_format)

    def _after_fork(self, **_: Any) -> None:
        """Pools don't survive fork: each pool process opens its own connections."""
        self.database.after_fork()

    def register(self, route: Route, handler: Handler[M]) -> Consumer[M]:
        """Consume ``handler.topic`` as the route's tasks (one message, and a batch of several)."""
        consumer = Consumer(handler, self.database, self.inbox, self.policy, route.task, self.signer)
        register_tasks(self.app, consumer, route.batch_task, self.pruner.prune_when_due)
        self.consumers[route.task] = consumer
        return consumer

    def consumer(self, task_name: str) -> Consumer[Any]:
        """The consumer registered under ``task_name`` (a dead letter names the task it was parked by)."""
        return self.consumers[task_name]
