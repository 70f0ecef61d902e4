"""The ``celery -A order_service.worker worker -Q orders`` target: the consumer of ``invoice.created``.

The order service's only consuming process: ``flask_outbox``'s consumer on ``ORDERS_DATABASE_URL``
(no Flask app), applying answers with ``order_service.invoice_answers``. A message lost anyway (the
broker's fault) costs nothing for good: its ``order.placed`` stays unacknowledged, the order relay
re-drives it, and the invoice side answers again.
"""

from __future__ import annotations

from flask_outbox import InboxWorker

from order_service.invoice_answers import HANDLER
from order_service.models import inbox
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ROUTES

__all__ = ["app", "settings", "worker"]

settings = Settings()
worker = InboxWorker(
    "order-consumer", settings, settings.orders_database_url, inbox, queue=ROUTES[INVOICE_CREATED].queue
)
worker.register(ROUTES[INVOICE_CREATED], HANDLER)
app = worker.app
