"""The order relay process: ``python -m order_service.relay [run [--once] | status | retry-parked]``.

Publishes the orders database's outbox (``order.placed``); ``order.placed`` expects an answer
(``invoice.created``), so unanswered messages are re-driven (see ``flask_outbox.redrive``).
"""

from __future__ import annotations

import sys

from flask_outbox import RelayProgram

from order_service.models import outbox
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

__all__ = ["PROGRAM", "build_relay", "main"]

PROGRAM: RelayProgram[Settings] = RelayProgram(
    prog="python -m order_service.relay",
    table=outbox,
    settings=Settings,
    database_url=lambda settings: settings.orders_database_url,
    routes=ROUTES,
    publisher_name="order_relay",
    expects_answer=frozenset({ORDER_PLACED}),  # answered by invoice.created (order_service.worker)
)

build_relay = PROGRAM.build
main = PROGRAM.main

if __name__ == "__main__":
    sys.exit(main())
