"""``celery -A tests.fault.faulty_worker worker``: the real worker, with faults keyed by customer id.

Only the invoice handler's ``apply`` and ``apply_batch`` are wrapped; everything around them (the
inbox, delivery counting, retries, dead letters, batch splitting, acks) is the production code path.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from flask_outbox import Delivery
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from invoice_worker.celery_app import app, worker
from invoice_worker.invoicing import HANDLER
from invoice_worker.models import inbox
from shared.contracts import ORDER_PLACED, ROUTES, OrderPlaced

__all__ = ["ALWAYS_RAISES", "HANGS_ONCE", "KILLS_EVERY_TIME", "KILLS_ONCE", "SLOW", "app", "hung_messages"]

ALWAYS_RAISES = "cus_always_raises"
KILLS_EVERY_TIME = "cus_kills_worker"
KILLS_ONCE = "cus_kills_once"
HANGS_ONCE = "cus_hangs_once"
"""The first process to deliver it hangs inside the transaction (never returns); later ones invoice it."""
SLOW = "cus_slow_"
"""``cus_slow_<seconds>``: the invoice takes that long, in the database (a slow statement, not a hang)."""

_apply = HANDLER.apply
_apply_batch = HANDLER.apply_batch
assert _apply_batch is not None


def _deliveries(session: Session, message_id: uuid.UUID) -> int:
    deliveries = inbox.deliveries.c
    return session.scalar(select(deliveries.deliveries).where(deliveries.message_id == message_id)) or 0


def _inject(session: Session, delivery: Delivery[OrderPlaced]) -> None:
    customer = delivery.message.customer_id
    if customer == ALWAYS_RAISES:
        raise RuntimeError("injected: invoicing always fails for this order")
    # Not redelivered yet: no count (a first delivery is not counted on Redis) or a count of 1.
    if customer == KILLS_EVERY_TIME or (
        customer == KILLS_ONCE and _deliveries(session, delivery.message_id) <= 1
    ):
        os.kill(os.getpid(), signal.SIGKILL)
    if customer == HANGS_ONCE and _first_to_get(delivery.message_id):
        time.sleep(3600)  # a call that never returns, the inbox row written and its transaction open
    if customer.startswith(SLOW):
        session.execute(text("SELECT pg_sleep(:s)"), {"s": float(customer.removeprefix(SLOW))})


_HUNG = "hung-"


def hung_messages(var_dir: Path) -> list[str]:
    """Ids of the messages whose first delivery hung (``HANGS_ONCE``) in the pipeline using ``var_dir``."""
    return [marker.name.removeprefix(_HUNG) for marker in var_dir.glob(f"{_HUNG}*")]


def _first_to_get(message_id: uuid.UUID) -> bool:
    """True for the first delivery of ``message_id`` in this pipeline (a marker file under VAR_DIR)."""
    marker = Path(os.environ["VAR_DIR"]) / f"{_HUNG}{message_id}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def _faulty_apply(session: Session, delivery: Delivery[OrderPlaced]) -> str:
    _inject(session, delivery)
    return _apply(session, delivery)


def _faulty_apply_batch(session: Session, batch: Sequence[Delivery[OrderPlaced]]) -> list[str | None]:
    for delivery in batch:
        _inject(session, delivery)
    assert _apply_batch is not None
    return _apply_batch(session, batch)


worker.consumer(ROUTES[ORDER_PLACED].task).handler = dataclasses.replace(
    HANDLER, apply=_faulty_apply, apply_batch=_faulty_apply_batch
)
