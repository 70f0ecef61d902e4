"""The invoice relay process: ``python -m invoice_worker.relay [run [--once] | status | retry-parked]``.

The same relay core as the order relay, on the invoices database's outbox: publishes
``invoice.created`` to the queue the order service consumes (``celery -A order_service.worker``).
"""

from __future__ import annotations

import sys

from invoice_worker.models import outbox
from shared.contracts import INVOICE_CREATED
from shared.relays import relay_program

__all__ = ["PROGRAM", "build_relay", "main"]

PROGRAM = relay_program(
    "invoice_worker",
    outbox,
    lambda settings: settings.invoices_database_url,
    INVOICE_CREATED,
    # Nobody waits on an answer (the invoice exists already): a fifth of a second turns one order-consumer
    # task per answer into one per busy moment.
    gather=0.2,
)

build_relay = PROGRAM.build
main = PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
