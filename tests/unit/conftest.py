"""Unit tests: SQLite files in a temporary folder, no network.

The app is configured with one known API key and ``client`` sends it, as any real client must.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_outbox import Handler, InboxTables, InboxWorker, Route, WorkerDatabase
from flask_outbox.db import create_db_engine
from sqlalchemy import Engine, func, select

from invoice_worker import invoicing
from invoice_worker import models as invoice_models
from invoice_worker.models import Base as InvoiceBase
from order_service import create_app, invoice_answers
from order_service import models as order_models
from order_service.extensions import db
from order_service.models import IdempotencyKey, Order, OrderLine, outbox
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES

API_KEY = "osk_unit-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def api_settings(sqlite_settings: Settings) -> Settings:
    """Embedded-mode settings with a known API key (instead of a generated dev key)."""
    return sqlite_settings.model_copy(update={"api_keys": API_KEY})


def app_on_sqlite(settings: Settings) -> Iterator[Flask]:
    """An app with its tables created on its SQLite file; its engine is disposed afterwards."""
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(api_settings: Settings) -> Iterator[Flask]:
    yield from app_on_sqlite(api_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    return client


@pytest.fixture
def invoice_db(sqlite_settings: Settings) -> Iterator[WorkerDatabase]:
    database = WorkerDatabase(sqlite_settings.invoices_database_url)
    InvoiceBase.metadata.create_all(database.engine)
    yield database
    database.engine.dispose()


WORKER_POLICY: dict[str, Any] = {
    "worker_max_retries": 2,
    "worker_max_deliveries": 3,
    "worker_retry_backoff": 0.01,
    "worker_retry_backoff_max": 0.05,
}
"""Small bounds for the consumers under test: ``DeliveryPolicy(max_retries=2, max_deliveries=3, ...)``."""


def worker_settings(var_dir: Path, **changes: Any) -> Settings:
    """Embedded-mode settings (or ``broker_url=redis://...`` for a broker that flags redeliveries)."""
    settings = Settings(var_dir=var_dir, **(WORKER_POLICY | changes))
    settings.ensure_var_dir()
    return settings


def inbox_worker(
    name: str, settings: Settings, url: str, inbox: InboxTables, route: Route, handler: Handler[Any]
) -> Iterator[InboxWorker]:
    """A service's ``InboxWorker`` (as its ``celery -A`` module builds it) with ``handler`` registered."""
    worker = InboxWorker(name, settings, url, inbox, queue=route.queue)
    worker.register(route, handler)
    yield worker
    worker.database.engine.dispose()


def invoice_worker_on(settings: Settings) -> Iterator[InboxWorker]:
    """The invoice worker on its SQLite file (tables created), consuming ``order.placed``."""
    for worker in inbox_worker(
        "invoice-worker",
        settings,
        settings.invoices_database_url,
        invoice_models.inbox,
        ROUTES[ORDER_PLACED],
        invoicing.HANDLER,
    ):
        InvoiceBase.metadata.create_all(worker.database.engine)
        yield worker


@pytest.fixture
def invoice_worker(sqlite_settings: Settings) -> Iterator[InboxWorker]:
    """The invoice worker (``invoice_worker.celery_app``'s wiring) with ``WORKER_POLICY``'s bounds."""
    yield from invoice_worker_on(worker_settings(sqlite_settings.var_dir))


@pytest.fixture
def order_worker(app: Flask, api_settings: Settings) -> Iterator[InboxWorker]:
    """The order consumer (``order_service.worker``'s wiring) on the app's SQLite file, no app context."""
    settings = worker_settings(api_settings.var_dir)
    yield from inbox_worker(
        "order-consumer",
        settings,
        settings.orders_database_url,
        order_models.inbox,
        ROUTES[INVOICE_CREATED],
        invoice_answers.HANDLER,
    )


@pytest.fixture
def row_counts(app: Flask) -> Callable[[], dict[str, int]]:
    """Rows in every table a POST /orders could write."""

    def count() -> dict[str, int]:
        with app.app_context():
            return {
                table.name: db.session.scalar(select(func.count()).select_from(table)) or 0
                for table in (Order.__table__, OrderLine.__table__, outbox, IdempotencyKey.__table__)
            }

    return count


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An SQLite database holding the order service's outbox table alone (relay loop tests)."""
    made = create_db_engine(f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    outbox.metadata.create_all(made, tables=[outbox])
    yield made
    made.dispose()
