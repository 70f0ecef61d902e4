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

# Nobody waits on an answer (the invoice exists already): gathering answers for a fifth of a second turns
# one order-consumer task per answer into one per busy moment.
PROGRAM = relay_program("invoice_worker", outbox, INVOICE_CREATED, "invoices_database_url", gather=0.2)
build_relay, main = PROGRAM.build, PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
