"""The ``celery -A invoice_worker`` target: the Celery app, configured from the environment."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init
from flask_outbox.broker import worker_broker_config
from flask_outbox.logs import configure_logging
from flask_outbox.worker_metrics import instrument_worker

from invoice_worker.database import InvoiceDatabase
from invoice_worker.metrics import invoice_metrics
from invoice_worker.retention import check_retention
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

__all__ = ["app", "database", "settings"]

settings = Settings()
database = InvoiceDatabase(settings)


app = Celery("invoice_worker", include=["invoice_worker.tasks"])
app.conf.update(
    worker_broker_config(settings),
    task_acks_late=True,
    # A task that failed or hit a time limit is not an acknowledgement. On Redis a failure is removed
    # either way (reject without requeue is a delete there), which is why the task body lets nothing
    # escape (invoice_worker.tasks); a time limit, though, is requeued instead of acknowledged.
    task_acks_on_failure_or_timeout=False,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=settings.queue(ROUTES[ORDER_PLACED].queue),
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
check_retention(settings)  # refuse, at start, an inbox retention shorter than the redelivery window
# On worker start: /metrics, /healthz, /readyz on WORKER_METRICS_PORT, correlation ids in logs, tracing.
instrument_worker("invoice-worker", settings, settings.invoices_database_url, invoice_metrics)


@setup_logging.connect  # type: ignore[untyped-decorator]  # celery ships no type hints
def _configure_logging(**_: Any) -> None:
    configure_logging(settings.log_level, settings.log_format)


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery ships no type hints
def _reset_database_after_fork(**_: Any) -> None:
    database.after_fork()
