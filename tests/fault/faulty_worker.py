"""``celery -A tests.fault.faulty_worker worker``: the real worker, with faults keyed by customer id.

Only the invoicing call is wrapped; everything around it (delivery counting, retries, dead letters,
acks) is the production code path.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import invoice_worker.processing as processing
from invoice_worker import app
from invoice_worker.models import MessageDelivery
from shared.contracts import OrderPlaced

__all__ = ["ALWAYS_RAISES", "KILLS_EVERY_TIME", "KILLS_ONCE", "SLOW", "app"]

ALWAYS_RAISES = "cus_always_raises"
KILLS_EVERY_TIME = "cus_kills_worker"
KILLS_ONCE = "cus_kills_once"
SLOW = "cus_slow_"
"""``cus_slow_<seconds>``: the invoice takes that long."""

_create_invoice = processing.create_invoice


def _deliveries(session: Session, message_id: uuid.UUID) -> int:
    return (
        session.scalar(select(MessageDelivery.deliveries).where(MessageDelivery.message_id == message_id))
        or 0
    )


def _faulty_create_invoice(session: Session, message_id: uuid.UUID, event: OrderPlaced) -> Any:
    customer = event.customer_id
    if customer == ALWAYS_RAISES:
        raise RuntimeError("injected: invoicing always fails for this order")
    # Not redelivered yet: no count (a first delivery is not counted on Redis) or a count of 1.
    if customer == KILLS_EVERY_TIME or (customer == KILLS_ONCE and _deliveries(session, message_id) <= 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if customer.startswith(SLOW):
        time.sleep(float(customer.removeprefix(SLOW)))
    return _create_invoice(session, message_id, event)


processing.create_invoice = _faulty_create_invoice  # type: ignore[assignment]
