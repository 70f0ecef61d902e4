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

PROGRAM = relay_program(
    "order_service",
    outbox,
    lambda settings: settings.orders_database_url,
    ORDER_PLACED,
    expects_answer=frozenset({ORDER_PLACED}),  # answered by invoice.created (order_service.worker)
)

build_relay = PROGRAM.build
main = PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
