"""The ``celery -A invoice_worker`` target: the Celery app, configured from the environment."""

from __future__ import annotations

from flask_outbox import InboxWorker

from invoice_worker.invoicing import HANDLER
from invoice_worker.metrics import invoice_metrics
from invoice_worker.models import inbox
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

__all__ = ["app", "build_worker", "settings", "worker"]


def build_worker(settings: Settings) -> InboxWorker:
    """The invoice worker's consumer of ``order.placed`` (refuses settings whose relations are wrong)."""
    worker = InboxWorker(
        "invoice-worker",
        settings,
        settings.invoices_database_url,
        inbox,
        queue=ROUTES[ORDER_PLACED].queue,
        outcome_metrics=invoice_metrics,
    )
    worker.register(ROUTES[ORDER_PLACED], HANDLER)
    return worker


settings = Settings()
worker = build_worker(settings)
app = worker.app
