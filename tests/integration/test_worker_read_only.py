"""The worker against a real Postgres invoice database that turns read-only and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from invoice_worker.database import InvoiceDatabase
from invoice_worker.models import DeadLetter, Invoice
from invoice_worker.processing import DeliveryPolicy, RetryLater, handle_order_placed
from shared.config import Settings
from tests.support.read_only import set_read_only
from tests.unit.test_invoice_processing import payload

POLICY = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def read_only_invoices(pg_settings: Settings) -> Iterator[str]:
    url = pg_settings.invoices_database_url
    set_read_only(url, True)
    yield url
    set_read_only(url, False)


def counts(database: InvoiceDatabase) -> tuple[int, int]:
    with database.session() as session:
        invoices = session.scalar(select(func.count()).select_from(Invoice)) or 0
        letters = session.scalar(select(func.count()).select_from(DeadLetter)) or 0
    return invoices, letters


def test_read_only_database_is_retried_past_every_bound_then_invoiced_once_writable(
    pg_invoice_db: InvoiceDatabase, read_only_invoices: str
) -> None:
    message_id, body = uuid.uuid4(), payload()
    reasons = []
    for retries in range(POLICY.max_retries + 2):  # past max_retries: the dead letter is refused too
        with pytest.raises(RetryLater) as retry:
            handle_order_placed(pg_invoice_db, message_id, body, retries, POLICY)
        reasons.append(retry.value.reason)
    assert all("read-only transaction" in reason for reason in reasons), reasons
    assert all(r.startswith("invoice database trouble: InternalError") for r in reasons)
    assert retry.value.countdown == POLICY.backoff_max

    set_read_only(read_only_invoices, False)

    assert handle_order_placed(pg_invoice_db, message_id, body, POLICY.max_retries + 2, POLICY) == "created"
    assert counts(pg_invoice_db) == (1, 0)
