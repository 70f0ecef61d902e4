"""The invoice relay process: ``python -m invoice_worker.relay [run [--once] | status | retry-parked]``.

The same relay core as the order relay, on the invoices database's outbox: publishes
``invoice.created`` to the queue the order service consumes (``celery -A order_service.worker``).
"""

from __future__ import annotations

import sys

from flask_outbox import RelayProgram

from invoice_worker.models import outbox
from shared.config import Settings
from shared.contracts import ROUTES

__all__ = ["PROGRAM", "build_relay", "main"]

PROGRAM: RelayProgram[Settings] = RelayProgram(
    prog="python -m invoice_worker.relay",
    table=outbox,
    settings=Settings,
    database_url=lambda settings: settings.invoices_database_url,
    routes=ROUTES,
    publisher_name="invoice_relay",
    # Nobody waits on an answer (the invoice exists already): a fifth of a second turns one order-consumer
    # task per answer into one per busy moment.
    gather=0.2,
)

build_relay = PROGRAM.build
main = PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
