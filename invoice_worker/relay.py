"""The invoice relay process: ``python -m invoice_worker.relay [run [--once] | status | retry-parked]``.

The same relay core as the order relay, on the invoices database's outbox: publishes
``invoice.created`` to the queue the order service consumes (``celery -A order_service.worker``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from flask_outbox.program import RelayProgram
from flask_outbox.relay import OutboxRelay
from sqlalchemy import Engine

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
)


def build_relay(settings: Settings, engine: Engine) -> OutboxRelay:
    return PROGRAM.build(settings, engine)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
