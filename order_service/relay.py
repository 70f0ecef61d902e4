"""The order relay process: ``python -m order_service.relay [run [--once] | status | retry-parked]``.

Publishes the orders database's outbox (``order.placed``); ``order.placed`` expects an answer
(``invoice.created``), so unanswered messages are re-driven (see ``flask_outbox.redrive``).
"""

from __future__ import annotations

import sys

from order_service.models import outbox
from shared.contracts import ORDER_PLACED
from shared.relays import relay_program

__all__ = ["PROGRAM", "build_relay", "main"]

# order.placed is answered by invoice.created (order_service.worker): unanswered ones are re-driven.
PROGRAM = relay_program(
    "order_service", outbox, ORDER_PLACED, "orders_database_url", expects_answer=frozenset({ORDER_PLACED})
)
build_relay, main = PROGRAM.build, PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
