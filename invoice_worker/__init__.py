"""The invoice worker: consumes ``order.placed`` and makes exactly one invoice per order."""

from invoice_worker.celery_app import app

__all__ = ["app"]
