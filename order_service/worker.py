"""The ``celery -A order_service.worker worker -Q orders`` target: the consumer of ``invoice.created``.

``python -m order_service.worker dead-letters list|replay`` and ``… prune`` operate on its inbox.

The order service's only consuming process: ``flask_outbox``'s consumer on ``ORDERS_DATABASE_URL``
(no Flask app), applying answers with ``order_service.invoice_answers``. A message lost anyway (the
broker's fault) costs nothing for good: its ``order.placed`` stays unacknowledged, the order relay
re-drives it, and the invoice side answers again.
"""

from __future__ import annotations

import sys

from flask_outbox import InboxWorker, inbox_commands

from order_service.invoice_answers import HANDLER
from order_service.models import inbox
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ROUTES

__all__ = ["app", "main", "settings", "worker"]

settings = Settings()
worker = InboxWorker(
    "order-consumer", settings, settings.orders_database_url, inbox, queue=ROUTES[INVOICE_CREATED].queue
)
worker.register(ROUTES[INVOICE_CREATED], HANDLER)
app = worker.app


def main(argv: list[str] | None = None) -> int:
    return inbox_commands(worker, "python -m order_service.worker", argv)


if __name__ == "__main__":
    sys.exit(main())
