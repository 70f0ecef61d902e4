"""Integration tests: the real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask_outbox import WorkerDatabase
from flask_outbox.consumer import Consumer, DeliveryPolicy
from flask_outbox.signing import MessageSigner

from harness.processes import TEST_SIGNING_KEY
from invoice_worker import invoicing
from invoice_worker.models import inbox as invoice_inbox
from order_service import create_app, invoice_answers
from order_service.extensions import db
from order_service.models import inbox as order_inbox
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES, InvoiceCreated, OrderPlaced

SIGNER = MessageSigner(TEST_SIGNING_KEY.encode())
"""What the relays of ``pg_settings`` sign with (``MESSAGE_SIGNING_KEY``)."""


@pytest.fixture
def pg_app(pg_settings: Settings) -> Iterator[Flask]:
    app = create_app(pg_settings)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def pg_invoice_db(pg_settings: Settings) -> Iterator[WorkerDatabase]:
    database = WorkerDatabase(pg_settings.invoices_database_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def invoice_consumer(pg_invoice_db: WorkerDatabase) -> Consumer[OrderPlaced]:
    """The invoice worker's consumer of ``order.placed`` (as ``invoice_worker.celery_app`` registers it)."""
    return Consumer(
        invoicing.HANDLER, pg_invoice_db, invoice_inbox, DeliveryPolicy(), ROUTES[ORDER_PLACED].task, SIGNER
    )


@pytest.fixture
def pg_orders_db(pg_settings: Settings) -> Iterator[WorkerDatabase]:
    """The orders database as the order consumer opens it (no Flask app)."""
    database = WorkerDatabase(pg_settings.orders_database_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def order_consumer(pg_orders_db: WorkerDatabase) -> Consumer[InvoiceCreated]:
    """The order consumer of ``invoice.created`` (as ``order_service.worker`` registers it)."""
    return Consumer(
        invoice_answers.HANDLER,
        pg_orders_db,
        order_inbox,
        DeliveryPolicy(),
        ROUTES[INVOICE_CREATED].task,
        SIGNER,
    )
