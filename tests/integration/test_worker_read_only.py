"""The worker against a real Postgres invoice database that turns read-only and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask_outbox import WorkerDatabase
from flask_outbox.consumer import Consumer, DeliveryPolicy, RetryLater
from sqlalchemy import func, select

from invoice_worker.invoicing import HANDLER
from invoice_worker.models import Invoice, inbox
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES, OrderPlaced
from tests.integration.conftest import SIGNER
from tests.support.events import order_placed_event
from tests.support.read_only import set_read_only

POLICY = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def read_only_invoices(pg_settings: Settings) -> Iterator[str]:
    url = pg_settings.invoices_database_url
    set_read_only(url, True)
    yield url
    set_read_only(url, False)


@pytest.fixture
def consumer(pg_invoice_db: WorkerDatabase) -> Consumer[OrderPlaced]:
    return Consumer(HANDLER, pg_invoice_db, inbox, POLICY, ROUTES[ORDER_PLACED].task, SIGNER)


def counts(database: WorkerDatabase) -> tuple[int, int]:
    with database.session() as session:
        invoices = session.scalar(select(func.count()).select_from(Invoice)) or 0
        letters = session.scalar(select(func.count()).select_from(inbox.dead_letters)) or 0
    return invoices, letters


def test_read_only_database_is_retried_past_every_bound_then_invoiced_once_writable(
    pg_invoice_db: WorkerDatabase, consumer: Consumer[OrderPlaced], read_only_invoices: str
) -> None:
    message_id, body = uuid.uuid4(), order_placed_event().to_payload()
    reasons = []
    for retries in range(POLICY.max_retries + 2):  # past max_retries: the dead letter is refused too
        with pytest.raises(RetryLater) as retry:
            consumer.deliver(message_id, body, retries)
        reasons.append(retry.value.reason)
    assert all("read-only transaction" in reason for reason in reasons), reasons
    assert all(r.startswith("database trouble: InternalError") for r in reasons)
    assert retry.value.countdown == POLICY.backoff_max

    set_read_only(read_only_invoices, False)

    assert consumer.deliver(message_id, body, POLICY.max_retries + 2) == "created"
    assert counts(pg_invoice_db) == (1, 0)
